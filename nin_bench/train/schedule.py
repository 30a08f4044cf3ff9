"""Learning-rate schedules as a per-iteration multiplier of the peak lr (stepped once per optimizer step).

A pure function of the step index keeps the schedule stateless apart from LambdaLR's step counter, so a resumed run
follows exactly the same curve as an uninterrupted one.
"""
from __future__ import annotations

import math
from typing import Any

import torch

ONECYCLE_START_DIV = 25.0  # torch OneCycleLR's div_factor: start at peak / 25
ONECYCLE_END_DIV = 1e4  # torch OneCycleLR's final_div_factor: end at start / 1e4
ONECYCLE_RISE = 0.3  # torch OneCycleLR's pct_start, used when warmup_epochs is 0


def lr_factor(step: int, total: int, settings: Any, steps_per_epoch: int) -> float:
    """The lr multiplier (of `settings.lr`) for 0-based optimizer step `step` of `total`.

    - "onecycle": linear rise from peak/25 to peak over `warmup_epochs` (or the first 30 % of steps when 0), then
      cosine annealing to peak/25/1e4 at the last step (torch OneCycleLR's lr curve, without momentum cycling).
    - "cosine": optional linear warm-up, then cosine from peak to 0 at `total`.
    - "step": optional linear warm-up, then peak * gamma^k after k of `step_milestones` (fractions of training;
      the paper divides by 10 twice).
    Warm-up for cosine/step rises linearly as (step + 1) / warmup_steps, so the first step is never at lr 0.

    Args:
        step: 0-based optimizer step.
        total: total optimizer steps of the run.
        settings: TrainSettings-like (schedule, warmup_epochs, step_milestones, step_gamma).
        steps_per_epoch: optimizer steps per epoch (converts warm-up epochs to steps).

    Returns:
        The multiplier.
    """
    warm = min(total, round(settings.warmup_epochs * steps_per_epoch))
    if settings.schedule == "onecycle":
        rise = max(1, warm if warm > 0 else round(ONECYCLE_RISE * total))
        start = 1.0 / ONECYCLE_START_DIV
        if step < rise:
            return start + (1.0 - start) * step / rise
        end = start / ONECYCLE_END_DIV
        frac = (step - rise) / max(1, total - 1 - rise)
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    if step < warm:
        return (step + 1) / warm
    if settings.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
    if settings.schedule == "step":
        passed = sum(step >= round(m * total) for m in settings.step_milestones)
        return settings.step_gamma ** passed
    raise ValueError(f"schedule {settings.schedule!r}: expected 'onecycle', 'cosine' or 'step'")


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: Any, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `lr_factor`, to be stepped after every optimizer step.

    Args:
        optimizer: its param groups' initial lr must be the peak lr (`settings.lr`).
        settings: TrainSettings-like (epochs plus the fields `lr_factor` reads).
        steps_per_epoch: optimizer steps per epoch.

    Returns:
        The scheduler (its state_dict holds the step counter, for checkpoints).
    """
    total = settings.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, settings, steps_per_epoch)
    )
