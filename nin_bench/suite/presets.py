"""The facts of the built-in presets and data sets, each stated once; plain data, no torch.

Everything else reads them from here: the model builder (`models.build_model`: a preset's layer list), the
config schema (which preset and data set names are allowed), the grid (`variants`: a data set's channels, native
side and classes, the side a preset resizes its input to) and `inspect` (the data set a preset is shown on).
Adding a preset or a data set is one entry here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

# The builder's choices of head and initialisation (see `models.build_model`).
HEADS = ("gap", "fc")
INITS = ("kaiming", "xavier", "default")

# Width placeholder for the network's output maps: `num_classes` for the GAP head, the preset's (scaled)
# `fc_width` for the FC head. It is never scaled by `width` when it means the class maps.
OUT = "out"


@dataclass(frozen=True)
class BlockSpec:
    """One mlpconv block.

    `conv_width` is the k×k conv's width; `mlp` the 1×1 widths at n_1x1=2 (the paper's count). `n_1x1=n`
    keeps the last n entries of `mlp` (n=3 repeats the first in front); n=0 makes the k×k conv output
    `mlp[-1]`, so a block's output width never depends on n.
    """

    conv_width: Union[int, str]
    kernel: int
    stride: int
    padding: int
    mlp: tuple[Union[int, str], ...]


@dataclass(frozen=True)
class PoolSpec:
    """A pooling layer between blocks ("max" or "avg"); floor mode, as PyTorch (and the pins) use."""

    kind: str
    kernel: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class DropSpec:
    """Dropout(p) at this position; omitted entirely when p == 0."""


Layer = Union[BlockSpec, PoolSpec, DropSpec]


@dataclass(frozen=True)
class PresetSpec:
    """A named NiN: its layer list, native input size, FC-head trunk width and default FC hidden sizes.

    Attributes:
        resize_to: the side every data set is resized to for this preset unless `data.input_size` says
            otherwise; None: each data set's native side.
        shown_on: the data set `nin_bench inspect PRESET` shows the preset on.
    """

    name: str
    layers: tuple[Layer, ...]
    native_size: int
    fc_width: int
    fc_hidden: tuple[int, ...]
    resize_to: int | None = None
    shown_on: str = "cifar10"


NIN_D2L = PresetSpec(
    name="nin_d2l",
    layers=(
        BlockSpec(96, 11, 4, 0, (96, 96)),
        PoolSpec("max", 3, 2),
        BlockSpec(256, 5, 1, 2, (256, 256)),
        PoolSpec("max", 3, 2),
        BlockSpec(384, 3, 1, 1, (384, 384)),
        PoolSpec("max", 3, 2),
        DropSpec(),
        BlockSpec(OUT, 3, 1, 1, (OUT, OUT)),
    ),
    native_size=224,
    fc_width=384,
    fc_hidden=(4096, 4096),  # AlexNet's head: the comparison the d2l chapter draws
    # d2l's NiN is its Fashion-MNIST model, resized to 224x224: so is ours by default.
    resize_to=224,
    shown_on="fashion_mnist",
)

NIN_CIFAR = PresetSpec(
    name="nin_cifar",
    layers=(
        BlockSpec(192, 5, 1, 2, (160, 96)),
        PoolSpec("max", 3, 2, 1),
        DropSpec(),
        BlockSpec(192, 5, 1, 2, (192, 192)),
        PoolSpec("avg", 3, 2, 1),
        DropSpec(),
        BlockSpec(192, 3, 1, 1, (192, OUT)),
    ),
    native_size=32,
    fc_width=192,
    fc_hidden=(1024,),
    shown_on="cifar10",
)

REGISTRY: dict[str, PresetSpec] = {p.name: p for p in (NIN_D2L, NIN_CIFAR)}


@dataclass(frozen=True)
class DatasetSpec:
    """A data set nin_bench knows by name.

    Attributes:
        name: the `data.dataset` value.
        channels: input channels (3 RGB, 1 grey); None: read from the data (imagefolder).
        native_size: the images' square side in pixels; None: read from the data.
        classes: class names in label order; empty: read from the data (the tree's folder names).
        augment: what `train.augment: auto` means for it.
    """

    name: str
    channels: int | None
    native_size: int | None
    classes: tuple[str, ...]
    augment: str

    @property
    def num_classes(self) -> int | None:
        """Number of classes; None when read from the data."""
        return len(self.classes) or None


DATASETS: dict[str, DatasetSpec] = {d.name: d for d in (
    DatasetSpec("cifar10", 3, 32, ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                   "truck"), augment="crop_flip"),
    # torchvision's FashionMNIST.classes (label order of the official IDX files). "auto" augments with crops only:
    # its left/right-asymmetric classes (shoes point left) make a flipped image a slightly different distribution
    # from the test set.
    DatasetSpec("fashion_mnist", 1, 28, ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                                         "Sneaker", "Bag", "Ankle boot"), augment="crop"),
    # `data.path` holding train/<class>/* and test/<class>/*: channels, size and classes come from the images.
    DatasetSpec("imagefolder", None, None, (), augment="crop_flip"),
)}


def auto_augment(dataset: str) -> str:
    """What `train.augment: auto` means for `dataset` (a data set name nin_bench does not know: crop_flip)."""
    spec = DATASETS.get(dataset)
    return spec.augment if spec else "crop_flip"
