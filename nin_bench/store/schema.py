"""The record schema: the kinds of record a results folder holds, the stages that make them, and their keys.

One owner for names that producers (stages, timing, layer timing, training) and consumers (records, summary, the
report) both use. A record is a flat JSON object; its `stage` is its kind. The README's key table is checked
against `KEYS` by the tests, and so is every record a real run writes. No torch, no file I/O.
"""
from __future__ import annotations

from typing import Any

# The units of a suite, in the order they run (a suite's `stages` list takes these values).
STAGES = ("profile", "timing", "train")
# Extra record kinds and the stage whose unit makes them: a unit is recorded once its main record is in.
UNIT_OF_KIND = {"train_epoch": "train", "layer_timing": "timing", "timing_round": "timing"}
# The record kinds that measure this machine's speed: a folder continued on another machine of its kind (another
# CPU model) measures these again, while its training and profile (count) records stand (`runner.prepare_out_dir`).
SPEED_KINDS = ("timing", "timing_round", "layer_timing")
# Every value a record's `stage` can take, in the order the report reads them.
RECORD_KINDS = ("profile", "timing", "timing_round", "layer_timing", "train_epoch", "train")

# The columns every record carries: the variant's axes and the shape its model sees ...
VARIANT_COLUMNS = ("variant", "preset", "n_1x1", "head", "dropout", "head_dropout", "width", "batchnorm", "fc_hidden",
                   "init", "dataset", "in_channels", "input_size", "num_classes")
# ... and what ran it and how it ended.
RUN_COLUMNS = ("stage", "status", "error", "protocol", "device", "device_name")
SHARED_COLUMNS = VARIANT_COLUMNS + RUN_COLUMNS

# What tells two timing rows of one variant apart, and the part of it a layer-timing row shares.
SETTING_KEYS = ("mode", "batch_size", "dtype", "channels_last", "compile")
LAYER_SETTING_KEYS = ("batch_size", "dtype", "channels_last")
# A timing_round row's round (0-based): rows of one (setting, round) in one folder were measured back to back.
ROUND_KEY = "round"
LAYER_KEY = "layer"  # a layer-timing row's leaf module ("rest" for the time in no layer)
REST_LAYER = "rest"

# Leaf-module kinds of a layer-timing row, in the order a reader meets them in a block ("rest": no layer).
LAYER_KINDS = ("conv_kxk", "conv_1x1", "batchnorm", "relu", "maxpool", "avgpool", "dropout", "gap", "flatten",
               "linear", REST_LAYER)

# `reused_from` (train_epoch, train): the results folder a copied training unit was trained in (`run.reuse`).
# The measured keys of each kind (besides SHARED_COLUMNS), as the README's table lists them; `<x>` stands for a
# family of keys (a block name, a percentage).
KEYS: dict[str, tuple[str, ...]] = {
    "profile": ("params", "params_trainable", "macs", "flops_fwd", "flops_fwd_bwd", "counts_agree",
                "params_<block>", "macs_<block>", "macs_excluded_ops", "unsupported_ops", "macs_counter",
                "flops_counter"),
    "timing": SETTING_KEYS + (
        "ms_median", "ms_iqr", "ms_p25", "ms_p75", "ms_min", "img_per_s", "peak_mem_mb", "peak_mem_method",
        "compile_s", "compiled_graphs", "graph_breaks", "flops_per_img", "achieved_tflops", "peak_tflops", "mfu",
        "peak_source", "datasheet_tflops", "mfu_datasheet", "threads", "warmup", "repeats", "cudnn_benchmark",
        "fp32_conv_precision", "error_kind", "rounds", "round_seed", "round_ms_min", "round_ms_max",
        "round_spread_pct"),
    "timing_round": SETTING_KEYS + (
        ROUND_KEY, "round_pos", "round_seed", "ms_median", "img_per_s", "repeats", "threads"),
    "layer_timing": LAYER_SETTING_KEYS + (
        LAYER_KEY, "block", "kind", "fwd_ms", "fwd_train_ms", "bwd_ms", "macs", "macs_batch", "flops", "bytes",
        "intensity", "bound", "roofline_ms", "attained", "peak_tflops", "peak_source", "datasheet_tflops",
        "mem_gb_per_s", "timing_fwd_ms", "e2e_fwd_ms", "e2e_train_fwd_ms", "e2e_train_step_ms", "idle_fwd_ms",
        "idle_train_step_ms", "note", "error_kind"),
    "train_epoch": ("seed", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "train_eval_loss",
                    "train_eval_acc", "lr", "epoch_time_s", "img_per_s", "reused_from"),
    "train": ("seed", "test_acc", "test_loss", "best_val_acc", "train_time_s", "time_to_acc_<pct>_s",
              "loop_img_per_s", "timing_train_img_per_s", "loop_efficiency", "diverged_epoch", "warmup_s",
              "compile_s", "compiled_graphs", "graph_breaks", "late_graphs", "grad_scaler", "cudnn_benchmark",
              "deterministic", "bit_reproducible", "data_source", "data_sha256", "maps_file", "preds_file", "augment",
              "batch_size", "compile", "dtype", "epochs", "train_size", "val_size", "test_size", "train_eval_size",
              "reused_from"),
}


def key_allowed(kind: str, key: str) -> bool:
    """Whether `key` belongs to a record of `kind` (a shared column, or one of `KEYS[kind]`, families included)."""
    if key in SHARED_COLUMNS:
        return True
    for known in KEYS.get(kind, ()):
        head, _, tail = known.partition("<")
        if known == key or (tail and key.startswith(head) and key.endswith(tail.partition(">")[2])):
            return True
    return False


def upgrade_record(record: dict[str, Any]) -> dict[str, Any]:
    """A record written by an earlier version, in today's keys (the same dict when nothing is missing).

    `head_dropout` (before it existed `dropout` switched the trunk's and the FC head's dropout together): an FC
    head's is its `dropout`, a GAP head's 0.0 (it has no dropout layer), placed after `dropout` as today's
    records have it. A record with no `head` (none is written so) is left as it is.
    """
    if "head_dropout" in record or "head" not in record:
        return record
    head_p = 0.0 if record["head"] == "gap" else record.get("dropout")
    out: dict[str, Any] = {}
    for key, value in record.items():
        out[key] = value
        if key == "dropout":
            out["head_dropout"] = head_p
    out.setdefault("head_dropout", head_p)
    return out


def error_record(base: dict[str, Any], error: str, seed: int | None = None) -> dict[str, Any]:
    """The record of a unit that failed as a whole: its shared columns, `status: error` and the error text.

    Args:
        base: the unit's shared columns (`status` and `error` are replaced).
        error: one line (`records.error_text`).
        seed: the training seed, for a training unit.
    """
    row = {**base, "status": "error", "error": error}
    return row if seed is None else {**row, "seed": seed}
