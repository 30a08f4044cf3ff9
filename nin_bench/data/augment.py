"""Vectorised data augmentation on uint8 batches, on whatever device the data lives on.

The random draws (crop offsets, flip decisions) are made for a whole epoch at once from a CPU `torch.Generator`
seeded by the caller, then indexed per batch. Drawing on the CPU makes them independent of the device and of the
model, so every variant trained with the same seed sees the same crops and flips (paired comparisons), and one
host-to-device copy per epoch keeps per-step host syncs out of the training loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nin_bench.suite.presets import auto_augment

AUGMENTS = ("none", "flip", "crop", "crop_flip")
CROP_PAD = 4  # the paper's and airbench's CIFAR crop: zero-pad 4 px, crop back to the original size


@dataclass(frozen=True)
class Draws:
    """One epoch of augmentation draws, indexed by position in the epoch's order.

    Attributes:
        offsets: int64 [N, 2] (row, col) crop offsets in [0, 2*pad], or None for no crop.
        flips: bool [N], True where the image is flipped left-right, or None for no flip.
    """

    offsets: torch.Tensor | None
    flips: torch.Tensor | None

    def to(self, device: torch.device) -> "Draws":
        """Copy to `device` (one transfer per epoch)."""
        move = (lambda t: None if t is None else t.to(device))
        return Draws(move(self.offsets), move(self.flips))

    def slice(self, start: int, stop: int) -> "Draws":
        """The draws of epoch positions [start, stop)."""
        cut = (lambda t: None if t is None else t[start:stop])
        return Draws(cut(self.offsets), cut(self.flips))


def resolve_augment(augment: str, dataset: str) -> str:
    """Turn "auto" into the data set's default; pass explicit choices through.

    Args:
        augment: "auto", "none", "flip", "crop" or "crop_flip".
        dataset: data set name ("cifar10", "fashion_mnist", "imagefolder").

    Returns:
        One of AUGMENTS.
    """
    if augment == "auto":
        return auto_augment(dataset)
    if augment not in AUGMENTS:
        raise ValueError(f"augment {augment!r}: expected 'auto' or one of {list(AUGMENTS)}")
    return augment


def draw(n: int, augment: str, generator: torch.Generator, pad: int = CROP_PAD) -> Draws:
    """Draw crop offsets and flips for `n` images from a CPU generator.

    Args:
        n: images in the epoch.
        augment: one of AUGMENTS.
        generator: a seeded CPU torch.Generator (crop offsets are drawn before flips).
        pad: crop padding in pixels.

    Returns:
        The epoch's Draws (fields None for the parts `augment` does not use).
    """
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator) if "crop" in augment else None
    flips = torch.rand(n, generator=generator) < 0.5 if "flip" in augment else None
    return Draws(offsets, flips)


def random_crop(x: torch.Tensor, offsets: torch.Tensor, pad: int = CROP_PAD) -> torch.Tensor:
    """Zero-pad each image by `pad` pixels and crop it back to its size at its own offset.

    Two `gather`s (rows, then columns) do every image's crop at once, without a Python loop over images.

    Args:
        x: [B, C, H, W] (any dtype, e.g. uint8).
        offsets: int64 [B, 2] (row, col) offsets in [0, 2*pad], on x's device.
        pad: padding in pixels.

    Returns:
        [B, C, H, W], same dtype; offset (pad, pad) returns the image unchanged.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[:, 0, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = offsets[:, 1, None] + torch.arange(w, device=x.device)  # [B, W]
    x = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return x.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def random_flip(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip left-right the images where `flips` is True.

    Args:
        x: [B, C, H, W].
        flips: bool [B] on x's device.

    Returns:
        [B, C, H, W].
    """
    return torch.where(flips[:, None, None, None], x.flip(3), x)


def apply(x: torch.Tensor, draws: Draws, pad: int = CROP_PAD) -> torch.Tensor:
    """Apply a batch's draws (crop first, then flip).

    Args:
        x: [B, C, H, W] batch.
        draws: that batch's Draws (same B), on x's device.
        pad: crop padding in pixels.

    Returns:
        The augmented batch.
    """
    if draws.offsets is not None:
        x = random_crop(x, draws.offsets, pad)
    if draws.flips is not None:
        x = random_flip(x, draws.flips)
    return x
