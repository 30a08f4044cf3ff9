"""The Ray executor: one Ray task per unit, over every GPU (or CPU core) of a machine or a cluster.

Ray core tasks do the scheduling, retries and cancellation; nin_bench only maps units onto them. Each task builds
its model and loads its data inside the worker (a unit and a cache-free `RunContext` are all that is pickled) and
returns the unit's records; the driver (`runner.run_suite`) stays the only writer of the results folder and
stores each result as `ray.wait` hands it back. Training checkpoints are written by the task into the results
folder's `.cache/checkpoints/`, which on a cluster must be storage every node shares: a worker (or node) that
dies is retried by Ray (`max_retries`) and the retry resumes from the unit's last epoch checkpoint.

Joining a running cluster, the driver hands the job what its tasks need through Ray's job-level `runtime_env`:
`env_vars` carries every `NIN_BENCH_*` variable of the driver's shell (the data root and the decoded-data cache as
absolute paths), `py_modules` carries this checkout's `nin_bench` package, which Ray puts ahead of whatever
nin_bench a node has installed (or lacks). The thread count and the results folder travel in each task's
arguments. Worker processes are long-lived: Ray reuses a worker for the job's next task of the same shape
(`max_calls=0`, also for GPU tasks, where Ray's default starts a fresh process per task), so torch is imported
once per worker and a worker keeps its decoded data set between units.
"""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nin_bench.data.datasets import DataError
from nin_bench.run.ray_address import RayUnavailable
from nin_bench.run.stages import failed_unit, run_unit
from nin_bench.run.unit import DeadlineReached, RunContext, Unit, UnitResult, unit_records
from nin_bench.store.folder import ResultsDir

# System failures (a killed worker process, a lost node) are retried; exceptions inside a unit are not (they
# are that unit's error record already, see stages.run_unit).
MAX_RETRIES = 3
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the nin_bench package of this checkout (py_modules)

# Decoded data sets of this worker process, kept between the units it runs (a Ray worker serves many units of
# one job; reloading Fashion-MNIST or CIFAR-10 per unit is what long-lived workers are meant to save).
_WORKER_DATASETS: dict[str, Any] = {}


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


def run_unit_task(unit: Unit, ctx: RunContext, known: list[dict[str, Any]],
                  threads: int) -> tuple[UnitResult, str]:
    """The body of a Ray task: the same `run_unit` the local executor calls, with the run's thread count.

    Returns:
        The unit's result and where it ran ("<node id>/<pid>": the driver counts worker processes and nodes).

    Raises:
        DataError: the data set is missing on this node; the message names the node (host name and IP).
    """
    import ray

    from nin_bench.runtime.device import configure_process

    ctx.check_deadline()  # a task that waited in Ray's queue past the budget does not start
    configure_process(threads)  # as the driver's process has it
    ctx.datasets = _WORKER_DATASETS
    try:
        result = run_unit(unit, ctx, known)
    except DataError as exc:
        node = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
        raise DataError(f"on Ray node {node}: {str(exc).splitlines()[-1]}") from None
    return result, f"{ray.get_runtime_context().get_node_id()}/{os.getpid()}"


def job_runtime_env() -> dict[str, Any]:
    """The job-level runtime_env that makes a joined cluster's workers see what the driver sees.

    Returns:
        `env_vars`: every NIN_BENCH_* variable of this process (NIN_BENCH_DATA and NIN_BENCH_CACHE made absolute,
        since a worker's working directory is not the driver's); `py_modules`: this checkout's nin_bench package.
    """
    env = {k: v for k, v in os.environ.items() if k.startswith("NIN_BENCH_")}
    for key in ("NIN_BENCH_DATA", "NIN_BENCH_CACHE"):
        if env.get(key):
            env[key] = str(Path(env[key]).expanduser().resolve())
    return {"env_vars": env, "py_modules": [str(PACKAGE_DIR)], "excludes": ["__pycache__", "*.pyc"]}


def _start(address: str | None, threads: int, log: Callable[[str], None]) -> bool:
    """Connect to Ray (or start a local instance); True when this call connected (and must shut down)."""
    import ray

    if ray.is_initialized():
        return False
    if address is None:
        import torch

        # address="local" always starts a fresh instance for this run, never joins a stray one by accident
        ray.init(address="local", num_cpus=os.cpu_count(), num_gpus=torch.cuda.device_count(),
                 include_dashboard=False, log_to_driver=True)
    else:
        try:  # the address was probed by `run_suite` before anything was touched
            ray.init(address=address, log_to_driver=True, runtime_env=job_runtime_env())
        except Exception as exc:  # noqa: BLE001  (Ray's errors here are many and long: one line at the boundary)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RayUnavailable(f"could not join the Ray cluster at {address}: {first}") from None
    res = ray.cluster_resources()
    log(f"ray: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs "
        f"({'local instance' if address is None else address}); {threads} threads per CPU unit")
    return True


