"""Tests for nin_bench.models.nin: every preset and axis against a hand formula written from issue 2's text.

The formula below deliberately shares no code with the package: it re-derives each conv's widths, kernel and
map size from the issue's prose and counts params and multiply-adds with pencil-and-paper arithmetic.
Parameter-count tests build on the meta device (instant, no init cost); forward tests run on CPU, small batches.
"""
from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
from torch import nn

from nin_bench.models.nin import build_model
from nin_bench.suite.presets import REGISTRY

# ---------------------------------------------------------------------------------------------- hand formula


def _out(h: int, k: int, s: int, p: int) -> int:
    return (h + 2 * p - k) // s + 1


def _convs(preset: str, n: int, head: str, ncls: int, width: float) -> list[tuple[str, tuple]]:
    """The issue's layer list: ("conv", (out, k, s, p)) and ("pool", (k, s, p)), with n_1x1 and width applied."""
    sc = lambda c: max(1, round(c * width))  # noqa: E731
    seq: list[tuple[str, tuple]] = []
    if preset == "nin_d2l":
        last = ncls if head == "gap" else sc(384)
        blocks = [(sc(96), 11, 4, 0), (sc(256), 5, 1, 2), (sc(384), 3, 1, 1), (last, 3, 1, 1)]
        for i, (w, k, s, p) in enumerate(blocks):
            # "All convs in a block have the block's width": k×k then n 1×1 convs of width w.
            seq += [("conv", (w, k, s, p))] + [("conv", (w, 1, 1, 0))] * n
            if i < 3:
                seq.append(("pool", (3, 2, 0)))
        return seq
    last = ncls if head == "gap" else sc(192)
    blocks = [(sc(192), 5, 2, [sc(160), sc(96)]), (sc(192), 5, 2, [sc(192), sc(192)]),
              (sc(192), 3, 1, [sc(192), last])]
    for i, (w, k, p, ones) in enumerate(blocks):
        if n == 0:  # the k×k conv outputs the block's output width directly
            widths = [ones[-1]]
        else:  # keep the last n of the 1×1 list; n=3 repeats its first entry in front
            widths = [w] + (ones[-n:] if n <= 2 else [ones[0]] + ones)
        seq += [("conv", (widths[0], k, 1, p))] + [("conv", (c, 1, 1, 0)) for c in widths[1:]]
        if i < 2:
            seq.append(("pool", (3, 2, 1)))
    return seq


def hand_count(preset: str, n: int = 2, head: str = "gap", cin: int = 3, ncls: int = 10, width: float = 1.0,
               bn: bool = False, fc_hidden: list[int] | None = None, size: int | None = None) -> tuple[int, int]:
    """(params, conv + linear MACs) per image from the issue's definitions."""
    size = size or (224 if preset == "nin_d2l" else 32)
    params = macs = 0
    c, h = cin, size
    for kind, args in _convs(preset, n, head, ncls, width):
        if kind == "pool":
            h = _out(h, *args)
            continue
        out, k, s, p = args
        h = _out(h, k, s, p)
        params += out * c * k * k + out + (2 * out if bn else 0)  # weight + bias (+ BN gamma, beta)
        macs += out * c * k * k * h * h
        c = out
    if head == "fc":
        hidden = fc_hidden if fc_hidden is not None else ([4096, 4096] if preset == "nin_d2l" else [1024])
        f = c * h * h
        for o in [*hidden, ncls]:
            params += f * o + o
            macs += f * o
            f = o
    return params, macs


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_meta(name: str, **kw) -> nn.Module:
    """Build on the meta device: shapes and counts only, no memory or init cost."""
    with torch.device("meta"):
        return build_model(name, **kw)


# ---------------------------------------------------------------------------------------------- exact pins

PINS = [  # (preset, n_1x1, in_channels, params, conv MACs): issue 2, per image, gap head
    ("nin_d2l", 2, 1, 1_992_166, 762_297_352),
    ("nin_d2l", 1, 1, 1_769_112, 669_884_996),
    ("nin_d2l", 0, 1, 1_546_058, 577_472_640),
    ("nin_cifar", 2, 3, 966_986, 222_486_528),
]


@pytest.mark.parametrize("preset,n,cin,params,macs", PINS)
def test_pinned_params_and_hand_formula(preset: str, n: int, cin: int, params: int, macs: int) -> None:
    assert hand_count(preset, n=n, cin=cin) == (params, macs)  # the formula reproduces the numbers
    assert n_params(build_model(preset, n_1x1=n, in_channels=cin)) == params


