"""Benchmark helper: every benchmark reports what it measured (params, MACs, img/s) in extra_info."""
from __future__ import annotations

from typing import Any


def record(benchmark: Any, *, batch_size: int | None = None, **info: Any) -> None:
    """Store a benchmark's facts (call after it ran); img/s from the median when the benchmark was timed.

    With `--benchmark-disable` (the test suite's default) the function ran once untimed and `stats` is empty,
    so `img_per_s` is only added to timed runs. The group is set before the run (`benchmark.group = ...`):
    pytest-benchmark copies it when the run starts.
    """
    benchmark.extra_info.update(info)
    stats = getattr(benchmark, "stats", None)
    if batch_size is not None and stats is not None and getattr(stats, "stats", None) is not None:
        benchmark.extra_info["batch_size"] = batch_size
        benchmark.extra_info["img_per_s"] = batch_size / stats.stats.median
