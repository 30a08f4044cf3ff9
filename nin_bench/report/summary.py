"""`summary.csv`: one row per variant, joining its profile, timing (at the reference batch) and training records.

No torch here: the summary is built from the stored records only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import latest_per_key

# Training settings a grid may sweep (`train.lr`, `train.epochs`): a variant's value is its training record's (an
# epoch record's `lr` is the scheduled lr of that epoch, the final record's the peak lr the suite set).
TRAIN_AXES = ["lr", "epochs"]
AXES = ["preset", "n_1x1", "head", "dropout", "head_dropout", "width", "batchnorm", "dataset", "in_channels", "input_size",
        "num_classes", *TRAIN_AXES]
PROFILE_COLS = ["params", "macs", "flops_fwd", "flops_fwd_bwd"]
TIMING_COLS = ["device", "dtype", "channels_last", "compile", "batch_size", "fwd_batch_size", "fwd_img_per_s",
               "fwd_ms_median", "mfu_fwd", "train_batch_size", "train_img_per_s", "train_ms_median", "mfu_train"]
TRAIN_COLS = ["test_acc", "test_acc_std", "n_seeds", "train_time_s", "loop_efficiency"]
COLUMNS = ["variant", *AXES, *PROFILE_COLS, *TIMING_COLS, *TRAIN_COLS, "protocol", "status"]
INT_COLS = ["n_1x1", "in_channels", "input_size", "num_classes", *PROFILE_COLS, "batch_size", "fwd_batch_size",
            "train_batch_size", "n_seeds"]
TIMING_KEYS = ("dtype", "channels_last", "compile")
MODE_PREFIX = {"forward": "fwd", "train_step": "train"}


def _first_setting(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The first (dtype, channels_last, compile) setting in record order: the runner writes them as listed."""
    return {k: rows[0].get(k) for k in TIMING_KEYS} if rows else {}


