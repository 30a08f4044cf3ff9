"""Run a suite: expand the grid, run each (variant, stage[, seed]) once, record it, summarise and report.

Resumable: each finished unit appends its records in one write, and a re-run skips units already recorded
in this folder under the same resolved config. A folder whose records were made elsewhere (committed
results on a fresh clone, a copied folder) or under another config/protocol is not resumed: its files are
moved to `.cache/superseded-<time>/` and everything is measured afresh.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import yaml
from tqdm.auto import tqdm

from nin_bench.config import SuiteConfig
from nin_bench.data import DataError
from nin_bench.manifest import build_manifest, cpu_model
from nin_bench.records import (
    append_records,
    current_records,
    read_records,
    unit_key,
    write_atomic,
)
from nin_bench.stages import (
    RunContext,
    base_record,
    checkpoint_path,
    error_text,
    run_profile,
    run_timing,
    run_train,
)
from nin_bench.timing import set_threads
from nin_bench.variants import Variant, expand_grid

STATE_FILE = Path(".cache") / "state.json"
# Generated files a superseded folder gives up (everything but the ignored .cache/).
_GENERATED = ("records.jsonl", "summary.csv", "config.resolved.yaml", "manifest.json", "report.md", "report.html",
              "tables.tex", "tables.csv", "maps", "figures")


@dataclass(frozen=True)
class Unit:
    """One piece of work: a stage of a variant (and a seed, for training)."""

    variant: Variant
    stage: str
    seed: int | None = None

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.variant.id, self.stage, self.seed)


def fingerprint(cfg: SuiteConfig, protocol: str) -> str:
    """Hash of what the measurements depend on: the resolved config (stages excluded), protocol and device."""
    payload = cfg.model_dump(mode="json", exclude={"stages", "description", "protocol_notes"})
    text = json.dumps({"config": payload, "protocol": protocol}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_out_dir(out_dir: Path, fp: str, log: Callable[[str], None]) -> None:
    """Make `out_dir` ours: keep it when its state matches `fp`, otherwise move its results aside."""
    state_path = out_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    present = [n for n in _GENERATED if (out_dir / n).exists()]
    if present and state.get("fingerprint") != fp:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        dest = out_dir / ".cache" / f"superseded-{stamp}"
        dest.mkdir(parents=True, exist_ok=True)
        for name in present:
            shutil.move(str(out_dir / name), dest / name)
        why = "another config or protocol" if state else "another checkout or machine (no local run state)"
        log(f"{out_dir}: existing results come from {why}; moved them to {dest} and measuring afresh")
        shutil.rmtree(checkpoint_path(out_dir, "", 0).parent, ignore_errors=True)
    write_atomic(state_path, json.dumps({"fingerprint": fp}))


def plan(variants: list[Variant], cfg: SuiteConfig, done: set[tuple]) -> list[Unit]:
    """Every unit of the suite not yet recorded, variant by variant, stages in order."""
    units = []
    for v in variants:
        for stage in cfg.stages:
            seeds = v.config.seeds if stage == "train" else [None]
            units += [Unit(v, stage, s) for s in seeds if (v.id, stage, s) not in done]
    return units


def completed(records: list[dict[str, Any]]) -> set[tuple]:
    """Keys of units whose final record is in: ok or diverged (a failed unit is retried on the next run;
    a timing setting that failed, e.g. out of memory, is a result and is not)."""
    final = {"profile", "timing", "train"}
    return {unit_key(r) for r in current_records(records)
            if r.get("stage") in final and (r.get("status") != "error" or r.get("mode") is not None)}


def device_name(device: str) -> str:
    """The GPU's name on CUDA, the CPU model otherwise."""
    return torch.cuda.get_device_name() if device == "cuda" else cpu_model()


def write_run_files(cfg: SuiteConfig, out_dir: Path, manifest: dict[str, Any], protocol: str) -> None:
    """config.resolved.yaml (every default filled in) and manifest.json beside the results."""
    resolved = {**cfg.model_dump(mode="json"), "protocol": protocol}
    write_atomic(out_dir / "config.resolved.yaml", yaml.safe_dump(resolved, sort_keys=False))
    write_atomic(out_dir / "manifest.json", json.dumps(manifest, indent=2) + "\n")


