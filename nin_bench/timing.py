"""Timing stage: forward and train-step throughput with one protocol, plus the device's matmul peak.

The protocol (timm `benchmark.py`, torch.utils.benchmark): copy the model to the device, build one fixed random
batch, run the first call (timed apart when compiling), warm up, then time each of `repeats` iterations on its own
(CUDA events on GPU, `perf_counter` on CPU) and report the median and the inter-quartile range. Per-iteration
times rather than one total let the record show spread, so a noisy machine is visible instead of averaged away.
"""
from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from nin_bench.compiled import check_compiled, compile_fresh, compile_stats, no_eager_fallback
from nin_bench.device import configure_cuda, fp32_precision, free_device_memory, is_oom, matmul_precision_like_convs
from nin_bench.steps import DTYPES, amp_dtype, autocast, grad_scaler, train_step

MODES = ("forward", "train_step")
_MIB = 2**20
_INPUT_SEED = 0  # fixed so every row of a sweep times the same batch


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count explicitly, so every timing row states what it ran with.

    Args:
        threads: number of threads; None means os.cpu_count().

    Returns:
        The thread count torch now uses (torch.get_num_threads()).
    """
    torch.set_num_threads(threads if threads is not None else (os.cpu_count() or 1))
    return torch.get_num_threads()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _iteration_times_ms(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
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
        _sync(device)  # start from an idle stream so warm-up work is not billed to the first iteration
        for start, end in events:
            start.record()
            fn()
            end.record()
        # One sync at the end: syncing inside the loop would add host latency to every iteration.
        _sync(device)
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
            _sync(self.device)
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
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
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
        times_ms = _iteration_times_ms(fn, device, opts["repeats"])
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
            fallback: see `nin_bench.compiled`); the first call's wall time, which holds the whole compile, is
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


def matmul_peak_flops(device: str | torch.device, dtype: str = "fp32", n: int | None = None) -> float:
    """Achievable FLOP/s of the device: the best of many timed n x n GEMMs in `dtype` (the MFU reference).

    On CUDA in fp32 the matmul runs in the precision cuDNN gives fp32 convolutions (TF32 by default), as the
    model's convolutions do. A too-small or too-briefly warmed GEMM under-reads the peak and inflates MFU: on an
    H100 a 4096^3 GEMM takes ~0.3 ms, so CUDA uses 8192^3, at least 0.5 s of warm-up (clocks, cuBLAS heuristics)
    and the best of 30. On the CPU the same GEMM also runs through oneDNN, as a 1x1 convolution (the library the
    model's convolutions use), and the faster of the two counts: `torch.mm` goes to the BLAS torch was built
    with, which on some CPUs is far from the machine's peak (measured on a 2-core AMD EPYC: MKL's sgemm 0.21
    TFLOP/s, oneDNN's 1x1 convolution about twice that, the model's 5x5 convolutions 0.3), and a reference below
    what the model attains would put MFU above 100 %.

    Args:
        device: "cpu" or a CUDA device.
        dtype: "fp32", "bf16" or "fp16".
        n: matrix size; None means 8192 on CUDA and 4096 on the CPU (on 2 cores 2048^2 under-read by ~17 %).

    Returns:
        2 * n**3 / (best time in seconds).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = n if n is not None else (8192 if cuda else 4096)
    gen = torch.Generator().manual_seed(_INPUT_SEED)
    a = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    b = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    precision = matmul_precision_like_convs() if cuda and dtype == "fp32" else contextlib.nullcontext()
    with precision:
        best_ms = _best_ms(lambda: torch.mm(a, b), device)
    if not cuda:
        with contextlib.suppress(RuntimeError):  # a dtype oneDNN's CPU convolution lacks: the BLAS figure stands
            best_ms = min(best_ms, _onednn_gemm_ms(n, dtype, gen))
    return 2 * n**3 / (best_ms / 1e3)


def _best_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """The best time of a GEMM after its warm-up (CUDA: >= 0.5 s and 10 calls, best of 30; CPU: 2 calls, best
    of 5, since a 4096^3 GEMM takes about a second on 2 cores)."""
    cuda = device.type == "cuda"
    warmup_s, warmup_min, repeats = (0.5, 10, 30) if cuda else (0.0, 2, 5)
    t0, done = time.perf_counter(), 0
    while done < warmup_min or time.perf_counter() - t0 < warmup_s:
        fn()
        done += 1
        if cuda and done % 10 == 0:
            _sync(device)  # the wall clock must see the work, not the queue
    return min(_iteration_times_ms(fn, device, repeats=repeats))


def _onednn_gemm_ms(n: int, dtype: str, gen: torch.Generator) -> float:
    """The best time of an n x n x n GEMM done by oneDNN on the CPU: a 1x1 convolution with n/4 channels in and
    out over 4 images of (n/32) x 128 pixels, channels_last: 16 n pixels x (n/4)^2 multiply-adds, the same 2 n^3
    FLOPs as the n x n matmul."""
    c = n // 4
    x = torch.randn(4, c, n // 32, 128, generator=gen).to(DTYPES[dtype]).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 1, 1, generator=gen).to(DTYPES[dtype]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return _best_ms(lambda: torch.nn.functional.conv2d(x, w), torch.device("cpu"))


def utilisation(img_per_s: float, flops_per_img: float | None, peak_flops: float) -> dict[str, Any]:
    """Achieved TFLOP/s and MFU: (FLOPs per image x img/s) / the run's matmul peak in the same dtype.

    Args:
        img_per_s: measured throughput.
        flops_per_img: FLOPs of one image's forward (or forward + backward), None when unknown.
        peak_flops: the device's matmul FLOP/s (`matmul_peak_flops`).

    Returns:
        {"flops_per_img", "achieved_tflops", "peak_tflops", "mfu"} (None where FLOPs are unknown).
    """
    achieved = None if flops_per_img is None else img_per_s * flops_per_img
    return {"flops_per_img": flops_per_img, "achieved_tflops": None if achieved is None else achieved / 1e12,
            "peak_tflops": peak_flops / 1e12, "mfu": None if achieved is None else achieved / peak_flops}
