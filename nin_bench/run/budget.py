"""How long a unit will take, so that a budgeted run (a lent GPU's one call) never starts one it cannot finish.

A training unit cut at the deadline leaves only a checkpoint, which does not travel back from a lent machine,
so a unit whose estimate exceeds the time left is skipped with one log line instead of started. The estimates
are deliberately simple and stated: recorded epoch times of the same variant when there are any, else the timing
harness's train-step throughput at the training setting, times a safety factor. A timing unit is estimated from
the same settings' rows of a variant already timed in this folder; with none recorded it is started (the deadline
is checked between its settings, and a unit cut there records nothing and runs again).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from nin_bench.run.stages import reference_train_step
from nin_bench.run.timing_stage import timing_settings
from nin_bench.run.unit import RunContext, Unit
from nin_bench.store.records import latest_per_key

# The timing harness times bare train steps on resident data; a training epoch adds augmentation, the
# validation pass and the per-epoch checkpoint. 1.25x covers that (loop_efficiency of the committed CPU runs is
# 0.8-0.95); the fixed part covers the model build, data split, test pass and GAP maps.
TRAIN_SAFETY = 1.25
TRAIN_FIXED_S = 5.0
# Each epoch also evaluates the validation images and the fixed training sample (`train_eval_size`): a forward
# pass per image, about a third of a train step's cost (the backward pass is about twice the forward).
EVAL_COST = 1 / 3
# A timing setting costs warm-up + repeats iterations plus synchronisation and a profiled layer pass: 1.5x.
TIMING_SAFETY = 1.5


@dataclass
class Tally:
    """What a budgeted run did: units finished, units skipped because they would not fit, units left unrun."""

    done: int = 0
    skipped_budget: int = 0
    left: int = 0
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Budget:
    """A run's deadline and how packed training runs share the device.

    Attributes:
        deadline: time.time() after which nothing new starts (None: no budget, nothing is ever skipped).
        slowdown: how much longer one training run takes when `pack` run side by side (pack / measured speed-up;
            1.0 when runs go one at a time).
        extra_timing: timing records from another folder (the GPU batch's timing step) to estimate training from.
    """

    deadline: float | None = None
    slowdown: float = 1.0
    extra_timing: tuple[dict[str, Any], ...] = ()

    def left_s(self) -> float | None:
        """Seconds until the deadline (None: no budget)."""
        return None if self.deadline is None else self.deadline - time.time()


def estimate_s(unit: Unit, ctx: RunContext, records: list[dict[str, Any]], budget: Budget) -> float | None:
    """Seconds `unit` is expected to take, or None when there is nothing to estimate from (it is started).

    Args:
        unit: the unit about to start.
        ctx: the run context (its data sets give the training set size).
        records: every record of the folder so far.
        budget: the run's budget (slowdown of packed training, extra timing rows).
    """
    if unit.stage == "train":
        return _train_estimate(unit, ctx, records, budget)
    if unit.stage == "timing":
        return _timing_estimate(unit, records)
    return None  # a profile unit counts on the meta device: milliseconds


def _train_estimate(unit: Unit, ctx: RunContext, records: list[dict[str, Any]], budget: Budget) -> float:
    """Recorded epoch times of this variant (any seed) x epochs, else (training images + EVAL_COST x evaluated
    images) x epochs / train-step img/s x TRAIN_SAFETY x the packing slowdown; both plus TRAIN_FIXED_S."""
    v = unit.variant
    tr = v.config.train
    epochs = [r["epoch_time_s"] for r in latest_per_key(records)
              if r.get("variant") == v.id and r.get("stage") == "train_epoch" and r.get("epoch_time_s")]
    if epochs:  # measured by the loop itself (already at the packing it ran under)
        return statistics.median(epochs) * tr.epochs + TRAIN_FIXED_S
    n = ctx.dataset(v).train_x.shape[0] - tr.val_size
    images = min(n, tr.subset) if tr.subset is not None else n
    rows = [r for r in [*records, *budget.extra_timing] if r.get("variant") == v.id and r.get("stage") == "timing"]
    img_per_s = reference_train_step(v, ctx, rows)
    evaluated = tr.val_size + min(tr.train_eval_size, images)
    return ((images + EVAL_COST * evaluated) * tr.epochs / img_per_s * TRAIN_SAFETY * budget.slowdown
            + TRAIN_FIXED_S)


def _timing_estimate(unit: Unit, records: list[dict[str, Any]]) -> float | None:
    """Sum over the unit's settings of (warm-up + repeats) x the median ms another variant recorded for
    the same setting, for each variant the unit times, x TIMING_SAFETY; None when some setting has no such row
    (nothing to go on: the unit is started)."""
    t = unit.variant.config.timing
    ms: dict[tuple, float] = {}
    for r in latest_per_key(records):
        if r.get("stage") == "timing" and r.get("status") == "ok" and r.get("ms_median"):
            key = (r["mode"], r["dtype"], r["channels_last"], r["compile"], r["batch_size"])
            ms[key] = max(ms.get(key, 0.0), r["ms_median"])  # the slowest variant seen: n_1x1 differ
    total = 0.0
    for s in timing_settings(t):
        key = (s["mode"], s["dtype"], s["channels_last"], s["compile"], s["batch_size"])
        if key not in ms:
            return None
        total += (t.warmup * ms[key] + max(t.repeats * ms[key], t.rounds * t.min_window_ms)) / 1e3
    return total * len(unit.variants) * TIMING_SAFETY


def fits(unit: Unit, ctx: RunContext, records: list[dict[str, Any]], budget: Budget) -> tuple[bool, str]:
    """Whether `unit` can finish before the deadline, and the one-line reason when it cannot.

    Returns:
        (True, "") with no budget or no estimate; (False, reason) when the estimate exceeds the time left.
    """
    left = budget.left_s()
    if left is None:
        return True, ""
    est = estimate_s(unit, ctx, records, budget)
    if est is None or est <= left:
        return True, ""
    return False, f"estimated {est:.0f} s, {max(left, 0):.0f} s left"
