"""Wall time of one seeds-heavy CPU suite under the local executor and under Ray, and their ratio.

The suite trains one `one_by_one` variant (its CPU protocol model: width 0.25, BatchNorm) over several seeds on a
Fashion-MNIST subset, training stage only. The local executor runs the seeds one after another with all cores
(`threads` = the core count); Ray runs one seed per core, each with one thread, side by side. Both write
their own temporary results folder and must give the same number of finished runs. The ratio is printed, never
asserted (the machine is shared and noisy): on 2 cores expect a little over 1x, not 2x.

Usage (data root from env NIN_BENCH_DATA):
    NIN_BENCH_DATA=../shared/data python scripts/bench_ray_vs_local.py [--seeds 4] [--epochs 1] [--subset 8000]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from nin_bench.run.runner import run_suite
from nin_bench.store.folder import ResultsDir
from nin_bench.suite.config import resolve_protocol, validate


def suite(seeds: int, epochs: int, subset: int, threads: int) -> tuple:
    """The resolved seeds-heavy suite at a given thread count per unit."""
    raw = {"name": "ray-vs-local", "seeds": list(range(seeds)), "stages": ["train"],
           "model": {"width": 0.25, "batchnorm": True}, "data": {"dataset": "fashion_mnist"},
           "grid": {"model.n_1x1": [2]}, "threads": threads,
           "train": {"epochs": epochs, "subset": subset, "val_size": 2000, "batch_size": 128, "lr": 0.4,
                     "schedule": "onecycle", "augment": "none"}}
    cfg, protocol, _ = resolve_protocol(validate(raw), cuda=False)
    return cfg, protocol


def timed(out: Path, executor: str, threads: int, args: argparse.Namespace) -> float:
    """Wall seconds of one whole run (start-up of the Ray instance included)."""
    cfg, protocol = suite(args.seeds, args.epochs, args.subset, threads)
    t0 = time.perf_counter()
    run_suite(cfg, out, protocol=protocol, progress=False, executor=executor, log=lambda m: None)
    seconds = time.perf_counter() - t0
    runs = sum(r["stage"] == "train" and r["status"] == "ok" for r in ResultsDir(out).read_records())
    assert runs == args.seeds, f"{executor}: {runs} of {args.seeds} runs finished"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--subset", type=int, default=8000)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        local = timed(Path(tmp) / "local", "local", cores, args)
        remote = timed(Path(tmp) / "ray", "ray", 1, args)
    print(f"{args.seeds} seeds x {args.epochs} epoch(s) on {args.subset} images, {cores} cores")
    print(f"local executor ({cores} threads, seeds in turn):   {local:7.1f} s")
    print(f"ray executor   ({cores} workers x 1 thread):        {remote:7.1f} s")
    print(f"local / ray wall-time ratio: {local / remote:.2f}x")


if __name__ == "__main__":
    main()
