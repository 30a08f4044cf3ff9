"""summary.csv: one row per variant; timing at the reference batch (else the largest successful one) in the
first listed setting; accuracy averaged over seeds; missing stages leave empty columns."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nin_bench.report.summary import build_summary, write_summary

REQUIRED = ["variant", "preset", "n_1x1", "head", "dropout", "width", "batchnorm", "dataset", "in_channels",
            "input_size", "params", "macs", "flops_fwd", "flops_fwd_bwd", "device", "dtype", "batch_size",
            "fwd_img_per_s", "fwd_ms_median", "train_img_per_s", "train_ms_median", "mfu_train", "mfu_fwd",
            "test_acc", "test_acc_std", "n_seeds", "train_time_s", "loop_efficiency", "protocol", "status"]


def base(variant: str, stage: str, **kw: object) -> dict:
    """A record with the common keys."""
    return {"variant": variant, "stage": stage, "status": "ok", "error": None, "protocol": "cpu", "device": "cpu",
            "preset": "nin_cifar", "n_1x1": 2, "head": "gap", "dropout": 0.5, "width": 1.0, "batchnorm": False,
            "dataset": "cifar10", "in_channels": 3, "input_size": 32, "num_classes": 10, **kw}


def timing(variant: str, mode: str, bs: int, ips: float, dtype: str = "fp32", status: str = "ok") -> dict:
    """A timing record (img/s given; ms derived; mfu = img/s / 1e5)."""
    return base(variant, "timing", mode=mode, batch_size=bs, dtype=dtype, channels_last=False, compile=False,
                img_per_s=ips if status == "ok" else None, ms_median=1000 * bs / ips, mfu=ips / 1e5,
                status=status, error=None if status == "ok" else "CUDA out of memory")


def records() -> list[dict]:
    """Two variants: A has every stage (fp32 listed before bf16); B's batch 128 failed and one seed diverged."""
    out = [base("A", "profile", params=966986, macs=222486528, flops_fwd=444973056, flops_fwd_bwd=1334919168)]
    for dtype, scale in (("fp32", 1.0), ("bf16", 3.0)):
        for bs in (32, 128, 256):
            out += [timing("A", "forward", bs, scale * 10 * bs, dtype),
                    timing("A", "train_step", bs, scale * bs, dtype)]
    for seed, acc in zip((0, 1, 2), (0.81, 0.83, 0.86)):
        out.append(base("A", "train", seed=seed, test_acc=acc, train_time_s=100.0 + seed, loop_efficiency=0.8))
    out.append(base("B", "profile", n_1x1=0, params=700000, macs=150000000, flops_fwd=3e8, flops_fwd_bwd=9e8))
    out += [timing("B", "forward", 32, 500.0), timing("B", "forward", 64, 600.0),
            timing("B", "forward", 128, 700.0, status="error"), timing("B", "train_step", 64, 60.0)]
    out.append(base("B", "train", n_1x1=0, seed=0, test_acc=0.7, train_time_s=90.0, loop_efficiency=0.9))
    out.append(base("B", "train", n_1x1=0, seed=1, test_acc=None, status="diverged", error="loss is nan",
                    diverged_epoch=3))
    return out


def test_columns_and_reference_batch() -> None:
    s = build_summary(records(), reference_batch_size=128).set_index("variant")
    assert set(REQUIRED) <= set(s.reset_index().columns) and list(s.index) == ["A", "B"]
    a, b = s.loc["A"], s.loc["B"]
    # A: the reference batch, first listed dtype (fp32, not the faster bf16)
    assert (a["batch_size"], a["dtype"], a["fwd_img_per_s"], a["train_img_per_s"]) == (128, "fp32", 1280.0, 128.0)
    assert a["fwd_ms_median"] == pytest.approx(100.0) and a["mfu_train"] == pytest.approx(128 / 1e5)
    assert a["mfu_fwd"] == pytest.approx(1280 / 1e5) and a["params"] == 966986 and a["macs"] == 222486528
    # B: batch 128 failed -> the largest successful batch per mode
    assert (b["fwd_batch_size"], b["fwd_img_per_s"], b["train_batch_size"], b["batch_size"]) == (64, 600.0, 64, 64)


def test_largest_batch_without_reference() -> None:
    s = build_summary(records()).set_index("variant")
    assert s.loc["A", "batch_size"] == 256 and s.loc["A", "fwd_img_per_s"] == 2560.0


def test_accuracy_mean_over_seeds_and_status() -> None:
    s = build_summary(records(), reference_batch_size=128).set_index("variant")
    acc = np.array([0.81, 0.83, 0.86])
    assert s.loc["A", "test_acc"] == pytest.approx(acc.mean(), abs=1e-15)
    assert s.loc["A", "test_acc_std"] == pytest.approx(acc.std(ddof=1), rel=1e-12)
    assert (s.loc["A", "n_seeds"], s.loc["A", "train_time_s"]) == (3, 101.0)
    assert s.loc["A", "loop_efficiency"] == pytest.approx(0.8, rel=1e-15)
    assert s.loc["A", "status"] == "ok" and s.loc["A", "protocol"] == "cpu"
    # B: the diverged seed is out of the mean; both failures are named with where they happened
    assert (s.loc["B", "test_acc"], s.loc["B", "n_seeds"]) == (0.7, 1) and pd.isna(s.loc["B", "test_acc_std"])
    assert s.loc["B", "status"] == ("error (timing forward bs 128 fp32): CUDA out of memory; "
                                    "diverged (train seed 1 epoch 3): loss is nan")


def test_missing_stages_leave_empty_columns() -> None:
    s = build_summary([r for r in records() if r["stage"] == "profile"])
    assert set(REQUIRED) <= set(s.columns)
    assert s[["fwd_img_per_s", "train_img_per_s", "test_acc", "batch_size", "dtype"]].isna().all().all()
    assert list(s["params"]) == [966986, 700000]


def test_write_summary_full_precision(tmp_path: Path) -> None:
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    (tmp_path / "config.resolved.yaml").write_text(yaml.safe_dump({"timing": {"reference_batch_size": 32}}))
    df = pd.read_csv(write_summary(tmp_path)).set_index("variant")
    assert df.loc["A", "batch_size"] == 32 and df.loc["A", "fwd_img_per_s"] == 320.0
    assert df.loc["A", "test_acc"] == np.mean([0.81, 0.83, 0.86])  # exact: repr round-trips
    assert df.loc["A", "params"] == 966986 and "966986.0" not in (tmp_path / "summary.csv").read_text()


def test_write_summary_keeps_the_latest_record_of_a_retried_unit(tmp_path: Path) -> None:
    recs = records()
    retry = base("B", "train", n_1x1=0, seed=1, test_acc=0.72, train_time_s=91.0, loop_efficiency=0.9)
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*recs, retry]))
    df = pd.read_csv(write_summary(tmp_path)).set_index("variant")
    assert (df.loc["B", "n_seeds"], df.loc["B", "test_acc"]) == (2, np.mean([0.7, 0.72]))
    assert "diverged" not in df.loc["B", "status"]