# ---------------------------------------------------------------------------------------------- every axis

CIFAR_GRID = list(itertools.product([0, 1, 2, 3], ["gap", "fc"], [0.5, 1.0, 0.3], [False, True], [1, 3],
                                    [28, 32]))
D2L_GRID = list(itertools.product([0, 1, 2, 3], ["gap", "fc"], [0.5, 1.0, 0.3], [False, True], [1, 3],
                                  [96, 224]))


@pytest.mark.parametrize("n,head,width,bn,cin,size", CIFAR_GRID)
def test_param_count_cifar(n: int, head: str, width: float, bn: bool, cin: int, size: int) -> None:
    model = build_meta("nin_cifar", n_1x1=n, head=head, width=width, batchnorm=bn, in_channels=cin,
                       input_size=size)
    assert n_params(model) == hand_count("nin_cifar", n, head, cin, 10, width, bn, size=size)[0]


@pytest.mark.parametrize("n,head,width,bn,cin,size", D2L_GRID)
def test_param_count_d2l(n: int, head: str, width: float, bn: bool, cin: int, size: int) -> None:
    model = build_meta("nin_d2l", n_1x1=n, head=head, width=width, batchnorm=bn, in_channels=cin,
                       input_size=size)
    assert n_params(model) == hand_count("nin_d2l", n, head, cin, 10, width, bn, size=size)[0]


@pytest.mark.parametrize("preset,head,ncls,fc_hidden", [
    ("nin_cifar", "fc", 100, [256, 128]), ("nin_cifar", "gap", 100, None), ("nin_d2l", "fc", 7, [512]),
    ("nin_d2l", "fc", 10, []),
])
def test_param_count_classes_and_fc_hidden(preset: str, head: str, ncls: int, fc_hidden: list[int] | None) -> None:
    model = build_meta(preset, head=head, num_classes=ncls, fc_hidden=fc_hidden)
    assert n_params(model) == hand_count(preset, head=head, ncls=ncls, fc_hidden=fc_hidden)[0]


FORWARD_CASES = [  # (preset, n, head, dropout, width, bn, cin, size): every axis value at least once
    *[("nin_cifar", n, head, do, w, bn, cin, size)
      for (n, head, (bn, cin, size)), (do, w) in zip(
          itertools.product([0, 1, 2, 3], ["gap", "fc"], [(False, 3, 32), (True, 1, 28)]),
          itertools.cycle([(0.0, 1.0), (0.5, 0.5), (0.5, 0.3), (0.0, 0.3), (0.5, 1.0)]))],
    ("nin_d2l", 2, "gap", 0.5, 1.0, False, 1, 224),
    ("nin_d2l", 0, "fc", 0.0, 0.5, True, 3, 224),
    ("nin_d2l", 3, "gap", 0.5, 0.3, True, 3, 96),
    ("nin_d2l", 1, "fc", 0.5, 0.3, False, 1, 96),
]


