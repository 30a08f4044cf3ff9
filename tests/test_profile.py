"""Tests for nin_bench.measure.counts: hand-computed counts for tiny layers, the issue's pins, and the record's invariants."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from nin_bench.measure.counts import (
    MACS_EXCLUDED_OPS,
    format_layer_table,
    layer_table,
    profile_model,
)
from nin_bench.models.nin import NiN, build_model


def tiny(batchnorm: bool = False) -> NiN:
    """Conv(3->8, 3x3, pad 1) [BN] ReLU MaxPool(2) | Flatten Linear(8*5*5 -> 5), on 3x10x10."""
    block = OrderedDict(conv1=nn.Conv2d(3, 8, 3, padding=1))
    if batchnorm:
        block["bn1"] = nn.BatchNorm2d(8)
    block["relu1"] = nn.ReLU(inplace=True)
    features = nn.Sequential(OrderedDict(block1=nn.Sequential(block), pool1=nn.MaxPool2d(2)))
    head = nn.Sequential(OrderedDict(flatten=nn.Flatten(), fc1=nn.Linear(8 * 5 * 5, 5)))
    return NiN(features, head, spec={"name": "tiny"})


CONV_MACS = 8 * 3 * 3 * 3 * 10 * 10  # out_ch * in_ch * k * k * H_out * W_out = 21,600
LINEAR_MACS = 200 * 5  # in_features * out_features = 1,000


@pytest.mark.parametrize("batchnorm", [False, True])
def test_hand_computed_conv_and_linear(batchnorm: bool) -> None:
    rec = profile_model(tiny(batchnorm), (3, 10, 10))
    assert rec["macs_block1"] == CONV_MACS == 21_600
    assert rec["macs_head"] == LINEAR_MACS == 1_000
    assert rec["macs"] == 22_600  # BN and max-pool excluded, not counted
    assert rec["params_block1"] == 8 * 27 + 8 + (16 if batchnorm else 0)
    assert rec["params_head"] == 200 * 5 + 5
    assert rec["flops_fwd"] == 2 * 22_600
    # Backward: conv weight grad (2*21,600) but no conv input grad (the input does not require grad);
    # linear weight grad and input grad (2*1,000 each).
    assert rec["flops_fwd_bwd"] == 2 * 22_600 + 2 * 21_600 + 2 * 1_000 + 2 * 1_000
    assert rec["unsupported_ops"] == "" and rec["counts_agree"] is True


PINS = [  # (preset, n_1x1, in_channels, size, params, MACs): issue 2, gap head
    ("nin_d2l", 2, 1, 224, 1_992_166, 762_297_352),
    ("nin_d2l", 1, 1, 224, 1_769_112, 669_884_996),
    ("nin_d2l", 0, 1, 224, 1_546_058, 577_472_640),
    ("nin_cifar", 2, 3, 32, 966_986, 222_486_528),
]


@pytest.mark.parametrize("preset,n,cin,size,params,macs", PINS)
def test_pinned_presets(preset: str, n: int, cin: int, size: int, params: int, macs: int) -> None:
    rec = profile_model(build_model(preset, n_1x1=n, in_channels=cin), (cin, size, size))
    assert (rec["params"], rec["params_trainable"], rec["macs"]) == (params, params, macs)
    assert rec["flops_fwd"] == 2 * macs and rec["counts_agree"] is True
    assert rec["unsupported_ops"] == ""


AXES = [  # every op fvcore sees in NiN: BN, FC head (linear), dropout in head and trunk, avg/max pools
    ("nin_cifar", dict(batchnorm=True, head="fc", n_1x1=3, width=0.5, in_channels=1, input_size=28), (1, 28, 28)),
    ("nin_cifar", dict(dropout=0.0, n_1x1=0), (3, 32, 32)),
    ("nin_d2l", dict(batchnorm=True, head="fc", fc_hidden=[256], input_size=96), (3, 96, 96)),
]


@pytest.mark.parametrize("preset,kw,shape", AXES)
def test_record_invariants(preset: str, kw: dict, shape: tuple[int, int, int]) -> None:
    model = build_model(preset, **kw)
    rec = profile_model(model, shape)
    assert rec["unsupported_ops"] == ""
    assert rec["flops_fwd"] == 2 * rec["macs"] and rec["counts_agree"] is True
    groups = [k[len("params_"):] for k in rec if k.startswith("params_") and k != "params_trainable"]
    assert groups[-1] == "head" and groups[0] == "block1"
    assert sum(rec[f"params_{g}"] for g in groups) == rec["params"]
    assert sum(rec[f"macs_{g}"] for g in groups) == rec["macs"]
    assert rec["flops_fwd_bwd"] > 2 * rec["flops_fwd"]  # weight grads + input grads (all but the first conv)


def test_record_keys_and_counter_names() -> None:
    rec = profile_model(build_model("nin_cifar", n_1x1=0), (3, 32, 32))
    assert set(rec) == {
        "params", "params_trainable", "macs", "flops_fwd", "flops_fwd_bwd", "counts_agree", "macs_counter",
        "flops_counter", "macs_excluded_ops", "unsupported_ops", "params_block1", "macs_block1",
        "params_block2", "macs_block2", "params_block3", "macs_block3", "params_head", "macs_head"}
    assert rec["macs_counter"].startswith("fvcore 0.1.5")
    assert rec["flops_counter"] == f"torch.utils.flop_counter torch {torch.__version__}"
    assert rec["macs_excluded_ops"].split(",") == list(MACS_EXCLUDED_OPS)
    assert {"aten::max_pool2d", "aten::avg_pool2d", "aten::batch_norm",
            "aten::adaptive_avg_pool2d"} <= set(MACS_EXCLUDED_OPS)


def test_profile_leaves_model_untouched() -> None:
    model = build_model("nin_cifar", batchnorm=True)
    model.train()
    model.features.block1.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rec = profile_model(model, (3, 32, 32))
    assert model.training and model.features.block1.conv1.training
    assert not model.features.block1.conv1.weight.requires_grad and model.head is not None
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # BN stats not updated
    assert rec["params_trainable"] == rec["params"] - rec["params_block1"]


def test_layer_table_rows_and_totals() -> None:
    model = build_model("nin_cifar", head="fc", in_channels=1, input_size=28)
    rec = profile_model(model, (1, 28, 28))
    rows = layer_table(model, (1, 28, 28))
    assert rows[0]["name"] == "features.block1.conv1" and rows[-1]["name"] == "head.fc2"
    assert rows[0]["output_shape"] == [1, 192, 28, 28] and rows[-1]["output_shape"] == [1, 10]
    assert sum(r["params"] for r in rows) == rec["params"]
    assert sum(r["macs"] for r in rows) == rec["macs"]
    assert {r["type"] for r in rows if r["macs"]} == {"Conv2d", "Linear"}
    text = format_layer_table(rows)
    lines = text.splitlines()
    assert len(lines) == len(rows) + 4  # header, rule, rows, rule, total
    assert lines[-1].split()[0] == "total" and lines[-1].endswith(f"{rec['macs']:,}")
    assert f"{rec['params']:,}" in lines[-1]


def test_layer_table_gap_pin() -> None:
    rows = layer_table(build_model("nin_d2l", in_channels=1), (1, 224, 224))
    shapes = {r["name"]: r["output_shape"] for r in rows}
    assert shapes["features.block1.conv1"] == [1, 96, 54, 54]  # (224 - 11) // 4 + 1
    assert shapes["features.block4.relu3"] == [1, 10, 5, 5]
    assert sum(r["macs"] for r in rows) == 762_297_352
