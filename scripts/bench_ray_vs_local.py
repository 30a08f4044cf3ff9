"""Wall time of one seeds-heavy CPU suite under Ray and under two plain worker processes, and their ratio.

The suite trains one `one_by_one` variant (its CPU protocol model: width 0.25, BatchNorm) over several seeds on a
Fashion-MNIST subset, training stage only. Ray (a fresh local instance per run, its start-up included) runs one
seed per core, each with one thread; the reference is the same work in plain processes: the `pool` executor with
one 1-thread worker process per core (`--local` adds the local executor: seeds in turn, all cores each).
Executors alternate within each repeat (first one, then the other, the order swapped every repeat), so drifting
load on a shared machine hits both; every run writes its own temporary results folder and must finish every seed.
The ratio (reference / ray: above 1 means Ray is faster) is printed per repeat, then its median and range; never
asserted (the machine is shared and noisy).

Usage (data root from env NIN_BENCH_DATA):
    NIN_BENCH_DATA=../shared/data python scripts/bench_ray_vs_local.py [--seeds 4] [--epochs 1] [--subset 8000]
        [--repeats 3] [--local]
"""
from __future__ import annotations

import argparse
import os
import statistics
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


def timed(out: Path, executor: str, args: argparse.Namespace, cores: int) -> float:
    """Wall seconds of one whole run (start-up of the Ray instance or of the worker processes included)."""
    threads = cores if executor == "local" else 1
    cfg, protocol = suite(args.seeds, args.epochs, args.subset, threads)
    t0 = time.perf_counter()
    run_suite(cfg, out, protocol=protocol, progress=False, executor=executor, pack=cores, log=lambda m: None)
    seconds = time.perf_counter() - t0
    runs = sum(r["stage"] == "train" and r["status"] == "ok" for r in ResultsDir(out).read_records())
    assert runs == args.seeds, f"{executor}: {runs} of {args.seeds} runs finished"
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--subset", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--local", action="store_true", help="also time the local executor")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    executors = ["pool", "ray"] + (["local"] if args.local else [])
    times: dict[str, list[float]] = {e: [] for e in executors}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for executor in executors if rep % 2 == 0 else executors[::-1]:
                times[executor].append(timed(Path(tmp) / f"{executor}{rep}", executor, args, cores))
            print(f"repeat {rep}: " + ", ".join(f"{e} {times[e][-1]:.1f} s" for e in executors), flush=True)
    print(f"{args.seeds} seeds x {args.epochs} epoch(s) on {args.subset} images, {cores} cores, "
          f"{args.repeats} repeats")
    for executor in executors:
        print(f"{executor:5s}: median {statistics.median(times[executor]):7.1f} s  "
              f"(min {min(times[executor]):.1f}, max {max(times[executor]):.1f})")
    for ref in executors[:1] + executors[2:]:
        ratios = [a / b for a, b in zip(times[ref], times["ray"])]
        print(f"{ref} / ray wall-time ratio: median {statistics.median(ratios):.2f}x "
              f"(range {min(ratios):.2f}-{max(ratios):.2f} over {len(ratios)} paired repeats)")


if __name__ == "__main__":
    main()
