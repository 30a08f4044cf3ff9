"""A training run's data on its device: the hold-out and subset split, normalisation, evaluation and GAP maps.

The images stay uint8 on the device (a whole CIFAR-10 is 184 MB); `Split.prep` turns a batch into normalised
float input where it is used, so no float copy of the data set is ever held.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nin_bench.data.datasets import Dataset, channel_stats
from nin_bench.runtime.train_step import autocast

MAP_IMAGES = 10  # one test image per class (the first 10 classes) for the GAP confidence-map figure
# Seeds the generator that picks the training images `train_eval_acc` is measured on: a constant of its own, so the
# sample is the same for every variant and seed and draws nothing from the training run's generators.
TRAIN_EVAL_SEED = 2014


@dataclass
class Split:
    """The device-resident uint8 data of one run and how to turn a batch into network input."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    scale: torch.Tensor  # [1, C, 1, 1]: 1 / (255 * std)
    shift: torch.Tensor  # [1, C, 1, 1]: -mean / std
    input_size: int | None
    channels_last: bool

    def prep(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 [B, C, H, W] -> normalised float32 network input (resized first when input_size asks)."""
        memory = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.to(torch.float32)
        if self.input_size is not None and self.input_size != x.shape[-1]:
            # Resize before normalising, on the device, bilinear like d2l's transforms.Resize(224).
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x.contiguous(memory_format=memory).mul_(self.scale).add_(self.shift)


def split_data(dataset: Dataset, settings: Any, device: torch.device, input_size: int | None) -> Split:
    """Hold out the validation images, take the training and test subsets, move everything to the device.

    Args:
        dataset: the decoded data set.
        settings: TrainSettings (val_size, subset, test_subset, channels_last).
        device: where training runs.
        input_size: network input side, or None for the data's own size.

    Returns:
        The run's data. Validation = the last `val_size` training images; training = the first `subset` of the rest
        (the same images for every variant and seed); normalisation statistics come from those training images.
        Test = the first `test_subset` test images (all of them when None).
    """
    n = dataset.train_x.shape[0]
    if settings.val_size >= n:
        raise ValueError(f"train.val_size {settings.val_size} leaves no training images (the set has {n})")
    keep = n - settings.val_size
    if settings.subset is not None:
        keep = min(keep, settings.subset)
    train_x, train_y = dataset.train_x[:keep], dataset.train_y[:keep]
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in channel_stats(train_x))
    test = slice(settings.test_subset)  # slice(None): all
    on = (lambda t: t.to(device))
    return Split(on(train_x), on(train_y), on(dataset.train_x[n - settings.val_size:]),
                  on(dataset.train_y[n - settings.val_size:]), on(dataset.test_x[test]), on(dataset.test_y[test]),
                  on(1.0 / (255.0 * std)), on(-mean / std), input_size, settings.channels_last)


def train_eval_sample(split: Split, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed sample of training images `train_eval_acc` is measured on (uint8 images and labels, on the device).

    Args:
        split: the run's data.
        size: images wanted (`train.train_eval_size`); all the training images when there are fewer; 0: none.

    Returns:
        (images, labels) in training-set order, picked by a generator seeded with `TRAIN_EVAL_SEED` alone: the
        same images for every variant and seed of a training split, and no draw from the run's generators.
    """
    n = split.train_x.shape[0]
    if size >= n:
        return split.train_x, split.train_y
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(TRAIN_EVAL_SEED))[:size].sort().values
    idx = idx.to(split.train_x.device)
    return split.train_x[idx], split.train_y[idx]


def evaluate(net: nn.Module, split: Split, x: torch.Tensor, y: torch.Tensor, batch_size: int,
             amp: torch.dtype | None, preds: list[torch.Tensor] | None = None) -> tuple[float | None, float | None]:
    """Mean cross-entropy and accuracy over (x, y), in eval mode under inference_mode.

    Args:
        net: the network (train mode is restored afterwards).
        split: supplies `prep`.
        x, y: uint8 images and labels on the device.
        batch_size: images per forward pass.
        amp: autocast dtype or None.
        preds: when given, each batch's predicted classes (int64, on the device) are appended to it, in order.

    Returns:
        (loss, accuracy), or (None, None) for an empty set.
    """
    if x.shape[0] == 0:
        return None, None
    net.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    with torch.inference_mode(), autocast(x.device.type, amp):
        for i in range(0, x.shape[0], batch_size):
            logits = net(split.prep(x[i:i + batch_size])).float()
            loss_sum += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum")
            predicted = logits.argmax(1)
            correct += (predicted == y[i:i + batch_size]).sum()
            if preds is not None:
                preds.append(predicted)
    net.train()
    return loss_sum.item() / x.shape[0], correct.item() / x.shape[0]


def confidence_maps(model: nn.Module, split: Split, classes: list[str]) -> dict[str, np.ndarray]:
    """The GAP class maps of the first test image of each of the first 10 classes (fp32, eval mode).

    Args:
        model: a GAP-head NiN (`forward_features` returns [B, num_classes, h, w]).
        split: the run's data.
        classes: class names.

    Returns:
        maps float32 [k, num_classes, h, w], images uint8 [k, C, H, W], labels, preds int64 [k], classes str.
    """
    idx = [int(torch.nonzero(split.test_y == c)[0]) for c in range(min(MAP_IMAGES, len(classes)))
           if bool((split.test_y == c).any())]
    images = split.test_x[idx]
    model.eval()
    with torch.inference_mode():
        maps = model.forward_features(split.prep(images)).float()
        preds = model.forward_head(maps).argmax(1)
    model.train()
    return {"maps": maps.cpu().numpy().astype(np.float32), "images": images.cpu().numpy(),
            "labels": split.test_y[idx].cpu().numpy(), "preds": preds.cpu().numpy(),
            "classes": np.array(classes, dtype=str)}