def select_timing(rows: list[dict[str, Any]], mode: str, reference_batch_size: int | None,
                  setting: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Pick the timing row of one variant and mode that the summary reports.

    Args:
        rows: the variant's timing records (any status).
        mode: "forward" or "train_step".
        reference_batch_size: preferred batch size; None means the largest successful one.
        setting: dtype / channels_last / compile to use; None means the first setting in record order.

    Returns:
        The successful row at the reference batch size, else the successful row with the largest batch size,
        else None.
    """
    setting = setting or _first_setting(rows)
    ok = [r for r in rows if r.get("mode") == mode and r.get("status") == "ok"
          and all(r.get(k) == v for k, v in setting.items())]
    if not ok:
        return None
    exact = [r for r in ok if r.get("batch_size") == reference_batch_size]
    return exact[0] if exact else max(ok, key=lambda r: r.get("batch_size") or 0)


def _timing_fields(rows: list[dict[str, Any]], reference_batch_size: int | None) -> dict[str, Any]:
    """Flatten the chosen forward and train-step rows into `fwd_*` / `train_*` summary fields."""
    setting = _first_setting(rows)
    out: dict[str, Any] = {k: setting.get(k) for k in TIMING_KEYS}
    for mode, pre in MODE_PREFIX.items():
        row = select_timing(rows, mode, reference_batch_size, setting) or {}
        out[f"{pre}_batch_size"] = row.get("batch_size")
        out[f"{pre}_img_per_s"] = row.get("img_per_s")
        out[f"{pre}_ms_median"] = row.get("ms_median")
        out[f"mfu_{pre}"] = row.get("mfu")
    # One batch size for the row: the train step's (the headline number), the forward's when it alone ran.
    out["batch_size"] = out["train_batch_size"] if out["train_batch_size"] is not None else out["fwd_batch_size"]
    return out


def _train_fields(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregate a variant's successful per-seed train records: mean (and std, ddof=1) over seeds."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("test_acc") is not None]
    if not ok:
        return {"test_acc": None, "test_acc_std": None, "n_seeds": 0 if rows else None, "train_time_s": None,
                "loop_efficiency": None}
    acc = np.array([r["test_acc"] for r in ok], dtype=float)

    def mean_of(key: str) -> float | None:
        vals = [r[key] for r in ok if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    return {"test_acc": float(acc.mean()), "test_acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
            "n_seeds": len(ok), "train_time_s": mean_of("train_time_s"),
            "loop_efficiency": mean_of("loop_efficiency")}


def failure_text(rows: list[dict[str, Any]]) -> str:
    """Describe a variant's failed records, e.g. "error (timing forward bs 1024): OOM"; "ok" if none failed.

    Args:
        rows: all records of one variant.

    Returns:
        "ok", or the distinct failures joined by "; ".
    """
    msgs: list[str] = []
    for r in rows:
        if r.get("status", "ok") == "ok":
            continue
        where = [r.get("stage", "?")]
        if r.get("stage") in ("timing", "timing_round"):
            where += [str(r.get("mode", "")), f"bs {r.get('batch_size')}", str(r.get("dtype", ""))]
        if r.get("seed") is not None:
            where.append(f"seed {r['seed']}")
        if r.get("diverged_epoch") is not None:
            where.append(f"epoch {r['diverged_epoch']}")
        text = f"{r['status']} ({' '.join(w for w in where if w)})"
        if r.get("error"):
            text += f": {r['error']}"
        if text not in msgs:
            msgs.append(text)
    return "; ".join(msgs) if msgs else "ok"


def _variant_row(variant: str, rows: list[dict[str, Any]], reference_batch_size: int | None) -> dict[str, Any]:
    """Build one summary row from all records of one variant."""
    by_stage: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_stage.setdefault(r.get("stage", ""), []).append(r)
    row: dict[str, Any] = {"variant": variant}
    row.update({k: rows[0].get(k) for k in AXES if k not in TRAIN_AXES})
    final = next((r for r in by_stage.get("train", []) if r.get("status") == "ok"), {})
    row.update({k: final.get(k) for k in TRAIN_AXES})
    prof = next((r for r in by_stage.get("profile", []) if r.get("status") == "ok"), {})
    row.update({k: prof.get(k) for k in PROFILE_COLS})
    row.update(_timing_fields(by_stage.get("timing", []), reference_batch_size))
    row["device"] = rows[0].get("device")
    row.update(_train_fields(by_stage.get("train", [])))
    row["protocol"] = rows[0].get("protocol")
    row["status"] = failure_text(rows)
    return row


def build_summary(records: list[dict[str, Any]], reference_batch_size: int | None = None) -> pd.DataFrame:
    """One row per variant (in order of first appearance) joining profile, timing and training.

    Args:
        records: flat records, one per measurement (`nin_bench.store.records.latest_per_key` of the file: a re-run's
            later record replaces the earlier one).
        reference_batch_size: batch size whose timing is reported; if a variant lacks a successful row there,
            its largest successful batch size is used (and named in `fwd_batch_size` / `train_batch_size`).

    Returns:
        DataFrame with the columns of `COLUMNS`; stages that did not run leave their columns empty (NaN/None).
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("variant") is not None:
            grouped.setdefault(r["variant"], []).append(r)
    rows = [_variant_row(v, rs, reference_batch_size) for v, rs in grouped.items()]
    df = pd.DataFrame(rows, columns=COLUMNS)
    for col in INT_COLS:  # nullable ints: a missing stage must not turn counts into floats ("966986.0")
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df


def write_summary(results_dir: Path | ResultsDir) -> Path:
    """Write `summary.csv` (full precision) from a results folder's records and resolved config.

    Args:
        results_dir: folder holding `records.jsonl` and `config.resolved.yaml`.

    Returns:
        Path of the written `summary.csv`.
    """
    out = results_dir if isinstance(results_dir, ResultsDir) else ResultsDir(results_dir)
    ref = (out.read_config().get("timing") or {}).get("reference_batch_size")
    df = build_summary(latest_per_key(out.read_records()), reference_batch_size=ref)
    # pandas writes floats with repr (shortest round-trip): the CSV keeps full precision.
    out.write(out.summary, df.to_csv(index=False))
    return out.summary
