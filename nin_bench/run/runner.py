"""Run a suite: plan the units, run each once (here or on Ray), record it, then write summary and report.

The runner is the only writer of its results folder, and holds the folder's lock for the whole run. Each
finished unit's records are appended in one crash-safe batch (`ResultsDir.append_records`) before the training
checkpoint it supersedes is deleted, so a kill at any instant loses at most the unit in progress, which the same
command resumes from its last epoch. Whether a folder is continued is read from its own files (`prepare_out_dir`:
the resolved config and the manifest's device name), so committed results continue on the same kind of device;
records made under another config, protocol or device are moved to `.cache/superseded-<time>/` and everything
is measured afresh. With `seeds: auto` the training seeds come in passes, one seed level at a time, each decided
from the records alone (`auto_seeds`); a training unit another folder of the results root trained identically is
copied from there, not trained again (`reuse`).
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
from nin_bench.measure.conv_ceiling import ConvShape, conv_shapes
from nin_bench.models.build import build_variant_model
from nin_bench.run.budget import Budget, Tally, fits
from nin_bench.run.manifest import build_manifest, device_name
from nin_bench.run.reuse import reuse_units
from nin_bench.run.stages import run_unit
from nin_bench.run.timing_stage import group_id
from nin_bench.run.unit import (
    DeadlineReached,
    RunContext,
    Unit,
    UnitResult,
    unit_records,
)
from nin_bench.runtime.device import configure_process
from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import (
    completed,
    is_unit_failure,
    latest_per_key,
)
from nin_bench.store.schema import SPEED_KINDS
from nin_bench.suite.config import SuiteConfig, config_of_folder
from nin_bench.suite.variants import Variant, expand_grid

Log = Callable[[str], None]


def fingerprint(cfg: SuiteConfig, protocol: str) -> str:
    """Hash of what the measurements depend on: the resolved config (stages excluded), protocol and device.

    `protocols` is left out: the protocol files are already merged into the resolved settings, so naming them
    (or moving the same settings into or out of one) changes nothing measured. So is `report` (baseline,
    equivalence margin, declared interactions): it says how the records are compared, not what is measured, so
    a folder continues under a changed report section (with `seeds: auto` the new baseline then decides whether
    more seeds are wanted)."""
    payload = cfg.model_dump(mode="json", exclude={"stages", "description", "protocol_notes", "protocols",
                                                   "report"})
    text = json.dumps({"config": payload, "protocol": protocol}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def prepare_out_dir(rd: ResultsDir, fp: str, device: str, device_name: str, log: Log,
                    retime: bool = False) -> dict[str, Any]:
    """Make the folder ours: continue it when what it holds was measured under this config and protocol
    (`fp`) on this kind of device, otherwise move its results aside (never deleted) and measure afresh.

    The kind of device is the GPU model on CUDA, and any CPU on the CPU: a CPU folder continued on another CPU
    model keeps its training and profile records (each names its `device_name`; the report lists the machines)
    and gives up its speed records (`SPEED_KINDS`), which this machine measures again, so every timing row of
    one folder comes from one machine. Speed records made before timing ran in interleaved rounds (timing rows
    without `rounds`) are measured again too, on any machine. Records given up are copied aside first. The
    decision reads only the folder's own files (config.resolved.yaml, manifest.json, records.jsonl), never
    ignored state, so a committed folder on a fresh clone, or one brought back from a lent GPU, continues on the
    same kind of device, and a user's first run on another kind of device never shows the committed machine's
    numbers as theirs. `retime` gives up a continued folder's speed records on the same machine too (`run
    --retime`: its report said the timing could not be trusted, or the machine was busy).

    Returns:
        The folder's manifest keys that carry over into this run's manifest: when it is continued with its speed
        records standing, the ceilings those rows were measured against (`CEILING_KEYS`); else nothing.
    """
    if not rd.generated():
        return {}
    theirs = config_of_folder(rd.read_config())
    same_config = theirs is not None and fingerprint(*theirs) == fp
    manifest = rd.read_manifest()
    their_device, their_name = manifest.get("device"), manifest.get("device_name")
    same_kind = their_name == device_name or their_device == device == "cpu"
    if same_config and same_kind:
        records = rd.read_records()
        before_rounds = any(r.get("stage") == "timing" and r.get("status") == "ok" and "rounds" not in r
                            for r in records)
        retime = retime and any(r.get("stage") in SPEED_KINDS for r in records)
        if not (retime or before_rounds) and their_name == device_name:
            return {k: v for k, v in manifest.items() if k in CEILING_KEYS}
        dest, dropped = rd.supersede_records(lambda r: r.get("stage") in SPEED_KINDS and (
            retime or before_rounds or r.get("device_name") != device_name))
        why = ("given up by --retime" if retime else "made before timing ran in rounds" if before_rounds
               else f"made on another CPU ({their_name})")
        log(f"{rd.root}: continuing; its training and profile records stand, and its {dropped} speed records "
            f"({why}) are measured again here (the folder as it was is copied to {dest})")
        return {}
    why = f"another device ({their_name})" if same_config else "another config or protocol"
    dest = rd.supersede()
    log(f"{rd.root}: existing results come from {why}; moved them to {dest} and measuring afresh")
    return {}


def plan(variants: list[Variant], cfg: SuiteConfig, done: set[tuple], order: str = "variant",
         seeds: list[int] | None = None) -> list[Unit]:
    """Every unit of the suite not yet recorded.

    Args:
        variants: the expanded grid.
        cfg: the resolved config (its stages).
        done: keys of recorded units (`completed`).
        order: "variant" (variant by variant, stages in order: the default) or "seed" (every non-training unit
            first, then training seed-major: seed 0 of every variant before seed 1, so a run cut short by a
            budget still holds one complete seed of the whole grid).
        seeds: the training seeds (None: the config's `train_seeds()`; `seeds: auto` passes its current level).

    The timing of every variant not yet timed is one unit per group of variants sharing their timing settings
    (`timing_groups`), placed where the group's first variant would time: its variants are measured side by side.
    """
    groups = {g[0].id: g for g in timing_groups([v for v in variants if (v.id, "timing", None) not in done])}
    units = []
    for v in variants:
        for stage in cfg.stages:
            if stage == "timing":
                units += [Unit(v, "timing", None, groups[v.id])] if v.id in groups else []
                continue
            wanted = (seeds if seeds is not None else v.config.train_seeds()) if stage == "train" else [None]
            units += [Unit(v, stage, s) for s in wanted if (v.id, stage, s) not in done]
    if order == "seed":
        # the seeds' own order (the wanted list), not the order units list them in: a variant that already has
        # seeds 0 and 1 lists seed 2 first, and seed 1 of the others must still come before it
        wanted = seeds if seeds is not None else cfg.train_seeds()
        rank = {s: i for i, s in enumerate(dict.fromkeys([*wanted, *(u.seed for u in units if u.stage == "train")]))}
        units.sort(key=lambda u: -1 if u.stage != "train" else rank[u.seed])  # stable: grid order kept within
    elif order != "variant":
        raise ValueError(f"plan order {order!r}; expected 'variant' or 'seed'")
    return units


def timing_groups(variants: list[Variant]) -> list[tuple[Variant, ...]]:
    """The variants that are timed side by side: those with the same timing settings (and data shape source),
    in grid order. A suite's grid rarely varies `timing.*`, so this is usually one group of every variant."""
    groups: dict[str, list[Variant]] = {}
    for v in variants:
        groups.setdefault(v.config.timing.model_dump_json(), []).append(v)
    return [tuple(g) for g in groups.values()]


def remove_stale_checkpoints(rd: ResultsDir, done: set[tuple], units: list[Unit]) -> None:
    """Delete checkpoints of recorded units (a run killed between the append and the delete leaves one), and
    timing checkpoints of groups no unit measures any more."""
    for variant, stage, seed in done:
        if stage == "train":
            rd.checkpoint(variant, seed).unlink(missing_ok=True)
    live = {rd.timing_checkpoint(group_id(list(u.variants))) for u in units if u.stage == "timing"}
    for path in rd.timing_checkpoints():
        if path not in live:
            path.unlink(missing_ok=True)


def write_run_files(rd: ResultsDir, cfg: SuiteConfig, manifest: dict[str, Any], protocol: str) -> None:
    """config.resolved.yaml (every default filled in) and manifest.json beside the results."""
    resolved = {**cfg.model_dump(mode="json"), "protocol": protocol}
    rd.write(rd.config, yaml.safe_dump(resolved, sort_keys=False))
    rd.write(rd.manifest, json.dumps(manifest, indent=2) + "\n")


def record_result(rd: ResultsDir, unit: Unit, result: UnitResult, log: Log) -> None:
    """Store one finished unit: its maps and predictions files, then its records (fsync'd), then drop its
    checkpoint."""
    for arrays, path in ((result.maps, result.maps_name and rd.map_file(result.maps_name)),
                         (result.preds, result.preds_name and rd.preds_file(result.preds_name))):
        if arrays is not None:
            import numpy as np  # only a training unit has maps (GAP head) and predictions

            with rd.writing(path) as tmp:
                np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    rd.append_records(result.records)
    for r in result.records:
        if is_unit_failure(r):
            log(f"  {unit.label}: {r['error']}")
    if unit.stage == "train":
        rd.checkpoint(unit.variant.id, unit.seed).unlink(missing_ok=True)
    elif unit.stage == "timing":
        rd.timing_checkpoint(group_id(list(unit.variants))).unlink(missing_ok=True)


def run_local(units: list[Unit], ctx: RunContext, records: list[dict[str, Any]],
              done: Callable[[Unit, UnitResult], None], bar: tqdm,
              admit: Callable[[Unit], bool] = lambda _u: True) -> None:
    """Run the units one after another in this process (the default executor); `admit` False skips a unit
    (it would not finish within the budget)."""
    for unit in units:
        ctx.check_deadline()
        if not admit(unit):
            continue
        bar.set_postfix_str(unit.label)
        done(unit, run_unit(unit, ctx, unit_records(records, unit)))


def budget_gate(ctx: RunContext, records: list[dict[str, Any]], budget: Budget, tally: Tally,
                log: Log) -> Callable[[Unit], bool]:
    """The `admit` of a budgeted run: a unit whose estimate exceeds the time left is skipped with one line."""
    def admit(unit: Unit) -> bool:
        ok, why = fits(unit, ctx, records, budget)
        if not ok:
            tally.skipped_budget += 1
            tally.skipped.append(unit.label)
            log(f"skipped {unit.label}: would not finish before the deadline ({why})")
        return ok
    return admit


def run_units(units: list[Unit], ctx: RunContext, records: list[dict[str, Any]],
              done: Callable[[Unit, UnitResult], None], bar: tqdm, admit: Callable[[Unit], bool], *,
              executor: str, pack: int, threads: int, ray_address: str | None, log: Log) -> None:
    """Hand the units to the chosen executor. "pool": non-training units here, one after another, then the
    training units `pack` at a time in worker processes (`pool_executor.run_on_pool`)."""
    if executor == "ray":
        from nin_bench.run.ray_executor import run_on_ray

        run_on_ray(units, ctx, records, done, bar, address=ray_address, threads=threads, log=log)
    elif executor == "pool":
        from nin_bench.run.pool_executor import run_on_pool

        run_local([u for u in units if u.stage != "train"], ctx, records, done, bar, admit)
        run_on_pool([u for u in units if u.stage == "train"], ctx, records, done, workers=pack,
                    threads=threads, admit=admit)
    else:
        run_local(units, ctx, records, done, bar, admit)


def run_suite(cfg: SuiteConfig, out_dir: Path, *, protocol: str, progress: bool = True, log: Log = print,
              executor: str = "local", ray_address: str | None = None, cuda_fallback: str | None = None,
              deadline: float | None = None, command: str | None = None,
              ceilings: Ceilings | None = None, order: str = "variant", pack: int = 1,
              budget: Budget | None = None, tally: Tally | None = None,
              manifest_extra: dict[str, Any] | None = None, reuse: bool = False, figures: bool = True,
              retime: bool = False) -> Path:
    """Run every unrecorded (variant, stage[, seed]) of a resolved suite, then write summary and report.

    Args:
        cfg: the config after `resolve_protocol` (its `device` is "cpu" or "cuda").
        out_dir: the results folder (created; resumed when it holds this config's records).
        protocol: "cpu" | "gpu" | "full" | "quick", recorded everywhere.
        progress: show tqdm bars.
        log: where one-line messages go.
        executor: "local" (this process, unit after unit), "ray" (one Ray task per unit) or "pool" (training
            units `pack` at a time in spawned worker processes on this machine's one device).
        ray_address: None starts a local Ray instance; "auto" or "ray://..." joins a cluster.
        cuda_fallback: why a CUDA build of torch runs on the CPU here (`device.cuda_fallback_reason`), or None.
        deadline: a time.time() after which no new unit or epoch starts (the GPU batch's budget); the run then
            stops resumably (a training run at its last epoch checkpoint) and still writes summary and report.
        command: the command line that started this run, kept in the manifest (and the report) as `command`.
        ceilings: the device's peaks and bandwidth when already known (tests pass fixed ones); None: measured
            once here, before the first timing unit, and handed to every unit.
        order: "variant" or "seed" (training seed-major; see `plan`); `seeds: auto` always runs seed-major and
            adds seeds while a declared comparison is unresolved (`auto_seeds`; why it stopped goes to the
            manifest's `seeds_auto`).
        pack: with executor "pool", how many training units run at once.
        budget: the deadline with what estimates need (`budget.Budget`); a unit whose estimate exceeds the time
            left is skipped with one line (None: `deadline` alone, checked between units, settings and epochs).
        tally: filled with units done, skipped for the budget and left (the GPU session's summary line).
        manifest_extra: more manifest keys (the GPU session's step name and packing).
        reuse: copy a training unit another folder of the same results root trained identically
            (`reuse.reuse_units`, with `reused_from` on its records) instead of training it again. Off unless
            asked for (`run` asks unless --no-reuse): a library caller's folders may sit beside unrelated ones.
        figures: draw the report's figures (False: its text and tables only, `run --no-figures`).
        retime: measure a continued folder's speed records (timing, its rounds, layer timing) again, its other
            records standing (`prepare_out_dir`); the old ones are copied aside.

    Returns:
        The path of the written report.

    Raises:
        FolderBusy: another process is running in this folder.
    """
    if executor == "ray" and ray_address:  # an address that does not answer: one line before anything is touched
        from nin_bench.run.ray_address import probe

        probe(ray_address)
    rd = ResultsDir(out_dir)
    budget = budget or Budget(deadline)
    deadline = budget.deadline
    tally = tally if tally is not None else Tally()
    with rd.lock("run", log):
        if cuda_fallback:
            log(f"WARNING: {cuda_fallback}. Running the CPU protocol; use --device cuda to fail instead.")
        threads, heap = configure_process(cfg.threads)
        ctx = RunContext(rd, cfg.device, device_name(cfg.device), protocol, progress, deadline=deadline)
        carried = prepare_out_dir(rd, fingerprint(cfg, protocol), ctx.device, ctx.device_name, log, retime)
        manifest = build_manifest(device=ctx.device, device_name=ctx.device_name, threads=threads,
                                  protocol=protocol, cuda_fallback=cuda_fallback, executor=executor)
        manifest.update(cpu_heap=heap, command=command, **(manifest_extra or {}))
        manifest.update(carried)  # the ceilings the folder's standing timing rows were measured against
        variants = expand_grid(cfg)
        records = rd.read_records()
        done = completed(records)
        auto = cfg.auto_seeds is not None and "train" in cfg.stages
        if auto:  # it reads the report's comparisons (pandas, scipy): imported by the runs that add seeds only
            from nin_bench.run.auto_seeds import outcome as auto_outcome
            from nin_bench.run.auto_seeds import seed_level
        order = "seed" if auto else order  # seeds: auto adds seeds of every variant at once: seed-major
        seeds = list(range(seed_level(records, variants, cfg))) if auto else None
        units = plan(variants, cfg, done, order, seeds)
        remove_stale_checkpoints(rd, done, units)
        log(f"{cfg.name}: {len(variants)} variants, {len(units)} units to run ({protocol} protocol on "
            f"{ctx.device_name}, {threads} threads, {executor} executor) -> {rd.root}")
        if auto:
            log(f"seeds: {cfg.seeds_text()}; seeds 0-{len(seeds) - 1} wanted now")
        if not units and rd.manifest.exists():  # nothing to measure: the folder's files stay as they were made
            if auto:
                note_seeds_auto(rd, auto_outcome(records, variants, cfg, len(seeds), cut=False))
            return finish(rd, log, figures)
        write_run_files(rd, cfg, manifest, protocol)
        preload_data(variants, cfg, ctx)
        ctx.ceilings = ceilings or run_ceilings(units, ctx.device, log, ctx.shape)
        if ctx.ceilings.peak_flops and any(u.stage == "timing" for u in units):
            # a run cut short (kill -9) still says which ceilings its timing rows were given
            manifest.update(ceiling_keys(ctx.ceilings, records, manifest, planned=True))
            write_run_files(rd, cfg, manifest, protocol)

        def finished(unit: Unit, result: UnitResult) -> None:
            record_result(rd, unit, result, log)
            records.extend(result.records)
            bar.update(1)
            tally.done += 1
            if deadline is not None:  # a budgeted run says what each unit left behind, one line each
                log(f"done {unit.label}: " + unit_outcome(result))

        def take_reused(pending: list[Unit]) -> list[Unit]:
            if not reuse:
                return pending
            got, rest = reuse_units(pending, ctx, threads, log)
            for unit, result in got:
                finished(unit, result)
            return rest

        def next_level(attempted: set[tuple]) -> list[Unit]:
            level = seed_level(records, variants, cfg, attempted)
            return plan(variants, cfg, completed(records) | attempted, "seed", list(range(level)))

        bar = tqdm(total=len(units), desc=cfg.name, unit="unit", disable=not progress, dynamic_ncols=True)
        admit = budget_gate(ctx, records, budget, tally, log) if deadline is not None else (lambda _u: True)
        attempted: set[tuple] = set()
        done0, skipped0, cut = tally.done, tally.skipped_budget, False
        try:
            run_passes(units, attempted, next_level if auto else None, take_reused, bar, tally,
                       lambda pending: run_units(pending, ctx, records, finished, bar, admit, executor=executor,
                                                 pack=pack, threads=threads, ray_address=ray_address, log=log))
        except DeadlineReached:
            cut = True
            tally.left = bar.total - (tally.done - done0) - (tally.skipped_budget - skipped0)
            log(f"time budget reached with {tally.left} units left; run the same command again to continue")
        finally:
            bar.close()
        manifest.update(ceiling_keys(ctx.ceilings, records, manifest),
                        data={k: {"source": d.source, "sha256": d.source_sha256} for k, d in ctx.datasets.items()})
        if auto:
            cut = cut or tally.skipped_budget > skipped0
            level = seed_level(records, variants, cfg, attempted)
            manifest["seeds_auto"] = auto_outcome(records, variants, cfg, level, cut=cut)
            log(f"seeds: auto stopped at {level} seeds: {manifest['seeds_auto']['stopped']}")
        write_run_files(rd, cfg, manifest, protocol)
        return finish(rd, log, figures)


def run_passes(units: list[Unit], attempted: set[tuple], more: Callable[[set[tuple]], list[Unit]] | None,
               take_reused: Callable[[list[Unit]], list[Unit]], bar: tqdm, tally: Tally,
               run: Callable[[list[Unit]], None]) -> None:
    """Run the planned units and, with `seeds: auto` (`more`), each next seed level's units, until none is left.

    Args:
        units: the first pass.
        attempted: filled with the keys of every unit tried (one per variant it measures).
        more: the units of the next pass given `attempted` (`seed_level`, then `plan`), or None: one pass.
        take_reused: records the units another folder already trained (`reuse.reuse_units`) and returns the rest.
        bar: the progress bar (its total grows with each pass).
        tally: a unit skipped for the budget ends the passes (no further seed is started).
        run: runs a list of units on the chosen executor.
    """
    skipped = tally.skipped_budget
    while units:
        pending = take_reused(units)
        run(pending)
        attempted |= {(v.id, u.stage, u.seed) for u in units for v in u.variants}
        if more is None or tally.skipped_budget > skipped:
            return
        units = more(attempted)
        bar.total += len(units)
        bar.refresh()


def note_seeds_auto(rd: ResultsDir, outcome: dict[str, Any]) -> None:
    """Put `seeds_auto` into the folder's manifest when it says otherwise (a run killed before its last write)."""
    manifest = rd.read_manifest()
    if manifest and manifest.get("seeds_auto") != outcome:
        rd.write(rd.manifest, json.dumps({**manifest, "seeds_auto": outcome}, indent=2) + "\n")


def unit_outcome(result: UnitResult) -> str:
    """A finished unit in a few words: its failure, or its final record's headline figure."""
    last = result.records[-1] if result.records else {}
    if is_unit_failure(last):
        return f"FAILED ({last.get('error')})"
    if last.get("test_acc") is not None:
        return f"test_acc {last['test_acc']:.4f}, {last.get('train_time_s') or 0:.0f} s training"
    return f"{len(result.records)} records"


def run_ceilings(units: list[Unit], device: str, log: Log,
                 shape_of: Callable[[Variant], Any] | None = None) -> Ceilings:
    """The run's ceilings: each dtype its timing units use (with, given `shape_of`, the suite's own
    convolutions as a candidate) and, with layer timing, the bandwidth, measured once.

    Nothing is measured when no timing unit is left (a training-only or resumed run)."""
    timing = [v for u in units if u.stage == "timing" for v in u.variants]
    if not timing:
        return Ceilings(device)
    configs = [v.config.timing for v in timing]
    dtypes = sorted({d for t in configs for d in t.dtypes})
    convs = suite_convs(timing, shape_of) if shape_of is not None else []
    ceilings = measure_ceilings(device, dtypes, bandwidth=any(t.layer_timing for t in configs), convs=convs)
    log(f"ceilings: {', '.join(f'{d} {f / 1e12:.3g} ({ceilings.source(d)})' for d, f in ceilings.peak_flops.items())} "
        f"TFLOP/s" + (f", copy bandwidth {ceilings.bytes_per_s / 1e9:.3g} GB/s" if ceilings.bytes_per_s else "")
        + f" ({ceilings.measured_s:.1f} s)")
    return ceilings


def suite_convs(variants: list[Variant], shape_of: Callable[[Variant], Any]) -> list[ConvShape]:
    """Every convolution the variants' models run, at each one's reference batch, in each layout it is timed in."""
    out: set[ConvShape] = set()
    for v in variants:
        shape, t = shape_of(v), v.config.timing
        model = build_variant_model(v, shape)
        for layout in t.channels_last:
            out.update(conv_shapes(model, shape.input_shape, t.reference_batch_size, layout))
    return sorted(out)


def peaks_from(records: list[dict[str, Any]]) -> dict[str, float]:
    """The MFU reference peak (TFLOP/s) per dtype, as the timing rows recorded it (one value per run)."""
    out: dict[str, float] = {}
    for r in latest_per_key(records):
        if r.get("stage") == "timing" and r.get("peak_tflops") is not None:
            out[r["dtype"]] = max(out.get(r["dtype"], 0.0), r["peak_tflops"])
    return out


# The manifest's account of the ceilings and bandwidth the timing rows were measured against (`ceiling_keys`).
CEILING_KEYS = ("peak_tflops", "mem_gb_per_s", "ceilings_measured_s", "ceilings")


def ceiling_keys(ceilings: Ceilings, records: list[dict[str, Any]], manifest: dict[str, Any],
                 planned: bool = False) -> dict[str, Any]:
    """`CEILING_KEYS` for the manifest: the peaks and bandwidth the timing rows recorded and the account of the
    ceilings this run measured (`ceilings_from`); a run that measured none keeps what `manifest` carried over
    from the run that timed the folder's standing rows.

    Args:
        ceilings: this run's (empty when it times nothing).
        records: the folder's records.
        manifest: the manifest so far (with any carried-over keys).
        planned: written before the timing units run: a dtype without a row yet takes the ceiling just measured,
            so a run killed before its end still names the ceilings its rows were given.
    """
    rows = peaks_from(records)
    out = {"peak_tflops": rows or manifest.get("peak_tflops") or {},
           "mem_gb_per_s": bandwidth_from(records) or manifest.get("mem_gb_per_s")}
    if ceilings.peak_flops or "ceilings" not in manifest:
        out.update(ceilings_measured_s=round(ceilings.measured_s, 2), ceilings=ceilings_from(ceilings, records))
    if planned:
        out["peak_tflops"] = {**out["ceilings"]["peak_tflops"], **rows}
        out["mem_gb_per_s"] = out["mem_gb_per_s"] or (ceilings.bytes_per_s and ceilings.bytes_per_s / 1e9)
    return out


def ceilings_from(ceilings: Ceilings, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest's account of the ceilings (`Ceilings.describe`), with the source of each dtype's ceiling as
    the timing rows recorded it where a row lifted it (on a Ray worker the lift stays in the worker's copy)."""
    out = ceilings.describe()
    for r in latest_per_key(records):
        if r.get("stage") == "timing" and r.get("peak_source") == "row":
            d = r["dtype"]
            if r["peak_tflops"] >= out["peak_tflops"].get(d, 0.0):
                out["peak_tflops"][d], out["peak_source"][d] = r["peak_tflops"], "row"
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


def finish(rd: ResultsDir, log: Log, figures: bool = True) -> Path:
    """Write summary.csv and the report (with its figures unless `figures` is False) from the stored records."""
    from nin_bench.report import rebuild

    try:
        report = rebuild(rd, figures=figures)
    except Exception as exc:  # the records are safe; say so rather than lose the run's exit status silently
        from nin_bench.store.records import error_text

        log(f"report failed ({error_text(exc)}); the records are written; "
            f"retry with: python -m nin_bench report {rd.root}")
        raise
    log(f"summary: {rd.summary}\nreport:  {report}")
    return report

