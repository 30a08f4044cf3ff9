"""The units of a suite and the three stages that turn one unit into flat records.

A unit is a stage of a variant (and a seed, for training). `run_unit` runs one and never raises for a failure
inside the sweep: the failure becomes an error record (STYLE 11). Each stage depends only on its arguments and
the `RunContext` (no module state), so a unit runs the same in this process or in a Ray worker.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from nin_bench.data.datasets import DataError, Dataset, load_dataset
from nin_bench.measure.ceilings import Ceilings, roofline, utilisation
from nin_bench.measure.counts import profile_model
from nin_bench.measure.layer_timing import time_layers
from nin_bench.measure.timing import time_model
from nin_bench.models.build import build_variant_model
from nin_bench.runtime.device import free_device_memory, is_oom
from nin_bench.runtime.train_step import resolve_dtype
from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import error_text
from nin_bench.store.schema import LAYER_SETTING_KEYS, error_record
from nin_bench.suite.variants import DataShape, Variant


class DeadlineReached(Exception):
    """The run's time budget (`RunContext.deadline`) is spent: stop between units or epochs, resumably."""


# A quick timing of the training step, for loop_efficiency when the timing stage did not measure that setting.
_EFFICIENCY_WARMUP, _EFFICIENCY_REPEATS = 3, 10


@dataclass(frozen=True)
class Unit:
    """One piece of work: a stage of a variant (and a seed, for training)."""

    variant: Variant
    stage: str
    seed: int | None = None

    @property
    def label(self) -> str:
        """e.g. "nin_cifar-n1x1_2-gap-do0.5-cifar10 train s1"."""
        return f"{self.variant.id} {self.stage}" + ("" if self.seed is None else f" s{self.seed}")


@dataclass
class UnitResult:
    """What one unit produced: its records, and the GAP maps and test-set predictions of a training run (written
    by the runner)."""

    records: list[dict[str, Any]]
    maps: dict[str, Any] | None = None
    maps_name: str | None = None  # the results-folder name the final record gives the maps file
    preds: dict[str, Any] | None = None  # arrays `pred`, `label` (see `TrainResult.preds`)
    preds_name: str | None = None  # the results-folder name the final record gives them (`preds_file`)


@dataclass
class RunContext:
    """What the stages of one run share: the results folder, the device, and per-process caches."""

    results: ResultsDir
    device: str
    device_name: str
    protocol: str
    progress: bool = True
    datasets: dict[str, Dataset] = field(default_factory=dict)
    ceilings: Ceilings | None = None  # the run's measured peaks and bandwidth (None: measured on first use)
    train_step_img_per_s: dict[tuple, float] = field(default_factory=dict)
    deadline: float | None = None  # time.time() after which no new unit or epoch starts (None: no budget)

    def __post_init__(self) -> None:
        if self.ceilings is None:
            self.ceilings = Ceilings(self.device)

    def fresh(self) -> "RunContext":
        """The same run without its data caches (what a Ray task receives: nothing large is pickled); the
        ceilings travel with it, so every unit divides by the same peak."""
        return RunContext(self.results, self.device, self.device_name, self.protocol, self.progress,
                          ceilings=self.ceilings, deadline=self.deadline)

    def check_deadline(self) -> None:
        """Raise DeadlineReached once the run's time budget is spent."""
        if self.deadline is not None and time.time() >= self.deadline:
            raise DeadlineReached("the run's time budget is spent")

    def dataset(self, variant: Variant) -> Dataset:
        """Load (once per context) the variant's data set."""
        d = variant.config.data
        key = d.path if d.dataset == "imagefolder" else d.dataset
        if key not in self.datasets:
            self.datasets[key] = load_dataset(d.dataset, root=d.root, download=d.download, path=d.path)
        return self.datasets[key]

    def shape(self, variant: Variant) -> DataShape:
        """The variant's input shape and class count (an image tree is read for its own)."""
        observed = self.dataset(variant).image_shape if variant.config.data.dataset == "imagefolder" else None
        return variant.data_shape(observed)



def base_record(variant: Variant, ctx: RunContext, stage: str) -> dict[str, Any]:
    """The keys every record carries: variant axes, stage, protocol, device."""
    return {**variant.record_columns(ctx.shape(variant)), "stage": stage, "status": "ok", "error": None,
            "protocol": ctx.protocol, "device": ctx.device, "device_name": ctx.device_name}


def run_unit(unit: Unit, ctx: RunContext, known: list[dict[str, Any]]) -> UnitResult:
    """Run one unit; a failure becomes an error record so the sweep goes on.

    Args:
        unit: what to run.
        ctx: the run context.
        known: this variant's successful records so far (a profile gives timing its FLOPs; timing rows give
            training its reference throughput). Missing ones are measured here.

    Raises:
        DataError: the data set is missing or corrupt (user input: stop the run, not once per unit).
    """
    try:
        if unit.stage == "profile":
            return UnitResult(run_profile(unit.variant, ctx))
        if unit.stage == "timing":
            # FLOPs per image for MFU: from the profile record, else counted here (milliseconds, not recorded)
            prof = next((r for r in known if r["stage"] == "profile"), None) or run_profile(unit.variant, ctx)[0]
            flops = {"forward": prof["flops_fwd"], "train_step": prof["flops_fwd_bwd"]}
            return UnitResult(run_timing(unit.variant, ctx, flops))
        return run_train(unit.variant, unit.seed, ctx, [r for r in known if r["stage"] == "timing"])
    except (KeyboardInterrupt, SystemExit, DataError, DeadlineReached):
        raise
    except Exception as exc:  # recorded with its error; the sweep goes on (STYLE 11)
        return failed_unit(unit, ctx, exc)


