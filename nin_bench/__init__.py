"""nin_bench: a benchmarking and ablation suite for Network in Network (Lin, Chen & Yan, ICLR 2014).

`build_model` is loaded lazily so that `import nin_bench` (and the report, which reads only stored records)
works where torch cannot be imported; `REGISTRY` is plain data (`nin_bench.suite.presets`).
"""
from __future__ import annotations

from typing import Any

from nin_bench.version import __version__

__all__ = ["REGISTRY", "build_model", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "build_model":
        from nin_bench.models.nin import build_model

        return build_model
    if name == "REGISTRY":
        from nin_bench.suite.presets import REGISTRY

        return REGISTRY
    raise AttributeError(f"module 'nin_bench' has no attribute {name!r}")
