"""Several training runs at once on one device, through `concurrent.futures` process pools (spawn).

At batch 128 in eager mode one NiN training run leaves most of a large GPU idle (kernel launches, not maths,
bound each step), so running a few side by side raises the aggregate img/s. The shape is the Ray executor's
(`ray_executor.py`): a worker runs the same `stages.run_unit` and returns its `UnitResult`; the driver stays
the only writer of the results folder. Each slot is its own one-process pool, so a worker that dies breaks only
its own pool: its unit becomes one unit-failure record (it runs again on the next call) and the slot gets a fresh
process. `measure_packing` times 1 vs N concurrent short runs so the session can choose N by measurement.
"""
from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from nin_bench.data.datasets import DataError
from nin_bench.run.stages import failed_unit, run_unit
from nin_bench.run.unit import DeadlineReached, RunContext, Unit, UnitResult, unit_records

Log = Callable[[str], None]
# Admit: called in the driver just before a unit would start; False skips it (the budget check).
Admit = Callable[[Unit], bool]


def _init_worker(threads: int | None) -> None:
    """Each worker process: the run's thread count and heap policy, as the driver's process has them."""
    from nin_bench.runtime.device import configure_process

    configure_process(threads)


def _run_in_worker(unit: Unit, ctx: RunContext, known: list[dict[str, Any]]) -> UnitResult:
    """A worker's task: the same `run_unit` the local executor calls."""
    ctx.check_deadline()
    return run_unit(unit, ctx, known)


def new_slot(threads: int | None) -> ProcessPoolExecutor:
    """One worker process (spawn: CUDA cannot be forked) with the run's thread count."""
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))


def run_on_pool(units: list[Unit], ctx: RunContext, records: list[dict[str, Any]],
                done: Callable[[Unit, UnitResult], None], *, workers: int, threads: int | None,
                admit: Admit) -> None:
    """Run `units` in order, at most `workers` at a time, each in its own process; hand results to `done`.

    Args:
        units: what to run (training units; order kept for starting, results come in finishing order).
        ctx: the run context (each worker gets a copy without caches or progress bars).
        records: the driver's records so far (a worker gets its variant's: timing rows for loop_efficiency).
        done: called in the driver with each unit and its result.
        workers: how many units run at once.
        threads: torch threads per worker.
        admit: asked just before a unit starts; False skips it (it does not fit the time left).

    Raises:
        DeadlineReached: the budget ran out (units not started are left; a started one stopped at an epoch).
        DataError: a worker could not find the data.
    """
    if not units:
        return  # no worker processes to start
    worker_ctx = ctx.fresh()
    worker_ctx.progress = False  # bars of several workers would interleave
    slots = [new_slot(threads) for _ in range(max(1, workers))]
    free, running = list(slots), {}  # future -> (unit, slot)
    queue, stopped = list(units), False
    try:
        while queue or running:
            while free and queue and not stopped:
                unit = queue.pop(0)
                if ctx.deadline is not None and time.time() >= ctx.deadline:
                    stopped = True
                elif admit(unit):
                    slot = free.pop()
                    fut = slot.submit(_run_in_worker, unit, worker_ctx, unit_records(records, unit))
                    running[fut] = (unit, slot)
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                unit, slot = running.pop(fut)
                result, slot = _outcome(fut, unit, ctx, slot, threads, slots)
                stopped = stopped or result is None
                free.append(slot)
                if result is not None:
                    done(unit, result)
        if stopped:
            raise DeadlineReached("the run's time budget is spent")
    finally:
        for slot in slots:
            slot.shutdown(wait=True, cancel_futures=True)


def _outcome(fut: Future, unit: Unit, ctx: RunContext, slot: ProcessPoolExecutor, threads: int | None,
             slots: list[ProcessPoolExecutor]) -> tuple[UnitResult | None, ProcessPoolExecutor]:
    """A finished future's result (None: stopped by the budget) and the slot to reuse (a fresh one when its
    process died; the dead unit is then one unit-failure record and runs again next time)."""
    try:
        return fut.result(), slot
    except DeadlineReached:
        return None, slot
    except DataError:
        raise
    except BrokenProcessPool as exc:  # the worker died (killed, out of host memory, a crash in a kernel)
        slot.shutdown(wait=False)
        fresh = new_slot(threads)
        slots[slots.index(slot)] = fresh
        return failed_unit(unit, ctx, RuntimeError(f"worker process died: {exc}")), fresh
    except Exception as exc:  # an error outside run_unit's own handling (pickling, start-up)
        return failed_unit(unit, ctx, exc), slot