def check_fits(units: list[Unit], device: str, threads: int, nodes: list[dict[str, Any]]) -> None:
    """Refuse a run that no node of the cluster can hold, instead of leaving its tasks queued forever.

    Args:
        units: what is to run.
        device: "cpu" or "cuda".
        threads: torch threads per CPU unit.
        nodes: `ray.nodes()` (each with "Alive" and "Resources").

    Raises:
        RayUnavailable: some unit needs more CPUs or GPUs than any live node has (a cluster that adds nodes on
            demand has to be scaled up before the run).
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    for need in {tuple(unit_resources(u, device, threads).values()) for u in units}:
        cpus, gpus = need
        if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in alive):
            continue
        most_cpu = max((int(r.get("CPU", 0)) for r in alive), default=0)
        most_gpu = max((int(r.get("GPU", 0)) for r in alive), default=0)
        remedy = ("run with --device cpu or join a cluster with GPUs" if gpus > most_gpu else
                  f"set threads to at most {most_cpu} (--set threads={most_cpu})")
        raise RayUnavailable(f"no node of the Ray cluster can run a unit that needs {cpus:g} CPUs and {gpus:g} "
                             f"GPUs (largest node: {most_cpu} CPUs, {most_gpu} GPUs); {remedy}")


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
        address: None starts a local instance; "auto", "HOST:PORT" or "ray://host:port" joins a cluster.
        threads: torch threads per unit (CPU units ask Ray for that many cores).
        log: one-line messages.

    Raises:
        RayUnavailable: the address does not answer within CONNECT_TIMEOUT_S, or no node can hold a unit.
        DataError: a worker could not find the data (the message names its node).
        KeyboardInterrupt: after cancelling every task still running (finished units are already stored).
    """
    import ray

    started = _start(address, threads, log)
    try:
        check_fits(units, ctx.device, threads, ray.nodes())
        _submit_and_collect(units, ctx, records, done, bar, threads, log)
    finally:
        if started:
            ray.shutdown()


def _submit_and_collect(units: list[Unit], ctx: RunContext, records: list[dict[str, Any]],
                        done: Callable[[Unit, UnitResult], None], bar: Any, threads: int,
                        log: Callable[[str], None]) -> None:
    """Submit one task per unit, then store results in finishing order (see `run_on_ray`)."""
    import ray

    task = ray.remote(max_calls=0)(run_unit_task)  # reuse workers, GPU ones too (see the module docstring)
    worker_ctx = ctx.fresh()
    worker_ctx.progress = False  # bars of many workers would interleave in the driver's terminal
    worker_ctx.results = ResultsDir(Path(ctx.results.root).resolve())  # a worker's cwd is not the driver's
    pending: dict[Any, Unit] = {}
    workers: set[str] = set()
    try:
        for unit in units:
            opts = {**unit_resources(unit, ctx.device, threads), "max_retries": MAX_RETRIES,
                    "retry_exceptions": False, "name": f"nin_bench {unit.label}"}
            pending[task.options(**opts).remote(unit, worker_ctx, unit_records(records, unit),
                                                threads)] = unit
        stopped = False  # a task stopped by the time budget (its unit resumes on the next run)
        while pending:
            bar.set_postfix_str(f"{len(pending)} tasks queued or running")
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                unit = pending.pop(ref)
                result = _result(ref, unit, ctx, workers)
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
    if workers:
        nodes = len({w.split("/")[0] for w in workers})
        log(f"ray: {len(units)} units ran in {len(workers)} worker processes on {nodes} nodes")


def _result(ref: Any, unit: Unit, ctx: RunContext, workers: set[str]) -> UnitResult | None:
    """A finished task's result (its worker added to `workers`), its unit's error record when Ray could not run
    it, or None when the run's time budget stopped it (it resumes on the next run)."""
    import ray

    try:
        result, worker = ray.get(ref)
        workers.add(worker)
        return result
    except ray.exceptions.RayTaskError as exc:
        cause = exc.as_instanceof_cause()
        if isinstance(cause, DeadlineReached):
            return None
        if isinstance(cause, DataError):
            line = str(cause).splitlines()[-1]  # Ray prefixes the class path: "nin_bench...DataError: <message>"
            raise DataError(line.split("DataError: ", 1)[-1]) from None
        return failed_unit(unit, ctx, cause)
    except ray.exceptions.RayError as exc:  # worker or node lost after every retry
        return failed_unit(unit, ctx, exc)
