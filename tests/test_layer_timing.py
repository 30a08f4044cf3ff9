"""Per-layer time (torch.profiler attribution), bytes, FLOPs and the roofline: structure and exact arithmetic.

Times are only checked to be measured (> 0, finite); how they compare with the end-to-end forward is what the
committed reports show, not something a noisy shared machine can assert.
"""
from __future__ import annotations

import math

import pytest
import torch

from nin_bench.layer_timing import format_layer_times, layer_kind, memory_bandwidth, roofline, time_layers
from nin_bench.models import build_model
from nin_bench.profile import profile_model

SHAPE = (3, 16, 16)


def _model(**kw):
    torch.manual_seed(0)
    return build_model("nin_cifar", width=0.125, input_size=16, **{"batchnorm": True, **kw})


def _rows(model, **kw):
    return time_layers(model, SHAPE, batch_size=4, device="cpu", warmup=1, repeats=3, **kw)


@pytest.mark.parametrize("n_1x1", [0, 1, 2])
@pytest.mark.parametrize("head", ["gap", "fc"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_every_leaf_once_in_forward_order_with_its_kind(n_1x1, head, batchnorm):
    model = _model(n_1x1=n_1x1, head=head, batchnorm=batchnorm, fc_hidden=[16])
    rows = _rows(model)
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    assert [r["layer"] for r in rows] == [n for n, _ in leaves] + ["rest"]
    assert [r["kind"] for r in rows[:-1]] == [layer_kind(m) for _, m in leaves]
    kinds = {r["kind"] for r in rows}
    assert ("conv_1x1" in kinds) == (n_1x1 > 0) and ("batchnorm" in kinds) == batchnorm
    assert ("gap" in kinds) == (head == "gap") and ("linear" in kinds) == (head == "fc")
    assert sum(r["macs"] for r in rows) == profile_model(model, SHAPE)["macs"]
    for r in rows[:-1]:
        assert r["fwd_ms"] >= 0 and r["bwd_ms"] >= 0 and math.isfinite(r["fwd_train_ms"])
        assert r["block"] == ("head" if r["layer"].startswith("head.") else r["layer"].split(".")[1])
    convs = [r for r in rows if r["kind"].startswith("conv")]
    assert all(r["fwd_ms"] > 0 and r["bwd_ms"] > 0 for r in convs)  # measured, attributed to the conv


def test_bytes_flops_and_intensity_by_hand():
    rows = {r["layer"]: r for r in _rows(_model(n_1x1=2))}
    conv = rows["features.block1.conv1"]  # 3 -> 24 channels, 5x5, 16x16 maps, batch 4
    assert conv["macs"] == 24 * 3 * 25 * 16 * 16 == 460_800 and conv["macs_batch"] == 4 * 460_800
    assert conv["flops"] == 2 * 4 * 460_800 == 3_686_400
    # input 4x3x16x16 + weights 24x3x5x5 + bias 24 + output 4x24x16x16, fp32
    assert conv["bytes"] == (3072 + 1800 + 24 + 24_576) * 4 == 117_888
    assert conv["intensity"] == pytest.approx(3_686_400 / 117_888)
    bn = rows["features.block1.bn1"]  # weight, bias, running mean and variance: 4 x 24 floats
    assert bn["flops"] == 2 * 24_576 and bn["bytes"] == (2 * 24_576 + 96) * 4 == 196_992
    relu, pool = rows["features.block1.relu1"], rows["features.pool1"]
    assert relu["flops"] == 24_576 and relu["bytes"] == 2 * 24_576 * 4
    assert pool["flops"] == 4 * 12 * 8 * 8 * 9  # 3x3 max pool, stride 2, pad 1: 8x8 outputs of 12 channels
    rest = rows["rest"]
    assert rest["kind"] == "rest" and rest["flops"] == 0 and rest["intensity"] is None and rest["note"]


def test_bf16_rows_count_two_bytes_per_element():
    rows = {r["layer"]: r for r in _rows(_model(n_1x1=2), dtype="bf16")}
    assert rows["features.block1.conv1"]["bytes"] == 117_888 // 2 and rows["features.block1.conv1"]["dtype"] == "bf16"


def test_roofline_bound_and_attainment_by_hand():
    rows = [{"kind": "conv_kxk", "flops": 4e9, "bytes": 1e8, "intensity": 40.0, "fwd_ms": 40.0},
            {"kind": "relu", "flops": 1e6, "bytes": 8e6, "intensity": 0.125, "fwd_ms": 2.0},
            {"kind": "rest", "flops": 0, "bytes": 0, "intensity": None, "fwd_ms": 1.0}]
    out = roofline(rows, peak_flops=2e11, bytes_per_s=1e10)  # ridge at 20 FLOP/byte
    conv, relu, rest = out
    assert conv["bound"] == "compute" and conv["roofline_ms"] == pytest.approx(20.0)  # 4e9 / 2e11 s
    assert conv["attained"] == pytest.approx(0.5)
    assert relu["bound"] == "memory" and relu["roofline_ms"] == pytest.approx(0.8)  # 8e6 / 1e10 s
    assert relu["attained"] == pytest.approx(0.4)
    assert rest["bound"] is None and rest["attained"] is None
    assert conv["peak_tflops"] == pytest.approx(0.2) and conv["mem_gb_per_s"] == pytest.approx(10.0)


def test_memory_bandwidth_is_measured():
    bw = memory_bandwidth("cpu", nbytes=2**24)
    assert math.isfinite(bw) and bw > 1e8  # even a slow core copies well over 100 MB/s


def test_callers_model_untouched_and_table_prints():
    model = _model(n_1x1=1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = _rows(model)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    text = format_layer_times(roofline(rows, 1e11, 1e10))
    lines = text.splitlines()
    assert "end-to-end forward" in lines[0] and lines[1].startswith("layer")
    assert lines[-1].startswith("rest") and sum(ln.startswith("features.") for ln in lines) == len(rows) - 3
