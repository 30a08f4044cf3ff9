"""The timing stage: the variants of a timing unit measured side by side, setting by setting, in interleaved rounds.

For each setting (mode, batch, dtype, layout, compile) every variant gets its device copy, batch, compile and
warm-up once (`measure.timing.Contender`); then `timing.rounds` rounds each time every variant for one window of
`timing.repeats / timing.rounds` iterations, in an order shuffled per round from `timing.round_seed`. Whatever
the machine does
during the sweep lands on all variants of a round alike, so their per-round times pair (the report's ratio
intervals). Each round is kept in the unit's checkpoint as soon as it is measured, so a kill or the run's deadline
loses at most the round in flight; a finished setting's records are kept there too until the unit is recorded.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
from collections.abc import Callable
from typing import Any

import torch

from nin_bench.measure.ceilings import add_utilisation, roofline
from nin_bench.measure.layer_timing import time_layers
from nin_bench.measure.timing import Contender, Setting, interleave, round_windows, summarise_rounds
from nin_bench.models.build import build_variant_model
from nin_bench.run.unit import RunContext, base_record
from nin_bench.runtime.compiled import no_eager_fallback, reset_compiled
from nin_bench.runtime.device import free_device_memory, is_oom
from nin_bench.store.records import error_text
from nin_bench.store.schema import LAYER_SETTING_KEYS, SETTING_KEYS
from nin_bench.suite.variants import Variant


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


def setting_key(setting: dict[str, Any]) -> str:
    """A setting as a short stable string (checkpoint key, round-order salt): "forward/128/fp32/cl1/c0"."""
    return "/".join(str(int(v) if isinstance(v, bool) else v) for v in (setting[k] for k in SETTING_KEYS))


def group_id(variants: list[Variant]) -> str:
    """The name of a timing unit's checkpoint: a hash of its variants' ids."""
    return hashlib.sha256("\n".join(sorted(v.id for v in variants)).encode()).hexdigest()[:12]


class RoundsCheckpoint:
    """What a timing unit has measured so far: the finished settings' records and the current setting's rounds
    (per round, the order and each variant's per-iteration ms). Written atomically after every round."""

    def __init__(self, ctx: RunContext, variants: list[Variant]) -> None:
        self.ctx, self.path = ctx, ctx.results.timing_checkpoint(group_id(variants))
        state = ctx.results.read_json(self.path)
        self.finished: dict[str, list[dict[str, Any]]] = state.get("finished", {})
        self.current: str | None = state.get("current")
        self.rounds: list[dict[str, Any]] = state.get("rounds", [])

    def rounds_of(self, key: str) -> list[dict[str, Any]]:
        """The rounds already measured for setting `key` (empty unless it is the one a kill interrupted)."""
        return self.rounds if self.current == key else []

    def save_round(self, key: str, rounds: list[dict[str, Any]]) -> None:
        self.current, self.rounds = key, rounds
        self._save()

    def save_setting(self, key: str, records: list[dict[str, Any]]) -> None:
        self.finished[key], self.current, self.rounds = records, None, []
        self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"finished": self.finished, "current": self.current, "rounds": self.rounds}
        self.ctx.results.write(self.path, json.dumps(state))