def run_unit(unit: Unit, ctx: RunContext, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run one unit; a failure becomes an error record so the sweep goes on."""
    vid = unit.variant.id
    mine = [r for r in records if r.get("variant") == vid and r.get("status") == "ok"]
    try:
        if unit.stage == "profile":
            return run_profile(unit.variant, ctx)
        if unit.stage == "timing":
            # FLOPs per image for MFU: from the profile record, else counted here (milliseconds, not recorded)
            prof = next((r for r in mine if r["stage"] == "profile"), None) or run_profile(unit.variant, ctx)[0]
            flops = {"forward": prof["flops_fwd"], "train_step": prof["flops_fwd_bwd"]}
            return run_timing(unit.variant, ctx, flops)
        return run_train(unit.variant, unit.seed, ctx, [r for r in mine if r["stage"] == "timing"])
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # recorded with its error; the sweep goes on (STYLE 11)
        if isinstance(exc, DataError):  # user input at the boundary: stop loudly, not once per variant
            raise
        row = {**base_record(unit.variant, ctx, unit.stage), "status": "error", "error": error_text(exc)}
        return [row if unit.seed is None else {**row, "seed": unit.seed}]


def run_suite(cfg: SuiteConfig, out_dir: Path, *, protocol: str, progress: bool = True,
              log: Callable[[str], None] = print) -> Path:
    """Run every unrecorded (variant, stage[, seed]) of a resolved suite, then write summary and report.

    Args:
        cfg: the config after `resolve_protocol` (its `device` is "cpu" or "cuda").
        out_dir: the results folder (created; resumed when it holds this config's records).
        protocol: "cpu" | "gpu" | "full" | "quick", recorded everywhere.
        progress: show tqdm bars.
        log: where one-line messages go.

    Returns:
        The path of the written report (or of summary.csv when the report could not be built).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    prepare_out_dir(out_dir, fingerprint(cfg, protocol), log)
    threads = set_threads(cfg.timing.threads)
    ctx = RunContext(out_dir, cfg.device, device_name(cfg.device), protocol, progress)
    manifest = build_manifest(device=ctx.device, device_name=ctx.device_name, threads=threads, protocol=protocol)
    write_run_files(cfg, out_dir, manifest, protocol)
    variants = expand_grid(cfg)
    records = read_records(out_dir)
    units = plan(variants, cfg, completed(records))
    log(f"{cfg.name}: {len(variants)} variants, {len(units)} units to run ({protocol} protocol on "
        f"{ctx.device_name}, {threads} threads) -> {out_dir}")
    preload_data(variants, cfg, ctx)
    bar = tqdm(units, desc=cfg.name, unit="unit", disable=not progress, dynamic_ncols=True)
    for unit in bar:
        bar.set_postfix_str(f"{unit.variant.id} {unit.stage}" + ("" if unit.seed is None else f" s{unit.seed}"))
        new = run_unit(unit, ctx, records)
        append_records(out_dir, new)
        records += new
        for r in new:
            if r.get("status") == "error" and r.get("mode") is None:
                log(f"  {unit.variant.id} {unit.stage}: {r['error']}")
        if unit.stage == "train":
            checkpoint_path(out_dir, unit.variant.id, unit.seed).unlink(missing_ok=True)
    manifest.update(peak_tflops={k: v / 1e12 for k, v in ctx.peak_flops.items()},
                    data={k: {"source": d.source, "sha256": d.source_sha256} for k, d in ctx.datasets.items()})
    write_run_files(cfg, out_dir, manifest, protocol)
    return finish(out_dir, log)


def preload_data(variants: list[Variant], cfg: SuiteConfig, ctx: RunContext) -> None:
    """Load every data set the run trains on before the sweep, so missing data fails once, up front."""
    if "train" in cfg.stages or any(v.config.data.dataset == "imagefolder" for v in variants):
        for v in variants:
            ctx.dataset(v)


def finish(out_dir: Path, log: Callable[[str], None]) -> Path:
    """Write summary.csv and the report from the stored records."""
    from nin_bench.report import build_report
    from nin_bench.summary import write_summary

    summary = write_summary(out_dir)
    try:
        report = build_report(out_dir)
    except Exception as exc:  # the records are safe; say so rather than lose the run's exit status silently
        log(f"report failed ({error_text(exc)}); records and {summary.name} are written; "
            f"retry with: python -m nin_bench report {out_dir}")
        raise
    log(f"summary: {summary}\nreport:  {report}")
    return report
