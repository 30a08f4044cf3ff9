"""Network in Network (Lin, Chen & Yan, ICLR 2014): one builder, presets as data.

A NiN is a list of mlpconv blocks (a k×k conv followed by 1×1 convs, ReLU after each) with pooling and
dropout between them, and a head. Presets in `REGISTRY` (plain data, in the torch-free `nin_bench.suite.presets`)
describe that list; every ablation axis (`n_1x1`, `head`, `dropout`, `width`, `batchnorm`, ...) is a keyword of
`build_model`, as in timm's `vgg.py`.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence, Union

import torch
from torch import nn

from nin_bench.suite.presets import (
    HEADS,
    INITS,
    OUT,
    REGISTRY,
    BlockSpec,
    PoolSpec,
    PresetSpec,
)


def block_widths(block: BlockSpec, n_1x1: int) -> list[Union[int, str]]:
    """Output widths of a block's convs, k×k first, before width scaling.

    Args:
        block: the block spec.
        n_1x1: number of 1×1 convs (0..3).

    Returns:
        `n_1x1 + 1` widths (ints or `OUT`).
    """
    if n_1x1 == 0:
        return [block.mlp[-1]]
    mlp = list(block.mlp)
    kept = mlp[-n_1x1:] if n_1x1 <= len(mlp) else [mlp[0]] * (n_1x1 - len(mlp)) + mlp
    return [block.conv_width, *kept]


def _resolve_width(c: Union[int, str], out_channels: int, width: float) -> int:
    """Concrete channel count: `OUT` -> the output maps' width; else `max(1, round(c * width))`."""
    if c == OUT:
        return out_channels
    return max(1, round(c * width))