def run_timing(variants: list[Variant], ctx: RunContext, flops: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Throughput of every variant over every timing setting, in interleaved rounds: one "timing" row per variant
    and setting (an error row where it fails, e.g. OOM), one "timing_round" record per variant, setting and round,
    and the per-layer time of each eager forward setting at `timing.layer_timing_batch_sizes` ("layer_timing").

    The MFU reference peaks come from the run's ceilings (measured once per run, or here on first use), outside
    the per-row error handling: a failure there fails the unit, it is not one setting's result. Layer timing
    runs right after the rounds of its forward setting.

    Args:
        variants: the grid points timed together (they share the timing settings).
        ctx: the run context.
        flops: variant id -> {"forward": FLOPs per image, "train_step": fwd+bwd FLOPs per image} for MFU.
    """
    t = variants[0].config.timing

    def flops_of(row: dict[str, Any]) -> float | None:
        return flops[row["variant"]].get(row["mode"])

    for dtype in t.dtypes:
        ctx.ceilings.peak(dtype)  # measured here when the run did not hand the ceilings in (outside row errors)
    models = {v.id: build_variant_model(v, ctx.shape(v)) for v in variants}
    checkpoint = RoundsCheckpoint(ctx, variants)
    records: list[dict[str, Any]] = []
    for setting in timing_settings(t):
        key = setting_key(setting)
        if key not in checkpoint.finished:
            # between settings and rounds, not only between units: a sweep can outlast a call's margin; what
            # was measured stays in the checkpoint and the next call goes on from there
            ctx.check_deadline()
            rows = _time_setting(variants, models, setting, ctx, checkpoint)
            add_utilisation(list(rows.values()), ctx.ceilings, flops_of)  # lifts the ceiling past any row first
            done = [*rows.values(), *_round_records(variants, rows, setting, ctx, checkpoint.rounds_of(key))]
            done += _layer_rows(variants, models, rows, setting, ctx)
            checkpoint.save_setting(key, done)
        records += checkpoint.finished[key]
    # every row of the unit against the one ceiling its last setting left (a later row may have lifted it)
    add_utilisation([r for r in records if r["stage"] == "timing"], ctx.ceilings, flops_of)
    return records


def _time_setting(variants: list[Variant], models: dict[str, torch.nn.Module], setting: dict[str, Any],
                  ctx: RunContext, checkpoint: RoundsCheckpoint) -> dict[str, dict[str, Any]]:
    """One setting's rows: prepare every variant (copy, batch, compile, warm-up), then the rounds not yet in the
    checkpoint, each saved as soon as it is measured. A variant that fails (OOM) gets an error row; the rest go on.
    """
    t = variants[0].config.timing
    key, device = setting_key(setting), torch.device(ctx.device)
    rows = {v.id: {**base_record(v, ctx, "timing"), **setting} for v in variants}
    rounds = list(checkpoint.rounds_of(key))
    contenders: dict[str, Contender] = {}
    if setting["compile"]:
        reset_compiled()  # once per setting: the contenders' compiled entries must live side by side
    compiling = no_eager_fallback(len(variants)) if setting["compile"] else contextlib.nullcontext()
    with compiling:
        for v in variants:
            shape = ctx.shape(v)
            made = _guarded(rows[v.id], device, lambda v=v, shape=shape: Contender(
                models[v.id], shape.input_shape, device, Setting(**setting), t.warmup, shape.num_classes,
                t.min_window_ms))
            if made is not None:
                contenders[v.id] = made

        def on_round(r: int, times: dict[str, list[float]], order: list[str]) -> None:
            rounds.append({"order": order, "ms": times})
            checkpoint.save_round(key, rounds)
            if r + 1 < t.rounds:
                ctx.check_deadline()

        def on_fail(vid: str, exc: BaseException) -> None:
            _fail(rows[vid], exc)
            contenders.pop(vid).close()
            free_device_memory(device)

        interleave(contenders, windows=round_windows(t.repeats, t.rounds), seed=t.round_seed, salt=key,
                   start=len(rounds), on_round=on_round, on_fail=on_fail)
    for vid, contender in contenders.items():
        times = [r["ms"][vid] for r in rounds if vid in r["ms"]]
        rows[vid].update(**contender.info, repeats=sum(len(w) for w in times), round_seed=t.round_seed,
                         **summarise_rounds(times, setting["batch_size"]))
        contender.close()
    return rows


def _round_records(variants: list[Variant], rows: dict[str, dict[str, Any]], setting: dict[str, Any],
                   ctx: RunContext, rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One "timing_round" record per variant and round of a setting: the round's median and the variant's place
    in that round's order (rounds of one setting pair across variants)."""
    t = variants[0].config.timing
    out = []
    for i, rnd in enumerate(rounds):
        for pos, vid in enumerate(rnd["order"]):
            if rows[vid]["status"] != "ok" or vid not in rnd["ms"]:
                continue
            v = next(v for v in variants if v.id == vid)
            ms = statistics.median(rnd["ms"][vid])
            out.append({**base_record(v, ctx, "timing_round"), **setting, "round": i, "round_pos": pos,
                        "round_seed": t.round_seed, "ms_median": ms,
                        "img_per_s": setting["batch_size"] / (ms / 1e3), "repeats": len(rnd["ms"][vid]),
                        "threads": rows[vid].get("threads")})
    return out


def _layer_rows(variants: list[Variant], models: dict[str, torch.nn.Module], rows: dict[str, dict[str, Any]],
                setting: dict[str, Any], ctx: RunContext) -> list[dict[str, Any]]:
    """Per-layer time of each variant at an eager forward setting of `timing.layer_timing_batch_sizes`."""
    t = variants[0].config.timing
    sizes = (t.layer_timing_batch_sizes or [t.reference_batch_size]) if t.layer_timing else []
    if setting["mode"] != "forward" or setting["compile"] or setting["batch_size"] not in sizes:
        return []
    out = []
    for v in variants:
        out += run_layer_timing(v, ctx, models[v.id], rows[v.id])
    return out


def _fail(row: dict[str, Any], exc: BaseException) -> None:
    row.update(status="error", error=error_text(exc), error_kind="oom" if is_oom(exc) else "error")


def _guarded(row: dict[str, Any], device: torch.device, make: Callable[[], Any]) -> Any:
    """make()'s result; a failure (OOM, compile error) becomes the row's error instead, and None is returned."""
    failed = False
    try:
        return make()
    except Exception as exc:  # one failing setting is recorded as such
        _fail(row, exc)
        failed = True
    finally:
        if failed:  # after the handler, so the traceback's frames no longer pin the failed setting's memory
            free_device_memory(device)
    return None


def run_layer_timing(variant: Variant, ctx: RunContext, model: torch.nn.Module,
                     fwd_row: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-layer time at the setting of a timing stage's forward row, with the roofline (under the run's ceiling
    for the row's dtype) and that row's median.

    Returns:
        "layer_timing" records (one per layer and a "rest" row), or one error row for the setting.
    """
    t = variant.config.timing
    shape = ctx.shape(variant)
    device = torch.device(ctx.device)
    setting = {k: fwd_row[k] for k in LAYER_SETTING_KEYS}
    base = {**base_record(variant, ctx, "layer_timing"), **setting,
            "timing_fwd_ms": fwd_row.get("ms_median")}  # the end-to-end forward the layers should sum to
    row = dict(base)
    layers = _guarded(row, device, lambda: roofline(
        time_layers(model, shape.input_shape, device=device, warmup=t.warmup, repeats=t.repeats,
                    num_classes=shape.num_classes, **setting), ctx.ceilings.ceiling(setting["dtype"]),
        ctx.ceilings.bandwidth()))
    if layers is None:
        return [row]  # the setting's error row
    return [{**base, **layer} for layer in layers]
