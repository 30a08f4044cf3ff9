"""Run a suite: plan the units, run each once (here or on Ray), record it, then write summary and report.

The runner is the only writer of its results folder, and holds the folder's lock for the whole run. Each
finished unit's records are appended in one crash-safe batch (`ResultsDir.append_records`) before the training
checkpoint it supersedes is deleted, so a kill at any instant loses at most the unit in progress, which the same
command resumes from its last epoch. A folder whose records were made elsewhere (committed results on a fresh
clone, a copied folder) or under another config/protocol is not resumed: its files are moved to
`.cache/superseded-<time>/` and everything is measured afresh.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from tqdm.auto import tqdm

from nin_bench.measure.ceilings import Ceilings, measure_ceilings
from nin_bench.run.manifest import build_manifest, device_name
from nin_bench.run.stages import DeadlineReached, RunContext, Unit, UnitResult, run_unit
from nin_bench.runtime.device import set_threads, steady_cpu_heap
from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import (
    is_unit_failure,
    latest_per_key,
    unit_key,
    variant_records,
)
from nin_bench.store.schema import STAGES
from nin_bench.suite.config import SuiteConfig
from nin_bench.suite.variants import Variant, expand_grid

Log = Callable[[str], None]


def fingerprint(cfg: SuiteConfig, protocol: str) -> str:
    """Hash of what the measurements depend on: the resolved config (stages excluded), protocol and device.

    `protocols` is left out: the protocol files are already merged into the resolved settings, so naming them
    (or moving the same settings into or out of one) changes nothing measured."""
    payload = cfg.model_dump(mode="json", exclude={"stages", "description", "protocol_notes", "protocols"})
    text = json.dumps({"config": payload, "protocol": protocol}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_out_dir(rd: ResultsDir, fp: str, log: Log) -> None:
    """Make the folder ours: keep it when its state matches `fp`, otherwise move its results aside."""
    state = rd.read_state()
    if rd.generated() and state.get("fingerprint") != fp:
        dest = rd.supersede()
        why = "another config or protocol" if state else "another checkout or machine (no local run state)"
        log(f"{rd.root}: existing results come from {why}; moved them to {dest} and measuring afresh")
    rd.write(rd.state, json.dumps({"fingerprint": fp}))


def plan(variants: list[Variant], cfg: SuiteConfig, done: set[tuple]) -> list[Unit]:
    """Every unit of the suite not yet recorded, variant by variant, stages in order."""
    units = []
    for v in variants:
        for stage in cfg.stages:
            seeds = v.config.seeds if stage == "train" else [None]
            units += [Unit(v, stage, s) for s in seeds if (v.id, stage, s) not in done]
    return units


def completed(records: list[dict[str, Any]]) -> set[tuple]:
    """Keys of units whose final record is in: ok or diverged (a unit that failed as a whole runs again;
    a timing setting that failed, e.g. out of memory, is a result and does not)."""
    return {unit_key(r) for r in latest_per_key(records) if r.get("stage") in STAGES and not is_unit_failure(r)}


def remove_stale_checkpoints(rd: ResultsDir, done: set[tuple]) -> None:
    """Delete checkpoints of recorded units (a run killed between the append and the delete leaves one)."""
    for variant, stage, seed in done:
        if stage == "train":
            rd.checkpoint(variant, seed).unlink(missing_ok=True)


def write_run_files(rd: ResultsDir, cfg: SuiteConfig, manifest: dict[str, Any], protocol: str) -> None:
    """config.resolved.yaml (every default filled in) and manifest.json beside the results."""
    resolved = {**cfg.model_dump(mode="json"), "protocol": protocol}
    rd.write(rd.config, yaml.safe_dump(resolved, sort_keys=False))
    rd.write(rd.manifest, json.dumps(manifest, indent=2) + "\n")


def record_result(rd: ResultsDir, unit: Unit, result: UnitResult, log: Log) -> None:
    """Store one finished unit: its maps file, then its records (fsync'd), then drop its checkpoint."""
    if result.maps is not None:
        import numpy as np  # only a training unit with a GAP head has maps

        with rd.writing(rd.map_file(result.maps_name)) as tmp:
            np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in result.maps.items()})
    rd.append_records(result.records)
    for r in result.records:
        if is_unit_failure(r):
            log(f"  {unit.label}: {r['error']}")
    if unit.stage == "train":
        rd.checkpoint(unit.variant.id, unit.seed).unlink(missing_ok=True)


def run_local(units: list[Unit], ctx: RunContext, records: list[dict[str, Any]],
              done: Callable[[Unit, UnitResult], None], bar: tqdm) -> None:
    """Run the units one after another in this process (the default executor)."""
    for unit in units:
        ctx.check_deadline()
        bar.set_postfix_str(unit.label)
        done(unit, run_unit(unit, ctx, variant_records(records, unit.variant.id)))


