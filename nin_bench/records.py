"""Flat result records on disk: append one JSON object per line, atomically, and read them back.

No torch here: the report and the summary read records without importing it.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

RECORDS_FILE = "records.jsonl"


def _clean(value: Any) -> Any:
    """Make a value JSON-safe: NaN/inf become None (JSON has no NaN), tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _clean(value.item())
    return value


def append_records(results_dir: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records to `records.jsonl` in one write, then fsync.

    One `write` of the whole batch on an O_APPEND file keeps a (variant, stage) batch together: a crash
    leaves either all of it or, at worst, a truncated last line, which `read_records` skips.

    Args:
        results_dir: the run's results folder (created if missing).
        records: flat dicts; values must be JSON scalars or lists.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps({k: _clean(v) for k, v in r.items()}) + "\n" for r in records)
    if not text:
        return
    fd = os.open(results_dir / RECORDS_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(results_dir: Path) -> list[dict[str, Any]]:
    """Read every complete record of a results folder (missing file: empty list).

    Args:
        results_dir: folder holding `records.jsonl`.

    Returns:
        The records in file order. A torn last line (a crash mid-write) is skipped.
    """
    path = Path(results_dir) / RECORDS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def write_atomic(path: Path, text: str) -> None:
    """Write a text file atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def record_key(r: dict[str, Any]) -> tuple:
    """What a record measures: (variant, stage, seed, epoch, timing setting). Later records of a key win."""
    return (r.get("variant"), r.get("stage"), r.get("seed"), r.get("epoch"), r.get("mode"),
            r.get("batch_size") if r.get("stage") == "timing" else None, r.get("dtype"), r.get("channels_last"),
            r.get("compile"))


def current_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the latest record of each key (a retried run replaces its earlier error record).

    Args:
        records: all records in file order.

    Returns:
        One record per `record_key`, the last written, in order of first appearance; a unit's error record
        is dropped when a later run of that unit succeeded.
    """
    latest: dict[tuple, dict[str, Any]] = {}
    for r in records:
        latest[record_key(r)] = r
    recovered = {unit_key(r) for r in latest.values() if r.get("status") != "error"}
    # A whole-unit failure (no timing setting attached) is void once the unit later succeeded.
    return [r for r in latest.values()
            if not (r.get("status") == "error" and r.get("mode") is None and unit_key(r) in recovered)]


def unit_key(r: dict[str, Any]) -> tuple:
    """The unit of work a record belongs to: (variant, stage, seed); train_epoch rows count as train."""
    stage = "train" if r.get("stage") == "train_epoch" else r.get("stage")
    return (r.get("variant"), stage, r.get("seed"))