@pytest.mark.parametrize("preset,n,head,dropout,width,bn,cin,size", FORWARD_CASES)
def test_forward_shape_finite_and_params(preset: str, n: int, head: str, dropout: float, width: float,
                                         bn: bool, cin: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(preset, n_1x1=n, head=head, dropout=dropout, width=width, batchnorm=bn,
                        in_channels=cin, input_size=size)
    assert n_params(model) == hand_count(preset, n, head, cin, 10, width, bn, size=size)[0]
    out = model(torch.randn(2, cin, size, size))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------- structure


def test_dropout_zero_means_no_dropout_module() -> None:
    for preset, head in itertools.product(REGISTRY, ["gap", "fc"]):
        model = build_meta(preset, head=head, dropout=0.0)
        assert not any(isinstance(m, nn.Dropout) for m in model.modules())


@pytest.mark.parametrize("preset,head,expected", [
    ("nin_cifar", "gap", 2), ("nin_cifar", "fc", 3), ("nin_d2l", "gap", 1), ("nin_d2l", "fc", 3)])
def test_dropout_modules_and_p(preset: str, head: str, expected: int) -> None:
    drops = [m for m in build_meta(preset, head=head, dropout=0.3).modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == expected and all(d.p == 0.3 for d in drops)


@pytest.mark.parametrize("dropout,head_dropout,trunk_p,head_p", [
    (0.5, 0.0, [0.5, 0.5], []),            # the paper's Table 5 "FC": the trunk keeps its dropout, the head has none
    (0.5, 0.3, [0.5, 0.5], [0.3]),         # dropout in the head at its own p
    (0.0, 0.5, [], [0.5]),
    (0.4, None, [0.4, 0.4], [0.4]),        # None: the trunk's p in the head too (the behaviour before the argument)
])
def test_head_dropout_is_the_fc_heads_own(dropout: float, head_dropout: float | None, trunk_p: list[float],
                                          head_p: list[float]) -> None:
    model = build_meta("nin_cifar", head="fc", dropout=dropout, head_dropout=head_dropout)
    assert [m.p for m in model.features.modules() if isinstance(m, nn.Dropout)] == trunk_p
    assert [m.p for m in model.head.modules() if isinstance(m, nn.Dropout)] == head_p
    assert model.spec["head_dropout"] == (dropout if head_dropout is None else head_dropout)
    again = build_meta(model.spec["name"], **{k: v for k, v in model.spec.items() if k != "name"})
    assert str(again) == str(model)


def test_gap_head_has_no_head_dropout() -> None:
    model = build_meta("nin_cifar", head="gap", dropout=0.5, head_dropout=0.5)
    assert str(model) == str(build_meta("nin_cifar", head="gap", dropout=0.5)) and model.spec["head_dropout"] == 0.0


@pytest.mark.parametrize("preset", sorted(REGISTRY))
@pytest.mark.parametrize("n", [0, 3])
def test_batchnorm_adds_2c_per_conv_before_relu(preset: str, n: int) -> None:
    plain, bn = build_meta(preset, n_1x1=n), build_meta(preset, n_1x1=n, batchnorm=True)
    convs = [m for m in plain.modules() if isinstance(m, nn.Conv2d)]
    assert n_params(bn) - n_params(plain) == 2 * sum(c.out_channels for c in convs)
    block = list(bn.features.block1.children())
    assert [type(m) for m in block[:3]] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert block[0].bias is not None  # conv keeps its bias (torchvision vgg*_bn)


@pytest.mark.parametrize("preset,dropout,names", [
    ("nin_d2l", 0.5, ["block1", "pool1", "block2", "pool2", "block3", "pool3", "drop3", "block4"]),
    ("nin_d2l", 0.0, ["block1", "pool1", "block2", "pool2", "block3", "pool3", "block4"]),
    ("nin_cifar", 0.5, ["block1", "pool1", "drop1", "block2", "pool2", "drop2", "block3"]),
    ("nin_cifar", 0.0, ["block1", "pool1", "block2", "pool2", "block3"]),
])
def test_feature_layout(preset: str, dropout: float, names: list[str]) -> None:
    model = build_meta(preset, dropout=dropout)
    assert [n for n, _ in model.features.named_children()] == names
    assert isinstance(model.head, nn.Sequential)


def test_cifar_pool_types() -> None:
    model = build_meta("nin_cifar")
    assert isinstance(model.features.pool1, nn.MaxPool2d) and isinstance(model.features.pool2, nn.AvgPool2d)


@pytest.mark.parametrize("preset,cin,size,side", [
    ("nin_cifar", 3, 32, 8), ("nin_cifar", 1, 28, 7), ("nin_d2l", 1, 224, 5), ("nin_d2l", 3, 96, 1)])
def test_forward_features_gives_class_maps(preset: str, cin: int, size: int, side: int) -> None:
    torch.manual_seed(0)
    model = build_model(preset, in_channels=cin, num_classes=7, input_size=size).eval()
    x = torch.randn(2, cin, size, size)
    with torch.no_grad():
        maps = model.forward_features(x)
        assert maps.shape == (2, 7, side, side)
        assert (maps >= 0).all()  # after the last ReLU
        assert torch.allclose(model.forward_head(maps), model(x))
        assert torch.allclose(model(x), maps.mean(dim=(2, 3)))  # GAP: logits are the maps' means


def test_fc_head_sized_for_input_size() -> None:
    model = build_meta("nin_cifar", head="fc", in_channels=1, input_size=28, width=0.5)
    assert model.head.fc1.in_features == 96 * 7 * 7
    assert model.head.fc2.out_features == 10


def test_width_rounding_uses_python_round() -> None:
    convs = [m for m in build_meta("nin_cifar", width=0.3).features.block1 if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [58, 48, 29]  # round(57.6), round(48.0), round(28.8)


def test_spec_rebuilds_same_model() -> None:
    model = build_meta("nin_cifar", n_1x1=1, head="fc", dropout=0.0, width=0.5, batchnorm=True)
    spec = dict(model.spec)
    assert spec["fc_hidden"] == [1024] and spec["input_size"] == 32 and spec["init"] == "kaiming"
    again = build_meta(spec.pop("name"), **spec)
    assert str(again) == str(model) and again.spec == model.spec


# ---------------------------------------------------------------------------------------------- init


def test_init_kaiming_fan_in_zero_bias() -> None:
    torch.manual_seed(0)
    conv = build_model("nin_d2l", init="kaiming").features.block3.conv1  # 256*9 fan_in, 384*256*9 weights
    assert torch.count_nonzero(conv.bias) == 0
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)


def test_init_xavier_and_default() -> None:
    torch.manual_seed(0)
    model = build_model("nin_cifar", head="fc", init="xavier")
    lin = model.head.fc1
    bound = math.sqrt(6 / (lin.in_features + lin.out_features))
    assert lin.weight.abs().max().item() <= bound
    assert lin.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    default = build_model("nin_cifar", init="default")
    assert torch.count_nonzero(default.features.block1.conv1.bias) > 0  # PyTorch's uniform bias init


# ---------------------------------------------------------------------------------------------- errors


def test_unknown_preset_lists_names() -> None:
    with pytest.raises(ValueError) as err:
        build_model("nin_imagenet")
    assert "nin_imagenet" in str(err.value) and str(sorted(REGISTRY)) in str(err.value)


@pytest.mark.parametrize("kw,arg", [
    (dict(n_1x1=4), "n_1x1"), (dict(n_1x1=-1), "n_1x1"), (dict(n_1x1=True), "n_1x1"),
    (dict(head="avg"), "head"), (dict(dropout=1.0), "dropout"), (dict(dropout=-0.1), "dropout"),
    (dict(width=0), "width"), (dict(width=-1.0), "width"), (dict(in_channels=0), "in_channels"),
    (dict(num_classes=0), "num_classes"), (dict(fc_hidden=[0]), "fc_hidden"), (dict(init="he"), "init"),
    (dict(input_size=0), "input_size"), (dict(head_dropout=1.0), "head_dropout"),
    (dict(head_dropout=True), "head_dropout"),
])
def test_bad_arguments_name_argument_and_value(kw: dict, arg: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{arg}={next(iter(kw.values()))!r}")):
        build_meta("nin_cifar", **kw)


def test_input_too_small_names_minimum() -> None:
    with pytest.raises(ValueError, match=r"input_size=64 is too small.*>= 67"):
        build_meta("nin_d2l", input_size=64)
    assert n_params(build_meta("nin_d2l", input_size=67, head="fc")) == hand_count("nin_d2l", head="fc", size=67)[0]


# ---------------------------------------------------------------------------------------------- facts in one place


def test_preset_and_data_facts_live_in_presets() -> None:
    """The builder, the grid's data shapes and the data loader all read `nin_bench.suite.presets`."""
    from nin_bench.data import datasets as data
    from nin_bench.suite import presets

    shapes = {d.name: (d.channels, d.native_size, d.num_classes) for d in presets.DATASETS.values() if d.channels}
    assert shapes == {"cifar10": (3, 32, 10), "fashion_mnist": (1, 28, 10)}
    assert {p.name: p.resize_to for p in presets.REGISTRY.values() if p.resize_to} == {"nin_d2l": 224}
    assert [presets.auto_augment(d) for d in ("cifar10", "fashion_mnist", "imagefolder")] == ["crop_flip", "crop",
                                                                                               "crop_flip"]
    assert data.DATASETS == ("cifar10", "fashion_mnist", "imagefolder")
    assert len(data.CIFAR10_CLASSES) == len(data.FASHION_MNIST_CLASSES) == 10
    assert all(p.shown_on in presets.DATASETS for p in presets.REGISTRY.values())


def test_inspect_shows_a_preset_on_its_data_set() -> None:
    from nin_bench.run.inspect_model import inspect_target

    assert inspect_target("nin_d2l", []).startswith("nin_d2l-n1x1_2-gap-do0.5-fashion_mnist  (input 1x224x224)")
    assert inspect_target("nin_cifar", []).startswith("nin_cifar-n1x1_2-gap-do0.5-cifar10  (input 3x32x32)")
