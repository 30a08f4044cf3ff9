"""Our training loop vs a d2l-style loop: same model, same data, same train step, img/s and their ratio.

The d2l-style loop is the one in d2l.ai's `train_ch6`: a torchvision-style Dataset that returns one PIL image per
index through `transforms.ToTensor()`, a `DataLoader(batch_size=128, shuffle=True, num_workers=0)`, NCHW float
batches, and a host read of the loss every step. Ours is `nin_bench.train.loop.train_model` (uint8 data on the device,
batches gathered by index, channels_last); its `loop_img_per_s` covers the whole epoch (draws, gathers, steps).
Both run the shared `steps.train_step` from the same initial weights, with no augmentation.

Usage (data root from env NIN_BENCH_DATA):
    NIN_BENCH_DATA=../shared/data python scripts/bench_loop_vs_d2l.py [--steps 30] [--width 0.5] [--batchnorm]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms
from torchvision.datasets import VisionDataset

from nin_bench.data.datasets import load_dataset
from nin_bench.models.nin import build_model
from nin_bench.runtime.train_step import train_step
from nin_bench.suite.config import TrainSettings
from nin_bench.train.loop import train_model


class FashionLike(VisionDataset):
    """torchvision.datasets.FashionMNIST's __getitem__ over in-memory uint8 tensors: PIL image -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform) -> None:
        super().__init__(root="", transform=transform)
        self.data, self.targets = x[:, 0], y  # [N, 28, 28] like torchvision's

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        img = Image.fromarray(self.data[i].numpy(), mode="L")
        return self.transform(img), int(self.targets[i])


def d2l_img_per_s(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, batch_size: int) -> float:
    """img/s of `steps` d2l-style steps (data loading included), from the first batch on."""
    loader = DataLoader(FashionLike(x, y, transforms.ToTensor()), batch_size=batch_size, shuffle=True,
                        num_workers=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    model.train()
    t0, images, total = time.perf_counter(), 0, 0.0
    for step, (xb, yb) in enumerate(loader):
        if step == steps:
            break
        loss = train_step(model, optimizer, xb, yb)
        total += float(loss) * xb.shape[0]  # d2l's Accumulator reads the loss on the host every step
        images += xb.shape[0]
    return images / (time.perf_counter() - t0)


def ours_img_per_s(model: torch.nn.Module, ds, steps: int, batch_size: int) -> float:
    """img/s of one epoch of exactly `steps` steps of train_model (evaluation excluded by its own clock)."""
    small = dataclasses.replace(ds, test_x=ds.test_x[:batch_size], test_y=ds.test_y[:batch_size])
    settings = TrainSettings(epochs=1, batch_size=batch_size, subset=steps * batch_size, val_size=0,
                             augment="none", lr=0.1)
    result = train_model(model, small, settings, device="cpu", seed=0, progress=False)
    return result.final["loop_img_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps timed per loop")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--batchnorm", action="store_true")
    args = parser.parse_args()
    ds = load_dataset("fashion_mnist")  # root: env NIN_BENCH_DATA
    torch.manual_seed(0)
    model = build_model("nin_cifar", width=args.width, batchnorm=args.batchnorm, in_channels=1)
    # Warm both memory formats' kernels once, so neither loop pays the first-call setup.
    for fmt in (torch.contiguous_format, torch.channels_last):
        warm = copy.deepcopy(model).to(memory_format=fmt)
        opt = torch.optim.SGD(warm.parameters(), lr=0.01)
        train_step(warm, opt, torch.randn(args.batch_size, 1, 28, 28).contiguous(memory_format=fmt),
                   torch.zeros(args.batch_size, dtype=torch.long))
    n = len(ds.train_x) - 5000  # the same training images train_model uses (last 5,000 held out)
    d2l = d2l_img_per_s(copy.deepcopy(model), ds.train_x[:n], ds.train_y[:n], args.steps, args.batch_size)
    ours = ours_img_per_s(copy.deepcopy(model), ds, args.steps, args.batch_size)
    print(f"model nin_cifar width {args.width} batchnorm {args.batchnorm}, Fashion-MNIST 1x28x28, batch "
          f"{args.batch_size}, {args.steps} steps, {torch.get_num_threads()} threads")
    print(f"d2l-style loop: {d2l:8.1f} img/s")
    print(f"nin_bench loop: {ours:8.1f} img/s")
    print(f"ratio (ours / d2l): {ours / d2l:.2f}")


if __name__ == "__main__":
    main()
