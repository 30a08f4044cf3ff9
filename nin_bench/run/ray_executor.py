"""The Ray executor: one Ray task per unit, over every GPU (or CPU core) of a machine or a cluster.

Ray core tasks do the scheduling, retries and cancellation; nin_bench only maps units onto them. Each task builds
its model and loads its data inside the worker (a unit and a cache-free `RunContext` are all that is pickled) and
returns the unit's records; the driver (`runner.run_suite`) stays the only writer of the results folder and
stores each result as `ray.wait` hands it back. Training checkpoints are written by the task into the results
folder's `.cache/checkpoints/`, which on a cluster must be storage every node shares: a worker (or node) that
dies is retried by Ray (`max_retries`) and the retry resumes from the unit's last epoch checkpoint.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from nin_bench.data.datasets import DataError
from nin_bench.run.stages import (
    DeadlineReached,
    RunContext,
    Unit,
    UnitResult,
    failed_unit,
    run_unit,
)
from nin_bench.store.records import variant_records

# System failures (a killed worker process, a lost node) are retried; exceptions inside a unit are not (they
# are that unit's error record already, see stages.run_unit).
MAX_RETRIES = 3


def unit_resources(unit: Unit, device: str, threads: int) -> dict[str, float]:
    """What one unit asks Ray for.

    On CUDA a timing or training unit takes one whole GPU (a timing unit never shares its GPU with another
    unit); on the CPU it takes as many cores as its thread count. A profile unit counts on the meta device and
    a small CPU trace: one core.
    """
    if unit.stage == "profile":
        return {"num_cpus": 1, "num_gpus": 0}
    if device == "cuda":
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": threads, "num_gpus": 0}


def run_unit_task(unit: Unit, ctx: RunContext, known: list[dict[str, Any]], threads: int) -> UnitResult:
    """The body of a Ray task: the same `run_unit` the local executor calls, with the run's thread count."""
    from nin_bench.runtime.device import set_threads, steady_cpu_heap

    ctx.check_deadline()  # a task that waited in Ray's queue past the budget does not start
    set_threads(threads)
    steady_cpu_heap()  # as the driver's process has it (see there)
    return run_unit(unit, ctx, known)


def _start(address: str | None, threads: int, log: Callable[[str], None]) -> bool:
    """Connect to Ray (or start a local instance); True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        import torch

        # address="local" always starts a fresh instance for this run, never joins a stray one by accident
        ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(),
                 include_dashboard=False, log_to_driver=True)
    else:
        ray.init(address=address, log_to_driver=True)
    res = ray.cluster_resources()
    log(f"ray: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs "
        f"({'local instance' if address is None else address}); {threads} threads per CPU unit")
    return True


def run_on_ray(units: list[Unit], ctx: RunContext, records: list[dict[str, Any]],
               done: Callable[[Unit, UnitResult], None], bar: Any, *, address: str | None, threads: int,
               log: Callable[[str], None] = print) -> None:
    """Run every unit as a Ray task and hand each result to `done` as it finishes.

    Args:
        units: what to run.
        ctx: the run context (each task gets a copy without caches or progress bars).
        records: the driver's records so far (a task gets its variant's successful ones: FLOPs, timing rows).
        done: called in the driver, in finishing order, with each unit and its result.
        bar: the driver's progress bar (its postfix shows how many tasks run).
        address: None starts a local instance; "auto" or "ray://host:port" joins a cluster.
        threads: torch threads per unit (CPU units ask Ray for that many cores).
        log: one-line messages.

    Raises:
        DataError: a worker could not find the data (every node needs it; see the README).
        KeyboardInterrupt: after cancelling every task still running (finished units are already stored).
    """
    import ray


    started = _start(address, threads, log)
    task = ray.remote(run_unit_task)
    worker_ctx = ctx.fresh()
    worker_ctx.progress = False  # bars of many workers would interleave in the driver's terminal
    pending: dict[Any, Unit] = {}
    try:
        for unit in units:
            opts = {**unit_resources(unit, ctx.device, threads), "max_retries": MAX_RETRIES,
                    "retry_exceptions": False, "name": f"nin_bench {unit.label}"}
            pending[task.options(**opts).remote(unit, worker_ctx, variant_records(records, unit.variant.id),
                                                threads)] = unit
        stopped = False  # a task stopped by the time budget (its unit resumes on the next run)
        while pending:
            bar.set_postfix_str(f"{len(pending)} tasks queued or running")
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                unit = pending.pop(ref)
                result = _result(ref, unit, ctx)
                if result is None:
                    stopped = True
                else:
                    done(unit, result)
        if stopped:
            raise DeadlineReached("the run's time budget is spent")
    except (KeyboardInterrupt, DeadlineReached):
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _result(ref: Any, unit: Unit, ctx: RunContext) -> UnitResult | None:
    """A finished task's result, its unit's error record when Ray could not run it, or None when the run's time
    budget stopped it (it resumes on the next run)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, DeadlineReached):
            return None
        if isinstance(cause, DataError):
            raise DataError(str(cause).splitlines()[-1]) from None
        return failed_unit(unit, ctx, cause)
    except ray.exceptions.RayError as exc:  # worker or node lost after every retry
        return failed_unit(unit, ctx, exc)
