"""The best convolution the suite itself runs: one candidate of the FLOP/s ceiling (`ceilings.py`).

A large square GEMM is not always the fastest thing a device does with a model's FLOPs: on a CPU oneDNN's direct
5x5 convolution can beat the BLAS sgemm the GEMM goes to, and then a model's rows would attain more than the
"peak". So the kxk and 1x1 convolutions of the suite's models are timed at their real shapes, at a representative
batch and in the suite's layout, and the best FLOP/s among them is a candidate ceiling (`conv_suite`).
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from nin_bench.measure.timing import iteration_times_ms, sync
from nin_bench.runtime.train_step import DTYPES


@dataclass(frozen=True, order=True)
class ConvShape:
    """One convolution as the suite runs it: its input tensor (at a representative batch) and its weights."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int = 1
    channels_last: bool = True

    def flops(self) -> int:
        """2 x multiply-adds of the whole batch (bias not counted, as the profile's counters count)."""
        oh = (self.height + 2 * self.padding[0] - self.kernel[0]) // self.stride[0] + 1
        ow = (self.width + 2 * self.padding[1] - self.kernel[1]) // self.stride[1] + 1
        per_out = self.in_channels // self.groups * self.kernel[0] * self.kernel[1]
        return 2 * self.batch * self.out_channels * oh * ow * per_out


def best_ms(fn: Callable[[], Any], device: torch.device, light: bool = False) -> float:
    """The best time of a ceiling's kernel (a GEMM, a convolution) after its warm-up (CUDA: >= 0.5 s and 10 calls, best of 30; CPU: 2 calls, best
    of 5, since a 4096^3 GEMM takes about a second on 2 cores). `light` (one of many convolutions): CUDA >= 0.1 s
    and 10 calls, best of 20; CPU 1 call, best of 3."""
    cuda = device.type == "cuda"
    if light:
        warmup_s, warmup_min, repeats = (0.1, 10, 20) if cuda else (0.0, 1, 3)
    else:
        warmup_s, warmup_min, repeats = (0.5, 10, 30) if cuda else (0.0, 2, 5)
    t0, done = time.perf_counter(), 0
    while done < warmup_min or time.perf_counter() - t0 < warmup_s:
        fn()
        done += 1
        if cuda and done % 10 == 0:
            sync(device)  # the wall clock must see the work, not the queue
    return min(iteration_times_ms(fn, device, repeats=repeats))


def conv_shapes(model: nn.Module, input_shape: tuple[int, ...], batch: int,
                channels_last: bool = True) -> list[ConvShape]:
    """The shape of every nn.Conv2d the model's forward calls, at `batch` (read with forward hooks at batch 1).

    Args:
        model: the network (left in the mode it was in; one eval forward of a zero image on the CPU).
        input_shape: per-image (C, H, W).
        batch: the batch the shapes are timed at (the suite's reference batch).
        channels_last: the layout the suite times.

    Returns:
        One ConvShape per call, in forward order.
    """
    found: list[ConvShape] = []

    def record(m: nn.Conv2d, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        _, c, h, w = inputs[0].shape
        pad = m.padding if isinstance(m.padding, tuple) else (0, 0)  # "valid"; "same" is not used by the models
        found.append(ConvShape(batch, c, h, w, m.out_channels, tuple(m.kernel_size), tuple(m.stride),
                               tuple(pad), m.groups, channels_last))

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, nn.Conv2d)]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return found


def conv_peak(shapes: Iterable[ConvShape], device: str | torch.device, dtype: str) -> float | None:
    """The best FLOP/s of the convolutions' forward, each timed on its own (best of a few after a warm-up).

    On CUDA cuDNN autotuning is on for the measurement (as timing rows have it) and restored after. Tensors are
    made in `dtype` directly (no autocast casts: the convolution alone). A shape the device cannot run in that
    dtype (a missing kernel, out of memory) is skipped.

    Args:
        shapes: `conv_shapes` of the suite's models (duplicates are timed once).
        device: "cpu" or a CUDA device.
        dtype: "fp32", "bf16" or "fp16".

    Returns:
        The best FLOP/s, or None when no shape could be timed.
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    previous = torch.backends.cudnn.benchmark
    best = None
    try:
        if cuda:
            torch.backends.cudnn.benchmark = True
        for s in sorted(set(shapes)):
            with contextlib.suppress(RuntimeError):  # no kernel for this dtype here, or OOM: skip the shape
                fps = s.flops() / (best_ms(_conv_call(s, device, dtype), device, light=True) / 1e3)
                best = fps if best is None else max(best, fps)
    finally:
        torch.backends.cudnn.benchmark = previous
    return best


def _conv_call(s: ConvShape, device: torch.device, dtype: str):
    """A no-argument call running the convolution `s` (with a bias, as the models' convolutions have)."""
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    x = torch.randn(s.batch, s.in_channels, s.height, s.width, generator=gen)
    w = torch.randn(s.out_channels, s.in_channels // s.groups, *s.kernel, generator=gen)
    x, w = (t.to(device, DTYPES[dtype]).contiguous(memory_format=fmt) for t in (x, w))
    b = torch.zeros(s.out_channels, device=device, dtype=DTYPES[dtype])

    def call() -> None:
        with torch.inference_mode():
            F.conv2d(x, w, b, s.stride, s.padding, 1, s.groups)

    return call
