"""Shared arms trained once: a training unit already trained, identically, in another folder of the same results
root is copied from there with its provenance instead of trained again.

Identical means the same `train_identity`: the variant's resolved model, data (less where it lives) and train
sections, the protocol, the device kind and name, the thread count, the seed and the data source's checksum.
The other folder's side is computed from its own files only (its config.resolved.yaml, its manifest and the
training record's `data_sha256`), never guessed from variant ids. The copied train_epoch and train records keep
every measured value, take this suite's variant columns and gain `reused_from` (the folder the unit was trained
in); the files a record names (`maps_file`, `preds_file`, ...) are copied beside them first.

A folder another process is writing (its lock held) is not read; while one is read a shared lock keeps a writer
from starting (`ResultsDir.reading`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nin_bench.errors import ConfigError
from nin_bench.run.unit import RunContext, Unit, UnitResult
from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import latest_per_key
from nin_bench.store.schema import VARIANT_COLUMNS
from nin_bench.suite.config import SuiteConfig, config_of_folder
from nin_bench.suite.variants import Variant, expand_grid

Log = Callable[[str], None]
# Data settings that say where the data lives or whether to fetch it, not what it is: the checksum stands for that.
_DATA_LOCATION = ("root", "download")
REUSED_FROM = "reused_from"


def train_identity(cfg: SuiteConfig, *, seed: int, protocol: str, device: str, device_name: str, threads: int,
                   data_sha256: str) -> str:
    """A hash of everything a training run's numbers depend on.

    Args:
        cfg: the variant's resolved config (its model, data and train sections count; timing, report, grid and
            seeds do not).
        seed: the training seed.
        protocol: "cpu" | "gpu" | "full" | "quick".
        device: "cpu" | "cuda".
        device_name: the CPU model or GPU name.
        threads: torch's intra-op threads the run used (CPU reductions may depend on them).
        data_sha256: the data source's checksum.

    Returns:
        A hex digest.
    """
    c = cfg.model_dump(mode="json")
    payload = {"model": c["model"], "data": {k: v for k, v in c["data"].items() if k not in _DATA_LOCATION},
               "train": c["train"], "seed": seed, "protocol": protocol, "device": device,
               "device_name": device_name, "threads": threads, "data_sha256": data_sha256}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def siblings(rd: ResultsDir) -> list[ResultsDir]:
    """The other results folders of `rd`'s results root (its parent) that hold a resolved config and records."""
    parent, ours = rd.root.resolve().parent, rd.root.resolve()
    if not parent.is_dir():
        return []
    found = [p for p in sorted(parent.iterdir()) if p.is_dir() and not p.name.startswith(".") and p != ours]
    return [ResultsDir(p) for p in found if (p / rd.config.name).is_file() and (p / rd.records.name).is_file()]


def trained_units(folder: ResultsDir) -> Iterator[tuple[str, Variant, list[dict[str, Any]]]]:
    """Each successfully trained (variant, seed) of a folder: its identity, its variant and its records (epoch rows
    in epoch order, then the final row). Nothing for a folder whose config or manifest does not say enough."""
    parsed = config_of_folder(folder.read_config())
    manifest = folder.read_manifest()
    if parsed is None or not all(manifest.get(k) for k in ("device", "device_name", "threads")):
        return
    cfg, protocol = parsed
    try:
        variants = {v.id: v for v in expand_grid(cfg)}
    except ConfigError:
        return
    latest = latest_per_key(folder.read_records())
    for r in latest:
        if (r.get("stage") != "train" or r.get("status") != "ok" or r.get("variant") not in variants
                or not r.get("data_sha256") or r.get("protocol") != protocol or not r.get("device_name")):
            continue
        v = variants[r["variant"]]
        # the record's own machine: a folder continued on another CPU model holds runs of both
        ident = train_identity(v.config, seed=r["seed"], protocol=protocol, device=manifest["device"],
                               device_name=r["device_name"], threads=manifest["threads"],
                               data_sha256=r["data_sha256"])
        epochs = sorted((e for e in latest if e.get("stage") == "train_epoch" and e.get("variant") == v.id
                         and e.get("seed") == r["seed"]), key=lambda e: e.get("epoch") or 0)
        yield ident, v, [*epochs, r]


def _copy_files(rd: ResultsDir, folder: ResultsDir, their_id: str, our_id: str,
                final: dict[str, Any]) -> dict[str, str] | None:
    """Copy each file the final record names (`*_file`) into `rd`, renamed for our variant id.

    Returns:
        key -> the new relative name, or None when a named file is missing there (the unit is then trained).
    """
    names = {k: v for k, v in final.items() if k.endswith("_file") and isinstance(v, str)}
    if any(not (folder.root / v).is_file() for v in names.values()):
        return None
    out = {}
    for key, name in names.items():
        path = Path(name)
        new = path.with_name(our_id + path.name[len(their_id):]) if path.name.startswith(their_id) else path
        with rd.writing(rd.root / new) as tmp:
            shutil.copyfile(folder.root / name, tmp)
        out[key] = new.as_posix()
    return out


def copied_result(ctx: RunContext, unit: Unit, folder: ResultsDir, theirs: Variant,
                  records: list[dict[str, Any]]) -> UnitResult | None:
    """The unit's records made from another folder's: this suite's variant columns, the measured values as
    they were, `reused_from` naming where it was trained; the files they name are copied first."""
    files = _copy_files(ctx.results, folder, theirs.id, unit.variant.id, records[-1])
    if files is None:
        return None
    ours = unit.variant.record_columns(ctx.shape(unit.variant))
    origin = records[-1].get(REUSED_FROM) or folder.root.name
    out = []
    for r in records:
        kept = {k: v for k, v in r.items() if k not in VARIANT_COLUMNS and k not in ours}
        out.append({**ours, **kept, **(files if r is records[-1] else {}), REUSED_FROM: origin})
    return UnitResult(out)


def reuse_units(units: list[Unit], ctx: RunContext, threads: int,
                log: Log) -> tuple[list[tuple[Unit, UnitResult]], list[Unit]]:
    """Take every training unit among `units` that a sibling folder already trained identically.

    Args:
        units: the units about to run.
        ctx: the run context (its data sets are loaded: their checksums are part of the identity).
        threads: torch's intra-op threads of this run.
        log: one line per reused unit, and per folder not read because another run is writing it.

    Returns:
        (the reused units with their records, ready to record; the units still to run, in their order).
    """
    wanted: dict[str, Unit] = {}
    for u in units:
        if u.stage == "train":
            ident = train_identity(u.variant.config, seed=u.seed, protocol=ctx.protocol, device=ctx.device,
                                   device_name=ctx.device_name, threads=threads,
                                   data_sha256=ctx.dataset(u.variant).source_sha256)
            wanted.setdefault(ident, u)
    found: dict[str, tuple[Unit, UnitResult]] = {}
    for folder in siblings(ctx.results) if wanted else []:
        with folder.reading() as free:
            if not free:
                log(f"reuse: {folder.root} is being written by another run; not read")
                continue
            for ident, theirs, records in trained_units(folder):
                if ident in wanted and ident not in found:
                    result = copied_result(ctx, wanted[ident], folder, theirs, records)
                    if result is not None:
                        found[ident] = (wanted[ident], result)
                        log(f"reused {wanted[ident].label}: trained identically in {folder.root} "
                            f"(as {theirs.id} s{wanted[ident].seed}); copied, not retrained")
    taken = {id(u) for u, _ in found.values()}
    return [found[i] for i in wanted if i in found], [u for u in units if id(u) not in taken]
