"""Timing stage: forward and train-step throughput with one protocol (the device's ceilings: `ceilings.py`).

The protocol (timm `benchmark.py`, torch.utils.benchmark): copy the model to the device, build one fixed random
batch, run the first call (timed apart when compiling), warm up, then time each of `repeats` iterations on its own
(CUDA events on GPU, `perf_counter` on CPU) and report the median and the inter-quartile range. Per-iteration
times rather than one total let the record show spread, so a noisy machine is visible instead of averaged away.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nin_bench.runtime.compiled import (
    check_compiled,
    compile_fresh,
    compile_stats,
    no_eager_fallback,
)
from nin_bench.runtime.device import (
    configure_cuda,
    fp32_precision,
    free_device_memory,
    is_oom,
)
from nin_bench.runtime.train_step import (
    DTYPES,
    amp_dtype,
    autocast,
    grad_scaler,
    train_step,
)

MODES = ("forward", "train_step")
_MIB = 2**20
_INPUT_SEED = 0  # fixed so every row of a sweep times the same batch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def iteration_times_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Time each of `repeats` calls of fn on its own.

    Args:
        fn: the work of one iteration.
        device: where fn's work runs; CUDA uses events, anything else perf_counter.
        repeats: number of timed calls.

    Returns:
        Per-call times in milliseconds.
    """
    if device.type != "cuda":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times
    with torch.cuda.device(device):  # events record on the current device's stream: make it the timed device
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
        sync(device)  # start from an idle stream so warm-up work is not billed to the first iteration
        for start, end in events:
            start.record()
            fn()
            end.record()
        # One sync at the end: syncing inside the loop would add host latency to every iteration.
        sync(device)
    return [start.elapsed_time(end) for start, end in events]


def _cpu_status_kb(field: str) -> int | None:
    """Read one `kB` field (VmRSS, VmHWM) of /proc/self/status; None where procfs is missing."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class _PeakMemory:
    """Peak memory around a block: CUDA max_memory_allocated, or the rise of the process's RSS high-water mark."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss_kb: int | None = None

    def start(self) -> None:
        """Reset the peak counters before the model copy is made, so the copy, batch and work are all counted."""
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        with contextlib.suppress(OSError, AttributeError):
            # Hand freed heap back to the OS first; otherwise pages a previous row freed are reused without
            # raising RSS and this row's peak would be under-counted.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0, proc(5))
        except OSError:
            return
        self.rss_kb = _cpu_status_kb("VmRSS")

    def stop(self) -> tuple[float | None, str]:
        """Read the peak since `start`.

        Returns:
            (peak MiB, method): CUDA absolute peak allocated; CPU peak RSS minus RSS at start; (None, "unavailable").
        """
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / _MIB, "cuda_max_memory_allocated"
        hwm_kb = _cpu_status_kb("VmHWM")
        if self.rss_kb is None or hwm_kb is None:
            return None, "unavailable"
        return max(0, hwm_kb - self.rss_kb) * 1024 / _MIB, "cpu_vmhwm_delta"