# ---- packing: how many training runs to put side by side on the device ------------------------------------
# A larger pack is chosen only when it raises the aggregate img/s by this much over the next smaller one: each
# packed run is slower, so a marginal gain would cost whole units at the end of a call.
PACK_MIN_GAIN = 1.15


def _short_run(device: str, dtype: str, batch_size: int, steps: int, width: float, start_at: float) -> dict:
    """A worker's part of the packing measurement: warm up, wait for the common start, time `steps` train steps
    of the paper's CIFAR-10 NiN (no BatchNorm) at the training batch and dtype."""
    import torch

    from nin_bench.measure.timing import time_model
    from nin_bench.models.nin import build_model

    torch.manual_seed(0)
    model = build_model("nin_cifar", width=width)
    kw = dict(mode="train_step", batch_size=batch_size, device=torch.device(device), dtype=dtype,
              channels_last=True)
    time_model(model, (3, 32, 32), warmup=2, repeats=3, **kw)  # CUDA context, cuDNN autotuning: untimed
    time.sleep(max(0.0, start_at - time.time()))  # every run of the trial starts together
    t0 = time.time()
    row = time_model(model, (3, 32, 32), warmup=2, repeats=steps, **kw)
    return {"img_per_s": row["img_per_s"], "start": t0, "end": time.time()}


def measure_packing(device: str, *, packs: tuple[int, ...] = (1, 2, 4), dtype: str = "fp32",
                    batch_size: int = 128, steps: int = 50, width: float = 1.0, threads: int | None = None,
                    start_margin_s: float = 5.0, log: Log = print) -> dict[str, Any]:
    """Aggregate training img/s of 1, 2, ... concurrent short runs on one device, and the pack to use.

    Args:
        device: "cuda" or "cpu".
        packs: the numbers of concurrent runs to try (the first should be 1).
        dtype, batch_size, width: the training setting the runs imitate.
        steps: timed train steps per run.
        threads: torch threads per worker.
        start_margin_s: how far ahead the common start is set (each worker's warm-up must fit before it).
        log: one line per trial.

    Returns:
        {"trials": [{"pack", "agg_img_per_s", "per_run_img_per_s", "overlap_s"}...], "chosen": N, "rule": ...,
        plus the setting}.
    """
    slots = [new_slot(threads) for _ in range(max(packs))]
    trials = []
    try:
        for pack in packs:
            start_at = time.time() + start_margin_s
            futs = [s.submit(_short_run, device, dtype, batch_size, steps, width, start_at) for s in slots[:pack]]
            runs = [f.result() for f in futs]
            agg = sum(r["img_per_s"] for r in runs)
            overlap = min(r["end"] for r in runs) - max(r["start"] for r in runs)
            trials.append({"pack": pack, "agg_img_per_s": round(agg, 1), "overlap_s": round(overlap, 3),
                           "per_run_img_per_s": [round(r["img_per_s"], 1) for r in runs]})
            log(f"packing: {pack} concurrent runs -> {agg:.0f} img/s in all")
    finally:
        for s in slots:
            s.shutdown(wait=True, cancel_futures=True)
    return {"device": device, "dtype": dtype, "batch_size": batch_size, "steps": steps, "width": width,
            "trials": trials, "chosen": choose_pack(trials),
            "rule": f"the largest pack whose aggregate img/s beats the next smaller by >= {PACK_MIN_GAIN}x"}


def choose_pack(trials: list[dict[str, Any]]) -> int:
    """The largest pack that gains at least PACK_MIN_GAIN over the pack chosen so far (trials in pack order)."""
    best = trials[0]
    for t in trials[1:]:
        if t["agg_img_per_s"] >= PACK_MIN_GAIN * best["agg_img_per_s"]:
            best = t
    return int(best["pack"])


def pack_slowdown(packing: dict[str, Any] | None, pack: int) -> float:
    """How much longer one run takes inside a pack of `pack`: pack / (aggregate speed-up over one run), from
    the measurement when it tried that pack, else `pack` (no gain assumed: the safe side)."""
    if pack <= 1:
        return 1.0
    trials = {t["pack"]: t["agg_img_per_s"] for t in (packing or {}).get("trials", [])}
    if pack in trials and trials.get(1):
        return pack / (trials[pack] / trials[1])
    return float(pack)