def run_suite(cfg: SuiteConfig, out_dir: Path, *, protocol: str, progress: bool = True, log: Log = print,
              executor: str = "local", ray_address: str | None = None, cuda_fallback: str | None = None,
              deadline: float | None = None, command: str | None = None,
              ceilings: Ceilings | None = None) -> Path:
    """Run every unrecorded (variant, stage[, seed]) of a resolved suite, then write summary and report.

    Args:
        cfg: the config after `resolve_protocol` (its `device` is "cpu" or "cuda").
        out_dir: the results folder (created; resumed when it holds this config's records).
        protocol: "cpu" | "gpu" | "full" | "quick", recorded everywhere.
        progress: show tqdm bars.
        log: where one-line messages go.
        executor: "local" (this process, unit after unit) or "ray" (one Ray task per unit).
        ray_address: None starts a local Ray instance; "auto" or "ray://..." joins a cluster.
        cuda_fallback: why a CUDA build of torch runs on the CPU here (`device.cuda_fallback_reason`), or None.
        deadline: a time.time() after which no new unit or epoch starts (the GPU batch's budget); the run then
            stops resumably (a training run at its last epoch checkpoint) and still writes summary and report.
        command: the command line that started this run, kept in the manifest (and the report) as `command`.
        ceilings: the device's peaks and bandwidth when already known (tests pass fixed ones); None: measured
            once here, before the first timing unit, and handed to every unit.

    Returns:
        The path of the written report.

    Raises:
        FolderBusy: another process is running in this folder.
    """
    rd = ResultsDir(out_dir)
    with rd.lock("run", log):
        prepare_out_dir(rd, fingerprint(cfg, protocol), log)
        if cuda_fallback:
            log(f"WARNING: {cuda_fallback}. Running the CPU protocol; use --device cuda to fail instead.")
        threads = set_threads(cfg.threads)
        heap = steady_cpu_heap()
        ctx = RunContext(rd, cfg.device, device_name(cfg.device), protocol, progress, deadline=deadline)
        manifest = build_manifest(device=ctx.device, device_name=ctx.device_name, threads=threads,
                                  protocol=protocol, cuda_fallback=cuda_fallback, executor=executor)
        manifest.update(cpu_heap=heap, command=command)
        write_run_files(rd, cfg, manifest, protocol)
        variants = expand_grid(cfg)
        records = rd.read_records()
        done = completed(records)
        remove_stale_checkpoints(rd, done)
        units = plan(variants, cfg, done)
        log(f"{cfg.name}: {len(variants)} variants, {len(units)} units to run ({protocol} protocol on "
            f"{ctx.device_name}, {threads} threads, {executor} executor) -> {rd.root}")
        preload_data(variants, cfg, ctx)
        ctx.ceilings = ceilings or run_ceilings(units, ctx.device, log)

        def finished(unit: Unit, result: UnitResult) -> None:
            record_result(rd, unit, result, log)
            records.extend(result.records)
            bar.update(1)

        bar = tqdm(total=len(units), desc=cfg.name, unit="unit", disable=not progress, dynamic_ncols=True)
        try:
            if executor == "ray":
                from nin_bench.run.ray_executor import run_on_ray

                run_on_ray(units, ctx, records, finished, bar, address=ray_address, threads=threads, log=log)
            else:
                run_local(units, ctx, records, finished, bar)
        except DeadlineReached:
            left = len(units) - bar.n
            log(f"time budget reached with {left} units left; run the same command again to continue")
        finally:
            bar.close()
        manifest.update(peak_tflops=peaks_from(records), mem_gb_per_s=bandwidth_from(records),
                        ceilings_measured_s=round(ctx.ceilings.measured_s, 2),
                        data={k: {"source": d.source, "sha256": d.source_sha256} for k, d in ctx.datasets.items()})
        write_run_files(rd, cfg, manifest, protocol)
        return finish(rd, log)


def run_ceilings(units: list[Unit], device: str, log: Log) -> Ceilings:
    """The run's ceilings: each peak its timing units use and, with layer timing, the bandwidth, measured once.

    Nothing is measured when no timing unit is left (a training-only or resumed run)."""
    timing = [u.variant.config.timing for u in units if u.stage == "timing"]
    if not timing:
        return Ceilings(device)
    dtypes = sorted({d for t in timing for d in t.dtypes})
    ceilings = measure_ceilings(device, dtypes, bandwidth=any(t.layer_timing for t in timing))
    log(f"ceilings: matmul peak {', '.join(f'{d} {f / 1e12:.3g}' for d, f in ceilings.peak_flops.items())} "
        f"TFLOP/s" + (f", copy bandwidth {ceilings.bytes_per_s / 1e9:.3g} GB/s" if ceilings.bytes_per_s else "")
        + f" ({ceilings.measured_s:.1f} s)")
    return ceilings


def peaks_from(records: list[dict[str, Any]]) -> dict[str, float]:
    """The MFU reference peak (TFLOP/s) per dtype, as the timing rows recorded it (one value per run)."""
    out: dict[str, float] = {}
    for r in latest_per_key(records):
        if r.get("stage") == "timing" and r.get("peak_tflops") is not None:
            out[r["dtype"]] = max(out.get(r["dtype"], 0.0), r["peak_tflops"])
    return out


def bandwidth_from(records: list[dict[str, Any]]) -> float | None:
    """The measured memory bandwidth (GB/s) the layer-timing rows' roofline used, or None."""
    values = [r["mem_gb_per_s"] for r in latest_per_key(records)
              if r.get("stage") == "layer_timing" and r.get("mem_gb_per_s") is not None]
    return max(values) if values else None


def preload_data(variants: list[Variant], cfg: SuiteConfig, ctx: RunContext) -> None:
    """Load every data set the run trains on before the sweep, so missing data fails once, up front."""
    if "train" in cfg.stages or any(v.config.data.dataset == "imagefolder" for v in variants):
        for v in variants:
            ctx.dataset(v)


def finish(rd: ResultsDir, log: Log) -> Path:
    """Write summary.csv and the report from the stored records."""
    from nin_bench.report import rebuild

    try:
        report = rebuild(rd)
    except Exception as exc:  # the records are safe; say so rather than lose the run's exit status silently
        from nin_bench.store.records import error_text

        log(f"report failed ({error_text(exc)}); the records are written; "
            f"retry with: python -m nin_bench report {rd.root}")
        raise
    log(f"summary: {rd.summary}\nreport:  {report}")
    return report

