"""Flat result records: their JSON form, what each one measures, and which of them are current.

No file I/O and no torch here (the results folder owns the file: `nin_bench.store.folder`); the report and the
summary use these rules without importing torch.
"""
from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any, Iterable

from nin_bench.store.schema import LAYER_KEY, ROUND_KEY, SETTING_KEYS, STAGES, UNIT_OF_KIND

# What tells two timing (layer-timing, timing-round) rows of one variant apart.
_SETTING = (*SETTING_KEYS, LAYER_KEY, ROUND_KEY)


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: NaN/inf become None (JSON has no NaN), tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _clean(value.item())
    return value


def to_jsonl(records: Iterable[dict[str, Any]]) -> str:
    """One JSON object per line (each ending in a newline), values made JSON-safe."""
    return "".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in records)


def parse_jsonl(text: str) -> list[dict[str, Any]]:
    """The records of a JSONL text; a line that does not parse (a torn write) is skipped."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def record_key(r: dict[str, Any]) -> tuple:
    """What a record measures: (variant, stage, seed, epoch), plus the setting (and layer, round) of a timing row.
    Later records of a key win."""
    setting = (tuple(r.get(k) for k in _SETTING) if UNIT_OF_KIND.get(r.get("stage"), r.get("stage")) == "timing"
               else ())
    return (r.get("variant"), r.get("stage"), r.get("seed"), r.get("epoch"), *setting)


def unit_key(r: dict[str, Any]) -> tuple:
    """The unit of work a record belongs to: (variant, stage, seed); train_epoch rows count as train and
    layer_timing rows as timing."""
    stage = UNIT_OF_KIND.get(r.get("stage"), r.get("stage"))
    return (r.get("variant"), stage, r.get("seed"))


def is_unit_failure(r: dict[str, Any]) -> bool:
    """A record saying its unit failed as a whole (an error with no timing setting attached).

    A timing setting that failed (an OOM at one batch size) is a result, not a unit failure: it carries `mode`;
    so is a failed per-layer timing (stage "layer_timing").
    A failed unit runs again on the next run; once it succeeds its failure record is void.
    """
    return r.get("status") == "error" and r.get("mode") is None and r.get("stage") in STAGES


def latest_per_key(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the latest record of each `record_key`, and drop unit failures a later success made void.

    Args:
        records: all records in file order.

    Returns:
        One record per key, the last written, in order of first appearance.
    """
    latest: dict[tuple, dict[str, Any]] = {}
    for r in records:
        latest[record_key(r)] = r
    recovered = {unit_key(r) for r in latest.values() if r.get("status") != "error"}
    return [r for r in latest.values() if not (is_unit_failure(r) and unit_key(r) in recovered)]


def error_text(exc: BaseException) -> str:
    """A one-line error with the innermost frame, for a record."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"


def completed(records: list[dict[str, Any]]) -> set[tuple]:
    """Keys (`unit_key`) of units whose final record is in: ok or diverged (a unit that failed as a whole runs
    again; a timing setting that failed, e.g. out of memory, is a result and does not)."""
    return {unit_key(r) for r in latest_per_key(records) if r.get("stage") in STAGES and not is_unit_failure(r)}
