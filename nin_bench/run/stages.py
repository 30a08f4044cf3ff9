"""The stages that turn one unit into flat records: profile, timing (`timing_stage`) and training.

`run_unit` runs one unit and never raises for a failure inside the sweep: the failure becomes an error record
(STYLE 11). Each stage depends only on its arguments and the `RunContext` (no module state), so a unit runs the
same in this process or in a Ray worker.
"""
from __future__ import annotations

from typing import Any

import torch

from nin_bench.data.datasets import DataError
from nin_bench.measure.counts import profile_model
from nin_bench.measure.timing import time_model
from nin_bench.models.build import build_variant_model
from nin_bench.run.timing_stage import run_timing
from nin_bench.run.unit import (
    DeadlineReached,
    RunContext,
    Unit,
    UnitResult,
    base_record,
)
from nin_bench.runtime.train_step import resolve_dtype
from nin_bench.store.records import error_text
from nin_bench.store.schema import error_record
from nin_bench.suite.variants import Variant

# A quick timing of the training step, for loop_efficiency when the timing stage did not measure that setting.
_EFFICIENCY_WARMUP, _EFFICIENCY_REPEATS = 3, 10


def run_unit(unit: Unit, ctx: RunContext, known: list[dict[str, Any]]) -> UnitResult:
    """Run one unit; a failure becomes an error record so the sweep goes on.

    Args:
        unit: what to run.
        ctx: the run context.
        known: the successful records of the unit's variants so far (a profile gives timing its FLOPs; timing rows give
            training its reference throughput). Missing ones are measured here.

    Raises:
        DataError: the data set is missing or corrupt (user input: stop the run, not once per unit).
    """
    try:
        if unit.stage == "profile":
            return UnitResult(run_profile(unit.variant, ctx))
        if unit.stage == "timing":
            return UnitResult(run_timing(list(unit.variants), ctx, _flops(unit.variants, ctx, known)))
        return run_train(unit.variant, unit.seed, ctx, [r for r in known if r["stage"] == "timing"])
    except (KeyboardInterrupt, SystemExit, DataError, DeadlineReached):
        raise
    except Exception as exc:  # recorded with its error; the sweep goes on (STYLE 11)
        return failed_unit(unit, ctx, exc)


def _flops(variants: tuple[Variant, ...], ctx: RunContext, known: list[dict[str, Any]]) -> dict[str, dict]:
    """FLOPs per image of each variant for MFU: from its profile record, else counted here (milliseconds, not
    recorded). Returns variant id -> {"forward": FLOPs, "train_step": fwd+bwd FLOPs}."""
    out = {}
    for v in variants:
        prof = next((r for r in known if r["stage"] == "profile" and r["variant"] == v.id), None)
        prof = prof or run_profile(v, ctx)[0]
        out[v.id] = {"forward": prof["flops_fwd"], "train_step": prof["flops_fwd_bwd"]}
    return out


def failed_unit(unit: Unit, ctx: RunContext, exc: BaseException) -> UnitResult:
    """The error records of a unit that failed as a whole (inside the unit, or its Ray task given up on): one
    per variant it measures."""
    return UnitResult([error_record(base_record(v, ctx, unit.stage), error_text(exc), unit.seed)
                       for v in unit.variants])


def run_profile(variant: Variant, ctx: RunContext) -> list[dict[str, Any]]:
    """Params, MACs and FLOPs of the variant at batch 1."""
    shape = ctx.shape(variant)
    model = build_variant_model(variant, shape)
    return [{**base_record(variant, ctx, "profile"), **profile_model(model, shape.input_shape)}]


def reference_train_step(variant: Variant, ctx: RunContext, timing_rows: list[dict[str, Any]]) -> float:
    """The timing harness's train-step img/s for the training setting (batch, dtype, layout, compile).

    Taken from the timing stage's records when it measured that setting, else measured here once per variant.
    """
    tr = variant.config.train
    want = {"mode": "train_step", "batch_size": tr.batch_size, "dtype": resolve_dtype(tr.dtype, ctx.device),
            "channels_last": tr.channels_last, "compile": tr.compile}
    for r in timing_rows:
        if r.get("status") == "ok" and all(r.get(k) == v for k, v in want.items()):
            return r["img_per_s"]
    key = (variant.id, *want.values())
    if key not in ctx.train_step_img_per_s:
        shape = ctx.shape(variant)
        res = time_model(build_variant_model(variant, shape), shape.input_shape, device=torch.device(ctx.device),
                         warmup=_EFFICIENCY_WARMUP, repeats=_EFFICIENCY_REPEATS, num_classes=shape.num_classes,
                         **want)
        ctx.train_step_img_per_s[key] = res["img_per_s"]
    return ctx.train_step_img_per_s[key]


def run_train(variant: Variant, seed: int, ctx: RunContext, timing_rows: list[dict[str, Any]]) -> UnitResult:
    """Train one (variant, seed), resuming from its checkpoint; per-epoch rows plus one final row.

    Args:
        variant: the grid point.
        seed: seeds the model's init here, and the data order and augmentation inside the loop.
        ctx: the run context.
        timing_rows: this variant's timing records (for loop_efficiency).

    Returns:
        The records, and the GAP maps and test-set predictions for the runner to store beside them.
    """
    from nin_bench.train.loop import (
        train_model,  # the heaviest stage; imported only when training runs
    )

    data = ctx.dataset(variant)
    shape = ctx.shape(variant)
    name = f"{variant.id}-seed{seed}"
    ckpt = ctx.results.checkpoint(variant.id, seed)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = build_variant_model(variant, shape)
    # the deadline is checked after each epoch's checkpoint: a budgeted run stops there and resumes from it
    result = train_model(model, data, variant.config.train, device=torch.device(ctx.device), seed=seed,
                         input_size=shape.side, checkpoint_path=ckpt, progress=ctx.progress,
                         on_epoch=lambda _row: ctx.check_deadline())
    base = {**base_record(variant, ctx, "train"), "seed": seed}
    rows = [{**base, "stage": "train_epoch", **e} for e in result.epochs]  # see schema.UNIT_OF_KIND
    maps_name = ctx.results.map_name(name) if result.maps is not None else None
    preds_name = ctx.results.preds_name(name) if result.preds is not None else None
    final = {**base, **result.final, "status": result.final.get("status", "ok"),
             "data_source": data.source, "data_sha256": data.source_sha256,
             "dtype": resolve_dtype(variant.config.train.dtype, ctx.device), "maps_file": maps_name,
             "preds_file": preds_name}
    reference = reference_train_step(variant, ctx, timing_rows)
    final["timing_train_img_per_s"] = reference
    final["loop_efficiency"] = final["loop_img_per_s"] / reference if final.get("loop_img_per_s") else None
    if final["status"] == "diverged":
        final["error"] = f"loss became non-finite in epoch {final.get('diverged_epoch')}"
    rows.append(final)
    return UnitResult(rows, result.maps, maps_name, result.preds, preds_name)
