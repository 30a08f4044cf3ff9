"""The device's ceilings, measured once per run and handed to every unit: the matmul peak per dtype (the MFU
reference), the memory bandwidth (the roofline's slope), and the two uses of them (`utilisation`, `roofline`).

One owner, so every timing row of a run (local or on any Ray worker) divides by the same peak: MFU is comparable
across units only when the reference is. `measure_ceilings` is called by the runner before the first timing unit;
the values travel inside the run context.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nin_bench.measure.timing import INPUT_SEED, iteration_times_ms, sync
from nin_bench.runtime.device import matmul_precision_like_convs
from nin_bench.runtime.train_step import DTYPES


@dataclass
class Ceilings:
    """What a device can do at best, as measured on it: matmul FLOP/s per dtype and copy bandwidth in bytes/s.

    Missing entries are measured on first use (`peak`, `bandwidth`) and kept, so a context that was handed no
    ceilings (inspect, the GPU self-check) measures each once.
    """

    device: str
    peak_flops: dict[str, float] = field(default_factory=dict)  # dtype -> FLOP/s
    bytes_per_s: float | None = None
    measured_s: float = 0.0  # seconds spent measuring them

    def peak(self, dtype: str) -> float:
        """The matmul FLOP/s in `dtype` (measured now when not yet known)."""
        if dtype not in self.peak_flops:
            t0 = time.perf_counter()
            self.peak_flops[dtype] = matmul_peak_flops(self.device, dtype)
            self.measured_s += time.perf_counter() - t0
        return self.peak_flops[dtype]

    def bandwidth(self) -> float:
        """The copy bandwidth in bytes/s (measured now when not yet known)."""
        if self.bytes_per_s is None:
            t0 = time.perf_counter()
            self.bytes_per_s = memory_bandwidth(self.device)
            self.measured_s += time.perf_counter() - t0
        return self.bytes_per_s


def measure_ceilings(device: str, dtypes: list[str], bandwidth: bool) -> Ceilings:
    """Measure the peak of every dtype in `dtypes` (and the bandwidth when `bandwidth`), once, for a run.

    Args:
        device: "cpu" or "cuda".
        dtypes: the dtypes the run's timing rows use.
        bandwidth: whether a roofline needs the memory bandwidth (layer timing on).
    """
    c = Ceilings(device)
    for dtype in dtypes:
        c.peak(dtype)
    if bandwidth:
        c.bandwidth()
    return c


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
    gen = torch.Generator().manual_seed(INPUT_SEED)
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
            sync(device)  # the wall clock must see the work, not the queue
    return min(iteration_times_ms(fn, device, repeats=repeats))


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


def memory_bandwidth(device: str | torch.device, nbytes: int | None = None) -> float:
    """Achievable memory bandwidth in bytes/s: the best of several copies of a large buffer (read + write).

    Args:
        device: "cpu" or a CUDA device.
        nbytes: buffer size; None means 1 GiB on CUDA and 256 MiB on the CPU (beyond any last-level cache).

    Returns:
        2 * nbytes / (best copy time in seconds).
    """
    device = torch.device(device)
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)  # ones, not empty: pages really mapped
    dst = torch.empty_like(src)
    for _ in range(3):  # faults dst's pages in and wakes the threads / clocks
        dst.copy_(src)
    sync(device)
    # best of 10: about 0.5 s for 256 MiB at ~10 GB/s on 2 cores, noise only ever slows a copy down
    best_ms = min(iteration_times_ms(lambda: dst.copy_(src), device, 10))
    return 2 * nbytes / (best_ms / 1e3)


def roofline(rows: list[dict[str, Any]], peak_flops: float, bytes_per_s: float) -> list[dict[str, Any]]:
    """Add each layer's bound and how much of it the forward attains.

    Args:
        rows: `time_layers` rows.
        peak_flops: the device's matmul FLOP/s in the rows' dtype (`matmul_peak_flops`).
        bytes_per_s: the device's memory bandwidth (`memory_bandwidth`).

    Returns:
        New rows with `bound` ("memory" if the layer's intensity is below the ridge peak / bandwidth, else
        "compute"), `roofline_ms` (max of flops / peak and bytes / bandwidth: the least time the roofline allows),
        `attained` (roofline_ms / fwd_ms; None for the rest row or fwd_ms <= 0), `peak_tflops`, `mem_gb_per_s`.
    """
    ridge = peak_flops / bytes_per_s
    out = []
    for r in rows:
        extra: dict[str, Any] = {"peak_tflops": peak_flops / 1e12, "mem_gb_per_s": bytes_per_s / 1e9,
                                 "bound": None, "roofline_ms": None, "attained": None}
        if r["kind"] != "rest" and r["bytes"]:
            floor_ms = max(r["flops"] / peak_flops, r["bytes"] / bytes_per_s) * 1e3
            extra.update(bound="memory" if r["flops"] / r["bytes"] < ridge else "compute", roofline_ms=floor_ms,
                         attained=floor_ms / r["fwd_ms"] if r["fwd_ms"] > 0 else None)
        out.append({**r, **extra})
    return out