def _make_batch(
    input_shape: tuple[int, ...], batch_size: int, num_classes: int, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed random batch (inputs stay fp32: autocast casts them, as in a real AMP loop)."""
    gen = torch.Generator().manual_seed(_INPUT_SEED)
    x = torch.randn(batch_size, *input_shape, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _make_iteration(
    model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: str
) -> Callable[[], Any]:
    """The work of one timed iteration: a forward pass (eval) or one `steps.train_step` with SGD (train).

    Args:
        model: the device copy (possibly compiled).
        mode: "forward" or "train_step".
        x, y: the batch.
        device: its device (for autocast).
        dtype: "fp32", "bf16" or "fp16".

    Returns:
        A no-argument callable.
    """
    if mode == "forward":
        model.eval()

        def forward() -> None:
            with autocast(device.type, amp_dtype(dtype)):
                model(x)

        return forward
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    amp = amp_dtype(dtype)
    scaler = grad_scaler(device.type, amp)  # fp16 steps carry their loss scaling, as in training
    return lambda: train_step(model, optimizer, x, y, autocast_dtype=amp, scaler=scaler)


def _summarise(times_ms: list[float], batch_size: int) -> dict[str, float]:
    """Median, quartiles (linear interpolation, as numpy/torch.quantile), min and img/s of per-iteration times."""
    if len(times_ms) == 1:
        p25 = median = p75 = times_ms[0]
    else:
        p25, median, p75 = statistics.quantiles(times_ms, n=4, method="inclusive")
    return {
        "ms_median": median,
        "ms_iqr": p75 - p25,
        "ms_p25": p25,
        "ms_p75": p75,
        "ms_min": min(times_ms),
        "img_per_s": batch_size / (median / 1e3),
    }


def _first_call_s(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call, synchronised (the compile happens inside the first call of a compiled model)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


def _measure(
    model: nn.Module, input_shape: tuple[int, ...], device: torch.device, opts: dict[str, Any]
) -> dict[str, Any]:
    """The protocol itself; `time_model` documents the arguments (opts holds its keyword options)."""
    cuda_settings = configure_cuda(deterministic=False) if device.type == "cuda" else {"cudnn_benchmark": None}
    memory = _PeakMemory(device)
    memory.start()
    net = copy.deepcopy(model).to(device)  # a copy: train_step would otherwise change the caller's weights
    if opts["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    x, y = _make_batch(input_shape, opts["batch_size"], opts["num_classes"], device, opts["channels_last"])
    if opts["compile"]:
        net = compile_fresh(net)  # shares the copy's parameters, so the optimizer below steps the same weights
    fn = _make_iteration(net, opts["mode"], x, y, device, opts["dtype"])
    grad_mode = torch.inference_mode() if opts["mode"] == "forward" else contextlib.nullcontext()
    compiled: dict[str, Any] = {"compiled_graphs": None, "graph_breaks": None}
    with grad_mode, (no_eager_fallback() if opts["compile"] else contextlib.nullcontext()):
        compile_s = _first_call_s(fn, device) if opts["compile"] else None
        if opts["compile"]:
            compiled = compile_stats()
            check_compiled(compiled)
        for _ in range(opts["warmup"]):
            fn()
        times_ms = iteration_times_ms(fn, device, opts["repeats"])
    peak_mem_mb, peak_mem_method = memory.stop()
    return {
        **{k: opts[k] for k in ("mode", "batch_size", "dtype", "channels_last", "compile")},
        "threads": torch.get_num_threads(),
        "warmup": opts["warmup"],
        "repeats": opts["repeats"],
        **_summarise(times_ms, opts["batch_size"]),
        "peak_mem_mb": peak_mem_mb,
        "peak_mem_method": peak_mem_method,
        "compile_s": compile_s,
        **compiled,
        "cudnn_benchmark": cuda_settings["cudnn_benchmark"],
        "fp32_conv_precision": fp32_precision("conv") if device.type == "cuda" else None,
    }


def time_model(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    mode: str,
    batch_size: int,
    device: str | torch.device,
    dtype: str = "fp32",
    channels_last: bool = False,
    compile: bool = False,
    warmup: int = 5,
    repeats: int = 20,
    num_classes: int = 10,
) -> dict[str, Any]:
    """Time a forward pass or a training step of a copy of `model` on one fixed random batch.

    Args:
        model: the network; it is deep-copied, so its weights and device are left untouched.
        input_shape: per-image shape (C, H, W).
        mode: "forward" (eval, torch.inference_mode) or "train_step" (train mode, SGD lr 0.01 momentum 0.9 via
            `steps.train_step`).
        batch_size: images per iteration.
        device: "cpu", "cuda", "cuda:1", ...
        dtype: "fp32", or "bf16"/"fp16" run under autocast (weights and inputs stay fp32).
        channels_last: convert model and input to torch.channels_last.
        compile: wrap the copy in torch.compile after resetting dynamo (static shapes, whole graph, no eager
            fallback: see `nin_bench.runtime.compiled`); the first call's wall time, which holds the whole compile, is
            reported as `compile_s`, and the graphs dynamo built as `compiled_graphs`.
        warmup: untimed iterations after the first call.
        repeats: timed iterations (>= 1).
        num_classes: range of the random labels.

    Returns:
        A flat dict: mode, batch_size, dtype, channels_last, compile, threads, warmup, repeats, ms_median, ms_iqr,
        ms_p25, ms_p75, ms_min, img_per_s, peak_mem_mb (MiB, or None), peak_mem_method, compile_s (s, or None),
        compiled_graphs, graph_breaks (None unless compiled), cudnn_benchmark, fp32_conv_precision (None on CPU).
        On CUDA, cuDNN autotuning is switched on first (`device.configure_cuda`); the warm-up absorbs it.

    Raises:
        ValueError: unknown mode or dtype, or repeats < 1.
        torch.cuda.OutOfMemoryError: the batch does not fit (also when torch.compile wrapped the OOM); memory is
            freed first so the sweep can go on.
    """
    if mode not in MODES or dtype not in DTYPES or repeats < 1 or warmup < 0:
        raise ValueError(
            f"time_model: mode={mode!r} (allowed {MODES}), dtype={dtype!r} (allowed {sorted(DTYPES)}), "
            f"repeats={repeats} (>= 1), warmup={warmup} (>= 0)"
        )
    device = torch.device(device)
    opts = dict(mode=mode, batch_size=batch_size, dtype=dtype, channels_last=channels_last, compile=compile,
                warmup=warmup, repeats=repeats, num_classes=num_classes)
    try:
        return _measure(model, input_shape, device, opts)
    except Exception as exc:
        if not is_oom(exc):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # Outside the except block the traceback (whose frames hold the model copy and activations) is released,
    # so collecting and emptying the cache here actually returns that memory before the next setting is tried.
    free_device_memory(device)
    raise torch.cuda.OutOfMemoryError(message)