def _check(cond: bool, arg: str, value: Any, allowed: str) -> None:
    """Raise the one ValueError format used for every bad build argument."""
    if not cond:
        raise ValueError(f"build_model: {arg}={value!r} is not allowed; expected {allowed}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_p(v: Any) -> bool:
    """Whether `v` is a dropout probability: a number in [0, 1)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


def _validate(name: str, n_1x1: Any, head: Any, dropout: Any, head_dropout: Any, in_channels: Any,
              num_classes: Any, width: Any, fc_hidden: Any, input_size: Any, init: Any) -> None:
    """Check every build argument; errors name the argument, its value and what is allowed."""
    _check(name in REGISTRY, "name", name, f"one of {sorted(REGISTRY)}")
    _check(_is_int(n_1x1) and 0 <= n_1x1 <= 3, "n_1x1", n_1x1, "an int in 0..3")
    _check(head in HEADS, "head", head, f"one of {list(HEADS)}")
    _check(_is_p(dropout), "dropout", dropout, "a float in [0, 1)")
    _check(head_dropout is None or _is_p(head_dropout), "head_dropout", head_dropout,
           "None (the same as dropout) or a float in [0, 1)")
    _check(_is_int(in_channels) and in_channels >= 1, "in_channels", in_channels, "an int >= 1")
    _check(_is_int(num_classes) and num_classes >= 1, "num_classes", num_classes, "an int >= 1")
    _check(isinstance(width, (int, float)) and not isinstance(width, bool) and width > 0,
           "width", width, "a number > 0")
    _check(fc_hidden is None or (isinstance(fc_hidden, (list, tuple))
                                 and all(_is_int(h) and h >= 1 for h in fc_hidden)),
           "fc_hidden", fc_hidden, "None or a list of ints >= 1")
    _check(input_size is None or (_is_int(input_size) and input_size >= 1),
           "input_size", input_size, "None (the preset's native size) or an int >= 1")
    _check(init in INITS, "init", init, f"one of {list(INITS)}")


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Spatial output size of a conv/pool in PyTorch's floor mode."""
    return (size + 2 * padding - kernel) // stride + 1


def _sizes(preset: PresetSpec, input_size: int) -> list[int]:
    """Spatial side after each conv/pool of the preset, in order, for a square input."""
    sizes, size = [], input_size
    for layer in preset.layers:
        if isinstance(layer, (BlockSpec, PoolSpec)):
            size = _out_size(size, layer.kernel, layer.stride, layer.padding)
            sizes.append(size)
    return sizes


def feature_size(preset: PresetSpec, input_size: int) -> int:
    """Side of the last block's output maps for a square input, raising if any layer gets an empty map.

    Args:
        preset: the preset.
        input_size: input side in pixels.

    Returns:
        The last block's output side in pixels.

    Raises:
        ValueError: the input is too small for the preset (names the smallest size that works).
    """
    sizes = _sizes(preset, input_size)
    if min(sizes) < 1:
        smallest = next(s for s in range(1, preset.native_size + 1) if min(_sizes(preset, s)) >= 1)
        raise ValueError(
            f"build_model: input_size={input_size} is too small for preset {preset.name!r}: its convs and "
            f"pools leave an empty feature map; expected input_size >= {smallest} "
            f"(native {preset.native_size})")
    return sizes[-1]


def _make_block(widths: list[int], block: BlockSpec, in_ch: int, batchnorm: bool) -> nn.Sequential:
    """An mlpconv block: k×k conv then 1×1 convs, each followed by [BatchNorm2d] and ReLU."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, out_ch in enumerate(widths, start=1):
        k, s, p = (block.kernel, block.stride, block.padding) if i == 1 else (1, 1, 0)
        # The conv keeps its bias even with BN (torchvision vgg*_bn convention; the contract's param pins).
        layers[f"conv{i}"] = nn.Conv2d(in_ch, out_ch, k, s, p)
        if batchnorm:
            layers[f"bn{i}"] = nn.BatchNorm2d(out_ch)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
        in_ch = out_ch
    return nn.Sequential(layers)


def _make_pool(pool: PoolSpec) -> nn.Module:
    cls = nn.MaxPool2d if pool.kind == "max" else nn.AvgPool2d
    return cls(pool.kernel, pool.stride, pool.padding)


def _make_features(preset: PresetSpec, n_1x1: int, in_channels: int, out_channels: int,
                   width: float, dropout: float, batchnorm: bool) -> tuple[nn.Sequential, int]:
    """The trunk as named children block1, pool1, drop1, ...; pool/drop take the preceding block's index.

    Returns:
        (features, channels of the last block's output).
    """
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    k, ch = 0, in_channels
    for layer in preset.layers:
        if isinstance(layer, BlockSpec):
            k += 1
            widths = [_resolve_width(c, out_channels, width) for c in block_widths(layer, n_1x1)]
            layers[f"block{k}"] = _make_block(widths, layer, ch, batchnorm)
            ch = widths[-1]
        elif isinstance(layer, PoolSpec):
            layers[f"pool{k}"] = _make_pool(layer)
        elif dropout > 0:  # p == 0 means no dropout module at all, not Dropout(0)
            layers[f"drop{k}"] = nn.Dropout(dropout)
    return nn.Sequential(layers), ch


def _make_head(head: str, in_features: int, fc_hidden: Sequence[int], num_classes: int,
               dropout: float) -> nn.Sequential:
    """GAP head (pool + flatten: the class maps are the logits) or the FC head of the issue."""
    if head == "gap":
        return nn.Sequential(OrderedDict(gap=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    layers: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for i, hidden in enumerate(fc_hidden, start=1):
        layers[f"fc{i}"] = nn.Linear(in_features, hidden)
        layers[f"relu{i}"] = nn.ReLU(inplace=True)
        if dropout > 0:
            layers[f"drop{i}"] = nn.Dropout(dropout)
        in_features = hidden
    layers[f"fc{len(fc_hidden) + 1}"] = nn.Linear(in_features, num_classes)
    return nn.Sequential(layers)


def init_weights(model: nn.Module, init: str) -> None:
    """Initialise conv/linear weights in place.

    Args:
        model: the network.
        init: "kaiming" (the default of `build_model`): `kaiming_normal_(mode="fan_in", nonlinearity="relu")`
            on every Conv2d, zero conv bias; Linear layers keep PyTorch's own init. "xavier": d2l's
            `init_cnn` (`xavier_uniform_` on Conv2d and Linear weights, biases untouched). "default":
            PyTorch's own init, left as built.
    """
    if init == "default":
        return
    for m in model.modules():
        if init == "xavier" and isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
        elif init == "kaiming" and isinstance(m, nn.Conv2d):
            # fan_in keeps the forward activation variance constant through ReLU (He et al. 2015, §2.2).
            # fan_out (torchvision's choice for VGG/ResNet) would scale activations by fan_in/fan_out,
            # which NiN's shapes make extreme: nin_d2l's 384->10 class-map conv has fan_in 3456 vs
            # fan_out 90 (38x the variance in the logits), its first conv 121 vs 11616 (1/96x).
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)


class NiN(nn.Module):
    """A Network in Network: `features` (mlpconv blocks, pools, dropout) then `head`.

    Attributes:
        features: nn.Sequential with named children block1, pool1, [drop1], block2, ...
        head: nn.Sequential (GAP + flatten, or flatten + Linear layers).
        spec: plain dict of the (resolved) build arguments; `build_model(**spec)` rebuilds the same shape.
    """

    def __init__(self, features: nn.Sequential, head: nn.Sequential, spec: dict[str, Any]) -> None:
        super().__init__()
        self.features = features
        self.head = head
        self.spec = spec

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last block's output maps after ReLU ([B, num_classes, h, w] for the GAP head)."""
        return self.features(x)

    def forward_head(self, maps: torch.Tensor) -> torch.Tensor:
        """Logits [B, num_classes] from the last block's maps."""
        return self.head(maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(name: str, *, n_1x1: int = 2, head: str = "gap", dropout: float = 0.5,
                head_dropout: float | None = None, in_channels: int = 3, num_classes: int = 10,
                width: float = 1.0, batchnorm: bool = False, fc_hidden: Sequence[int] | None = None, input_size: int | None = None,
                init: str = "kaiming") -> NiN:
    """Build a NiN preset with the given ablation axes.

    Args:
        name: preset, a key of `REGISTRY` ("nin_d2l", "nin_cifar").
        n_1x1: 1×1 convs per block, 0..3 (the paper uses 2).
        head: "gap" (class maps + global average pool) or "fc" (trunk-width maps + Linear layers).
        dropout: p of the dropout layers between blocks (and of the FC head's, unless `head_dropout` is given),
            in [0, 1); 0 means no dropout module there.
        head_dropout: p of the FC head's dropout layers (after each hidden Linear + ReLU), in [0, 1); None = the
            same as `dropout` (so `dropout` alone switches both, as before this argument existed). Ignored by
            "gap", whose head has no dropout (its spec records 0.0).
        in_channels: input channels (3 RGB, 1 grey).
        num_classes: classes (= channels of the class maps for "gap").
        width: multiplier on every conv width except the class maps: max(1, round(c * width)).
        batchnorm: BatchNorm2d after every conv, before its ReLU.
        fc_hidden: FC head hidden sizes (not scaled by width); None = the preset's default. Ignored by "gap".
        input_size: square input side the model is checked against (and the FC head sized for);
            None = the preset's native size (224 / 32).
        init: "kaiming" (default; see `init_weights`), "xavier" (d2l's init_cnn) or "default" (PyTorch's).

    Returns:
        The NiN module, with `spec` holding the resolved arguments.

    Raises:
        ValueError: naming the bad argument, its value and what is allowed.
    """
    _validate(name, n_1x1, head, dropout, head_dropout, in_channels, num_classes, width, fc_hidden, input_size,
              init)
    preset = REGISTRY[name]
    size = preset.native_size if input_size is None else input_size
    side = feature_size(preset, size)
    hidden = list(preset.fc_hidden if fc_hidden is None else fc_hidden)
    out_ch = num_classes if head == "gap" else _resolve_width(preset.fc_width, 0, width)
    features, ch = _make_features(preset, n_1x1, in_channels, out_ch, width, float(dropout), batchnorm)
    head_p = 0.0 if head == "gap" else float(dropout if head_dropout is None else head_dropout)
    head_mod = _make_head(head, ch * side * side, hidden, num_classes, head_p)
    spec = dict(name=name, n_1x1=n_1x1, head=head, dropout=float(dropout), head_dropout=head_p,
                in_channels=in_channels, num_classes=num_classes, width=float(width), batchnorm=bool(batchnorm),
                fc_hidden=hidden, input_size=size, init=init)
    model = NiN(features, head_mod, spec)
    init_weights(model, init)
    return model


class GlobalMeanPool(nn.Module):
    """The GAP as a mean over height and width: the same function as AdaptiveAvgPool2d(1), whose CUDA backward
    accumulates with atomic adds (torch refuses it under deterministic algorithms); a mean's backward does not."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def deterministic_gap(model: nn.Module) -> nn.Module:
    """Swap every AdaptiveAvgPool2d(1) of `model` for `GlobalMeanPool`, in place (for deterministic mode only:
    the default keeps torch's pooling op, whose rounding the committed results were measured with).

    Returns:
        The same model.
    """
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GlobalMeanPool())
    return model
