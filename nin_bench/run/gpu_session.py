"""What one call on a lent GPU runs: a batch sized to the call's budget, ordered so a cut-off call still leaves
complete answers, every step a resumable results folder `results/gpu-<step>`.

The default batch (about 7 minutes of work): the self-check (`gpu-selfcheck`, with the packing measurement), the
eager timing of one_by_one's CIFAR-10 variants at batch 128 and 1024 in fp32 and bf16 with layer timing, then the
paper-protocol training of one_by_one on CIFAR-10 and of head, seed-major, several runs at once on the one GPU
(`pool_executor`). Compile sweeps, d2l and dropout are opt-in (`--steps`). A failed self-check stops what depends
on it (`BLOCKS`). No unit starts that its estimate says cannot finish before the deadline (`budget.py`).

`--rehearse` runs the same steps on this CPU, shrunk to minutes (`REHEARSAL_SETS`): fp32 only (bf16 autocast
on a CPU is slower than fp32 and proves nothing about the GPU), width 1/8, 256 training images, one epoch,
batches 8 and 32, one thread per run and two runs packed; the self-check runs its CPU part (train_resume).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from nin_bench.errors import ConfigError, UserError

Log = Callable[[str], None]
_TIMING_128_1024 = ("timing.dtypes=[fp32,bf16]", "timing.batch_sizes=[128,1024]", "timing.reference_batch_size=128",
                    "timing.layer_timing_batch_sizes=[128,1024]")


@dataclass(frozen=True)
class Step:
    """One step of the batch: results/gpu-<name> from a suite YAML with --set overrides."""

    name: str
    suite: str
    sets: tuple[str, ...]
    default: bool = True
    order: str = "variant"  # training steps run seed-major (runner.plan)

    @property
    def trains(self) -> bool:
        return "train" in next((s for s in self.sets if s.startswith("stages=")), "train")

    @property
    def compiles(self) -> bool:
        return self.suite == "full.yaml"


STEPS: tuple[Step, ...] = (
    Step("timing-one_by_one", "one_by_one.yaml",
         ("stages=[profile,timing]", "grid.data.dataset=[cifar10]", *_TIMING_128_1024)),
    Step("one_by_one", "one_by_one.yaml", ("stages=[profile,train]", "grid.data.dataset=[cifar10]"), order="seed"),
    Step("head", "head.yaml", ("stages=[profile,train]",), order="seed"),
    Step("timing-full", "full.yaml", ("stages=[profile,timing]",), default=False),
    Step("timing-d2l", "d2l.yaml", ("stages=[profile,timing]",), default=False),
    Step("layer-timing-d2l", "d2l.yaml", ("stages=[timing]", *_TIMING_128_1024), default=False),
    Step("dropout", "dropout.yaml", ("stages=[profile,train]",), default=False, order="seed"),
    Step("one_by_one-fashion", "one_by_one.yaml", ("stages=[profile,train]", "grid.data.dataset=[fashion_mnist]"),
         default=False, order="seed"),
)
SELFCHECK = "gpu-selfcheck"
# Shrinks every step on the CPU (--rehearse); applied after the step's own sets (the last word).
REHEARSAL_SETS = ("model.width=0.125", "seeds=[0,1]", "threads=1", "train.epochs=1", "train.subset=256",
                  "train.val_size=128", "train.batch_size=32", "timing.dtypes=[fp32]", "timing.batch_sizes=[8,32]",
                  "timing.reference_batch_size=8", "timing.layer_timing_batch_sizes=[8]", "timing.warmup=1",
                  "timing.repeats=3", "timing.rounds=2", "timing.compile_batch_sizes=[8]")
REHEARSAL_PACK = 2
# What a failed self-check stops: check name -> (what it stops, why).
BLOCKS = {
    "train_resume": ("training steps", "a run cut at the deadline would not resume to the same result"),
    "events_vs_wall": ("timing steps", "CUDA-event times disagree with the wall clock"),
    "compile": ("compile steps", "compiled rows would not be what they claim"),
    "bf16": ("bf16 rows (timing and training run in fp32)", "bf16 autocast does not run as it should"),
}


def steps_named(names: str | None) -> list[Step]:
    """The steps of `--steps a,b` (None: the default batch), in the batch's order.

    Raises:
        UserError: an unknown step name (lists the known ones).
    """
    if not names:
        return [s for s in STEPS if s.default]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    known = {s.name for s in STEPS}
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise UserError(f"--steps: unknown step {unknown[0]!r}; expected some of {', '.join(sorted(known))} "
                        "(--steps list describes them)")
    return [s for s in STEPS if s.name in wanted]


def describe_steps() -> str:
    """One line per step: name, default or opt-in, suite and overrides (`--steps list`)."""
    return "\n".join(f"{s.name:20s} {'default' if s.default else 'opt-in ':7s} {s.suite} "
                     + " ".join(f"--set {x}" for x in s.sets) for s in STEPS)


def require_cuda() -> None:
    """Raise a one-line UserError on a machine without a usable CUDA device (the CLI exits 2)."""
    import torch

    from nin_bench.suite.machine import resolve_device

    try:
        resolve_device("cuda", torch.cuda.is_available(), asked_as="gpu-session's cuda")
    except ConfigError:
        from nin_bench.runtime.device import cuda_fallback_reason

        why = cuda_fallback_reason() or f"torch {torch.__version__} was built without CUDA"
        raise UserError(f"gpu-session needs a CUDA device: {why} (--rehearse runs the batch on the CPU)") from None


def run_selfcheck(folder: Path, device: str, log: Log, *, names: tuple[str, ...] | None = None) -> dict[str, bool]:
    """Run the self-checks not yet in `folder` (selfcheck.json, selfcheck.md, manifest.json) and return every
    recorded check's pass/fail. Checks already recorded are kept (a later call moves on to the measurements).

    Args:
        folder: the self-check folder.
        device: "cuda", or "cpu" in a rehearsal (the CPU part of the checks).
        log: one line per check.
        names: the checks wanted (None: selfcheck.DEFAULT_CHECKS, or the CPU ones in a rehearsal).
    """
    import torch

    from nin_bench.data.datasets import load_dataset
    from nin_bench.run.manifest import build_manifest, device_name
    from nin_bench.run.selfcheck import CPU_CHECKS, DEFAULT_CHECKS, run_checks
    from nin_bench.store.folder import ResultsDir

    rd = ResultsDir(folder)
    rows = rd.read_json(rd.selfcheck_json).get("checks", [])
    have = {r["name"] for r in rows}
    wanted = [n for n in (names or (DEFAULT_CHECKS if device == "cuda" else CPU_CHECKS)) if n not in have]
    for r in rows:
        log(f"self-check: kept {'PASS' if r['passed'] else 'FAIL'} {r['name']}: {r['figure']}")
    if wanted:
        rd.scratch.mkdir(parents=True, exist_ok=True)
        results = run_checks(torch.device(device), load_dataset("cifar10"), rd.scratch, log, names=wanted)
        rows += [asdict(r) for r in results]
        manifest = build_manifest(device=device, device_name=device_name(device), threads=torch.get_num_threads(),
                                  protocol="selfcheck")
        rd.write(rd.manifest, json.dumps(manifest, indent=2) + "\n")
        table = "\n".join(f"| {r['name']} | {'pass' if r['passed'] else 'FAIL'} | {r['figure']} | {r['detail']} |"
                          for r in rows)
        rd.write(rd.selfcheck_md, f"# Self-check on {manifest['gpu_name'] or device}\n\n"
                 "| check | result | figure | detail |\n|---|---|---|---|\n" + table + "\n")
        rd.write(rd.selfcheck_json, json.dumps({"checks": rows}, indent=2) + "\n")
        rd.clear_scratch()  # the resume check's checkpoint is scratch, never a result
    return {r["name"]: r["passed"] for r in rows}


def packing(folder: Path, device: str, asked: int | None, rehearse: bool, log: Log) -> dict[str, Any]:
    """How many training runs share the device: `--pack` when given, else the recorded measurement of an earlier
    call on this device (packing.json in the self-check folder), else measured now and recorded.

    Returns:
        The packing record: "chosen" (the pack used), "trials" (when measured), "source".
    """
    from nin_bench.run.manifest import device_name
    from nin_bench.run.pool_executor import measure_packing
    from nin_bench.store.folder import ResultsDir

    rd = ResultsDir(folder)
    name = device_name(device)
    kept = rd.read_json(rd.packing_json) or None
    if kept is not None and kept.get("device_name") != name:
        kept = None  # measured on another kind of device: says nothing about this one
    if asked is not None:
        return {**(kept or {}), "chosen": asked, "source": "--pack"}
    if kept is not None:
        log(f"packing: {kept['chosen']} concurrent training runs (measured earlier, {rd.packing_json})")
        return {**kept, "source": "recorded"}
    kw = dict(packs=(1, REHEARSAL_PACK), batch_size=32, steps=5, width=0.125, threads=1,
              start_margin_s=8.0) if rehearse else dict(dtype="bf16", packs=(1, 2, 4), start_margin_s=20.0)
    measured = {**measure_packing(device, log=log, **kw), "device_name": name}
    if rehearse:  # two 1-thread runs on a 2-core machine: always packed, whatever the noisy measurement says
        measured["chosen"] = REHEARSAL_PACK
    rd.write(rd.packing_json, json.dumps(measured, indent=2) + "\n")
    log(f"packing: chose {measured['chosen']} concurrent training runs ({measured['rule']})")
    return {**measured, "source": "measured"}


def step_sets(step: Step, passed: dict[str, bool], rehearse: bool) -> tuple[list[str] | None, str]:
    """The step's --set list after the self-check's verdicts, or None with the reason when a failed check stops
    the whole step."""
    failed = {n for n, ok in passed.items() if not ok}
    stages = next(s for s in step.sets if s.startswith("stages="))
    for check, (what, why) in BLOCKS.items():
        stops = (check == "train_resume" and step.trains) or (check == "compile" and step.compiles) or \
                (check == "events_vs_wall" and "timing" in stages)
        if check in failed and stops:
            return None, f"self-check {check} failed ({why}): no {what}"
    sets = list(step.sets)
    if "bf16" in failed:
        sets += ["timing.dtypes=[fp32]", "train.dtype=fp32"]
    return sets + (list(REHEARSAL_SETS) if rehearse else []), ""


def load_step(step: Step, suites: Path, sets: list[str], rehearse: bool) -> tuple[Any, str]:
    """The resolved config and protocol of a step: the GPU protocol on CUDA; in a rehearsal the same paper
    protocol on the CPU ("full", what --full runs), shrunk by REHEARSAL_SETS."""
    from nin_bench.suite.config import load_config, resolve_protocol

    device = "cpu" if rehearse else "cuda"
    cfg = load_config(suites / step.suite, [*sets, f"device={device}"])
    cfg, protocol, _ = resolve_protocol(cfg, cuda=not rehearse, full=rehearse, sets=sets)
    return cfg, protocol


def pending_units(cfg: Any, folder: Path) -> int:
    """How many units of a step not reached before the deadline are still unrecorded (for the summary)."""
    from nin_bench.run.runner import plan
    from nin_bench.store.folder import ResultsDir
    from nin_bench.store.records import completed
    from nin_bench.suite.variants import expand_grid

    return len(plan(expand_grid(cfg), cfg, completed(ResultsDir(folder).read_records())))


def timing_records(results: Path, steps: list[Step]) -> tuple[dict[str, Any], ...]:
    """The timing rows the batch's timing steps recorded: training units are estimated from their train-step
    img/s (a variant id names the same model in every suite)."""
    from nin_bench.store.folder import ResultsDir

    rows = []
    for s in steps:
        if not s.trains:
            rows += [r for r in ResultsDir(results / f"gpu-{s.name}").read_records() if r.get("stage") == "timing"]
    return tuple(rows)


def gpu_session(results: Path, suites: Path, budget_s: float, log: Log = print, *, rehearse: bool = False,
                steps: str | None = None, pack: int | None = None) -> int:
    """Run the batch until it is done or the budget is spent.

    Args:
        results: the results root (folders results/gpu-* are made in it).
        suites: the folder holding the suite YAMLs (ablations/).
        budget_s: wall seconds from now after which no unit, timing setting or epoch starts; a unit whose
            estimate does not fit the time left is skipped.
        log: one-line messages (one per finished or skipped unit, and the final summary line).
        rehearse: run the same steps on the CPU, shrunk (REHEARSAL_SETS); no CUDA needed.
        steps: comma-separated step names (None: the default batch; see `describe_steps`).
        pack: training runs at once on the device (None: measured on the first call, then the recorded choice).

    Returns:
        0 when every step is complete, 3 when units were left or skipped for the budget (run it again).

    Raises:
        UserError: no CUDA (outside a rehearsal), an unknown step (the CLI exits 2).
    """
    deadline = time.time() + budget_s
    chosen = steps_named(steps)
    if not rehearse:
        require_cuda()
    from nin_bench.run.budget import Tally

    device = "cpu" if rehearse else "cuda"
    names = None if rehearse else _checks_for(chosen)
    passed = run_selfcheck(results / SELFCHECK, device, log, names=names)
    pk = packing(results / SELFCHECK, device, pack, rehearse, log) if any(s.trains for s in chosen) else None
    total, blocked = Tally(), 0
    for step in chosen:
        sets, why = step_sets(step, passed, rehearse)
        if sets is None:
            log(f"== gpu-{step.name}: not run: {why}")
            blocked += 1
            continue
        tally = _run_step(step, results, suites, sets, rehearse, deadline, pk, chosen, budget_s, log)
        total.done, total.skipped_budget = total.done + tally.done, total.skipped_budget + tally.skipped_budget
        total.left += tally.left
    short = total.skipped_budget + total.left
    log(f"units_done={total.done} units_skipped_budget={short}" + (f" steps_blocked={blocked}" if blocked else ""))
    return 3 if short else 0


def _checks_for(chosen: list[Step]) -> tuple[str, ...]:
    """The default checks, and the compile check (a 20-60 s compile) only when a compile step was asked for."""
    from nin_bench.run.selfcheck import DEFAULT_CHECKS

    return DEFAULT_CHECKS + (("compile",) if any(s.compiles for s in chosen) else ())


def _run_step(step: Step, results: Path, suites: Path, sets: list[str], rehearse: bool, deadline: float,
              pk: dict[str, Any] | None, chosen: list[Step], budget_s: float, log: Log) -> Any:
    """One step as a budgeted `run_suite` (training steps on the process pool); returns its Tally."""
    from nin_bench.run.budget import Budget, Tally
    from nin_bench.run.pool_executor import pack_slowdown
    from nin_bench.run.runner import run_suite

    folder = results / f"gpu-{step.name}"
    cfg, protocol = load_step(step, suites, sets, rehearse)
    tally = Tally()
    if time.time() >= deadline:
        tally.left = pending_units(cfg, folder)
        log(f"== gpu-{step.name}: not started, the budget is spent ({tally.left} units left)")
        return tally
    n = pk["chosen"] if (pk and step.trains) else 1
    budget = Budget(deadline, pack_slowdown(pk, n), timing_records(results, chosen) if step.trains else ())
    line = f"gpu-{step.name}: {step.suite}" + "".join(f" --set {s}" for s in sets)
    log(f"== {line}")
    run_suite(cfg, folder, protocol=protocol, progress=False, log=log, deadline=deadline,
              command=f"python -m nin_bench gpu-session{' --rehearse' if rehearse else ''} (step {line})",
              executor="pool" if step.trains else "local", pack=n, order=step.order, budget=budget, tally=tally,
              manifest_extra={"gpu_session": {"step": step.name, "budget_s": budget_s, "rehearse": rehearse,
                                              "packing": pk if step.trains else None}})
    return tally
