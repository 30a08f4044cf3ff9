"""Timing fidelity check: does `time_model` agree with torch.utils.benchmark on the same work?

Times the forward pass of one model (nin_cifar at width 0.5 when `nin_bench.build_model` exists, else a small local
conv net) at one batch size and thread count, with the harness (`time_model`, mode="forward") and with
`torch.utils.benchmark.Timer(...).blocked_autorange()` (same weights, eval mode, torch.inference_mode, same fixed
input), in alternating back-to-back pairs so a drift of the shared machine's speed hits both alike. Prints each
pair's medians and ratio harness ÷ Timer, then the median of those ratios; exits 0 if it lies in [0.95, 1.05],
else 1. On a machine shared with other jobs, check the printed load average before trusting a failure.

    PYTHONPATH=. python scripts/check_timing_fidelity.py [--batch 32] [--threads N] [--rounds 7] [--device cpu]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys

import torch
import torch.utils.benchmark as benchmark
from torch import nn

from nin_bench.measure.timing import time_model
from nin_bench.models.nin import build_model
from nin_bench.runtime.device import set_threads

BAND = (0.95, 1.05)
INPUT_SHAPE = (3, 32, 32)


def build_reference_model(width: float) -> tuple[nn.Module, str]:
    """nin_cifar at `width`.

    Returns:
        (model, description).
    """
    return build_model("nin_cifar", width=width), f"nin_cifar width={width}"


def timer_median_ms(model: nn.Module, batch: int, threads: int, device: torch.device) -> float:
    """Median per-call time of model(x) by torch.utils.benchmark blocked_autorange, in ms.

    Args:
        model: the network (copied, put in eval mode on device).
        batch: batch size.
        threads: Timer's num_threads (its default is 1, which alone would make the ratio meaningless).
        device: where to run.

    Returns:
        Median time per call in milliseconds.
    """
    net = copy.deepcopy(model).to(device).eval()
    x = torch.randn(batch, *INPUT_SHAPE, generator=torch.Generator().manual_seed(0)).to(device)
    timer = benchmark.Timer(stmt="net(x)", globals={"net": net, "x": x}, num_threads=threads)
    with torch.inference_mode():
        measurement = timer.blocked_autorange(min_run_time=1.0)
    return measurement.median * 1e3


def main(argv: list[str] | None = None) -> int:
    """Run the check; returns the exit code (0 within the band, 1 outside)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="default: os.cpu_count()")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)
    device = torch.device(args.device)
    model, label = build_reference_model(args.width)
    harness, reference = [], []
    for r in range(args.rounds):
        # Alternate which goes first so a drift in the shared machine's speed does not favour one side.
        for side in (("harness", "timer") if r % 2 == 0 else ("timer", "harness")):
            if side == "harness":
                row = time_model(model, INPUT_SHAPE, mode="forward", batch_size=args.batch, device=device,
                                 warmup=5, repeats=30)
                harness.append(row["ms_median"])
            else:
                reference.append(timer_median_ms(model, args.batch, threads, device))
        print(f"round {r}: harness {harness[-1]:.3f} ms  Timer {reference[-1]:.3f} ms  "
              f"ratio {harness[-1] / reference[-1]:.3f}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    # Median of the per-round ratios: each ratio compares two measurements taken back to back, so a load spike
    # from another process moves both sides of a pair, and the median drops the pairs it split.
    ratio = statistics.median(h / t for h, t in zip(harness, reference))
    ok = BAND[0] <= ratio <= BAND[1]
    print(f"{label}, batch {args.batch}, threads {threads}, device {device}: median harness/Timer ratio "
          f"{ratio:.3f} ({'within' if ok else 'OUTSIDE'} [{BAND[0]}, {BAND[1]}]); 1-min load average {load:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