def failed_unit(unit: Unit, ctx: RunContext, exc: BaseException) -> UnitResult:
    """The one error record of a unit that failed as a whole (inside the unit, or its Ray task given up on)."""
    return UnitResult([error_record(base_record(unit.variant, ctx, unit.stage), error_text(exc), unit.seed)])


def run_profile(variant: Variant, ctx: RunContext) -> list[dict[str, Any]]:
    """Params, MACs and FLOPs of the variant at batch 1."""
    shape = ctx.shape(variant)
    model = build_variant_model(variant, shape)
    return [{**base_record(variant, ctx, "profile"), **profile_model(model, shape.input_shape)}]


def timing_settings(t: Any) -> list[dict[str, Any]]:
    """Every (mode, dtype, channels_last, compile, batch_size) setting of a timing sweep, in record order.

    Compiled settings run at `timing.compile_batch_sizes` (None: the reference batch size when eager rows run
    too, every batch size when only compiled rows do): each compiled row pays a full compile (tens of seconds),
    and throughput across batch sizes is what the eager rows show.
    """
    if t.compile_batch_sizes is not None:
        compile_sizes = t.compile_batch_sizes
    else:  # beside eager rows, the reference batch; compiled rows alone, every batch size
        compile_sizes = [t.reference_batch_size] if False in t.compile else t.batch_sizes
    return [dict(mode=mode, dtype=dtype, channels_last=cl, compile=comp, batch_size=bs)
            for mode in t.modes for dtype in t.dtypes for cl in t.channels_last for comp in t.compile
            for bs in t.batch_sizes if not comp or bs in compile_sizes]


def run_timing(variant: Variant, ctx: RunContext, flops: dict[str, float]) -> list[dict[str, Any]]:
    """Throughput over every timing setting (one row each; an error row where a setting fails, e.g. OOM), and the
    per-layer time of each eager forward setting at `timing.layer_timing_batch_sizes` (stage "layer_timing").

    The MFU reference peaks come from the run's ceilings (measured once per run, or here on first use), outside
    the per-row error handling: a failure there fails the unit, it is not one setting's result. Layer timing runs right after the forward row of its setting,
    so the layers' sum and the end-to-end median it is compared with see the same machine state.

    Args:
        variant: the grid point.
        ctx: the run context.
        flops: {"forward": FLOPs per image, "train_step": fwd+bwd FLOPs per image} for MFU.
    """
    t = variant.config.timing
    shape = ctx.shape(variant)
    model = build_variant_model(variant, shape)
    device = torch.device(ctx.device)
    peaks = {dtype: ctx.ceilings.peak(dtype) for dtype in t.dtypes}
    layer_sizes = (t.layer_timing_batch_sizes if t.layer_timing_batch_sizes is not None
                   else [t.reference_batch_size]) if t.layer_timing else []
    rows = []
    for setting in timing_settings(t):
        # between settings, not only between units: a sweep can outlast a call's margin; a unit cut here
        # records nothing (run_unit re-raises) and runs whole on the next call
        ctx.check_deadline()
        row = {**base_record(variant, ctx, "timing"), **setting}
        rows.append(_guarded(row, device, lambda: time_model(
            model, shape.input_shape, device=device, warmup=t.warmup, repeats=t.repeats,
            num_classes=shape.num_classes, **setting)))
        if row["status"] == "ok":
            row.update(utilisation(row["img_per_s"], flops.get(setting["mode"]), peaks[setting["dtype"]]))
        if setting["mode"] == "forward" and not setting["compile"] and setting["batch_size"] in layer_sizes:
            rows += run_layer_timing(variant, ctx, model, row, peaks[setting["dtype"]])
    return rows


def _guarded(row: dict[str, Any], device: torch.device, measure: Any) -> dict[str, Any]:
    """Fill `row` from measure(); a failure (OOM, compile error) becomes the row's error and the sweep goes on."""
    failed = False
    try:
        row.update(measure())
    except Exception as exc:  # one failing setting is recorded as such
        row.update(status="error", error=error_text(exc), error_kind="oom" if is_oom(exc) else "error")
        failed = True
    if failed:  # outside the handler, so the traceback's frames no longer pin the failed setting's memory
        free_device_memory(device)
    return row


def run_layer_timing(variant: Variant, ctx: RunContext, model: torch.nn.Module, fwd_row: dict[str, Any],
                     peak: float) -> list[dict[str, Any]]:
    """Per-layer time at the setting of a timing stage's forward row, with the roofline and that row's median.

    Returns:
        "layer_timing" records (one per layer and a "rest" row), or one error row for the setting.
    """
    t = variant.config.timing
    shape = ctx.shape(variant)
    device = torch.device(ctx.device)
    setting = {k: fwd_row[k] for k in LAYER_SETTING_KEYS}
    base = {**base_record(variant, ctx, "layer_timing"), **setting,
            "timing_fwd_ms": fwd_row.get("ms_median")}  # the end-to-end forward the layers should sum to
    outcome = _guarded(dict(base), device, lambda: {"layers": roofline(
        time_layers(model, shape.input_shape, device=device, warmup=t.warmup, repeats=t.repeats,
                    num_classes=shape.num_classes, **setting), peak, ctx.ceilings.bandwidth())})
    if outcome["status"] != "ok":
        return [outcome]  # the setting's error row
    return [{**base, **layer} for layer in outcome["layers"]]


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
