"""The device's ceilings, measured once per run and handed to every unit: the FLOP/s ceiling per dtype (the MFU
reference and the roofline's roof), the memory bandwidth (the roofline's slope), and the two uses of them
(`utilisation`, `roofline`).

A ceiling is the best of its candidates, each recorded under its source: the large GEMM through BLAS
(`gemm_blas`: torch.mm) and, on the CPU, through oneDNN (`gemm_onednn`: the same GEMM as a 1x1 convolution), the
best convolution the suite itself runs (`conv_suite`: its kxk and 1x1 convolutions at their real shapes and a
representative batch), and on the CPU the ISA peak (`isa`: cores x clock x FMA width x FMA units, `peaks.py`).
A row that still attains more than the ceiling lifts it (`row`): an MFU above 1 never reaches a record. A
ceiling handed in (tests, a context that was given one) is `given`. On CUDA the datasheet peak (`peaks.py`) is
stored beside the measured ceiling, under its own name, never mixed into it.

One owner, so every timing row of a run (local or on any Ray worker) divides by the same ceiling: MFU is
comparable across units only when the reference is. `measure_ceilings` is called by the runner before the first
timing unit; the values travel inside the run context.
"""
from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

from nin_bench.measure.conv_ceiling import ConvShape, best_ms, conv_peak
from nin_bench.measure.peaks import datasheet_flops, read_isa_peak
from nin_bench.measure.timing import INPUT_SEED, iteration_times_ms, sync
from nin_bench.runtime.device import fp32_precision, matmul_precision_like_convs
from nin_bench.runtime.train_step import DTYPES

ROW, GIVEN = "row", "given"  # the sources of a ceiling lifted by a row, and of one handed in


@dataclass(frozen=True)
class Peak:
    """One dtype's ceiling as the rows use it.

    Attributes:
        flops: the ceiling in FLOP/s (no row of the run attains more).
        source: the candidate that set it (gemm_blas, gemm_onednn, conv_suite, isa, row, given), None unknown.
        datasheet: the datasheet's dense peak in FLOP/s (CUDA cards the table holds; None elsewhere).
    """

    flops: float
    source: str | None = None
    datasheet: float | None = None


@dataclass
class Ceilings:
    """What a device can do at best: the FLOP/s ceiling per dtype (with every candidate and its source) and the
    copy bandwidth in bytes/s.

    Missing entries are measured on first use (`peak`, `bandwidth`) and kept, so a context that was handed no
    ceilings (inspect, the GPU self-check) measures each once. A `peak_flops` entry handed in without candidates
    is a given ceiling: nothing is measured for it.

    Attributes:
        device: "cpu" or "cuda".
        peak_flops: dtype -> the ceiling in FLOP/s (the best candidate).
        bytes_per_s: the copy bandwidth (None until measured).
        measured_s: seconds spent measuring.
        candidates: dtype -> {source: FLOP/s}, every candidate measured or read (and a row's lift).
        convs: the suite's convolutions, timed for the `conv_suite` candidate (empty: no such candidate).
        datasheet: dtype -> the datasheet peak (CUDA), None for an unknown card.
        isa: what the ISA peak was read from (`IsaPeak.describe`), None where it could not be read or on CUDA.
    """

    device: str
    peak_flops: dict[str, float] = field(default_factory=dict)
    bytes_per_s: float | None = None
    measured_s: float = 0.0
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    convs: tuple[ConvShape, ...] = ()
    datasheet: dict[str, float | None] = field(default_factory=dict)
    isa: dict[str, Any] | None = None

    def peak(self, dtype: str) -> float:
        """The FLOP/s ceiling in `dtype` (measured now when not yet known)."""
        if dtype not in self.peak_flops:
            t0 = time.perf_counter()
            found = self._measure(dtype)
            self.candidates[dtype] = found
            self.peak_flops[dtype] = max(found.values())
            self.measured_s += time.perf_counter() - t0
        return self.peak_flops[dtype]

    def _measure(self, dtype: str) -> dict[str, float]:
        """Every candidate of `dtype`: the GEMMs, the suite's best convolution, the ISA peak (CPU)."""
        found = dict(gemm_peaks(self.device, dtype))
        if self.convs:
            best = conv_peak(self.convs, self.device, dtype)
            if best is not None:
                found["conv_suite"] = best
        if torch.device(self.device).type == "cuda":
            tf32 = fp32_precision("conv") == "tf32"
            self.datasheet[dtype] = datasheet_flops(torch.cuda.get_device_name(self.device), dtype, tf32)
        else:
            isa = isa_peak_now()
            if isa is not None and dtype in isa.flops_per_s:
                found["isa"] = isa.flops_per_s[dtype]
                self.isa = isa.describe()
        return found

    def source(self, dtype: str) -> str:
        """The source of `dtype`'s ceiling: its best candidate, or "given" when it was handed in."""
        self.peak(dtype)
        found = self.candidates.get(dtype)
        return max(found, key=found.__getitem__) if found else GIVEN

    def ceiling(self, dtype: str) -> Peak:
        """`dtype`'s ceiling with its source and the datasheet figure beside it."""
        return Peak(self.peak(dtype), self.source(dtype), self.datasheet.get(dtype))

    def lift(self, dtype: str, attained: Iterable[float]) -> Peak:
        """Raise `dtype`'s ceiling to the best FLOP/s rows attained, where that is above it (source "row").

        Called with all the rows of a unit (or of a round of units) before any of them is given its MFU, so they
        share one ceiling and none exceeds it.

        Args:
            dtype: the rows' dtype.
            attained: achieved FLOP/s of each row.

        Returns:
            The ceiling after the lift.
        """
        best = max(attained, default=0.0)
        if best > self.peak(dtype):
            found = self.candidates.setdefault(dtype, {})
            if not found:
                found[GIVEN] = self.peak_flops[dtype]
            found[ROW] = best
            self.peak_flops[dtype] = best
        return self.ceiling(dtype)

    def bandwidth(self) -> float:
        """The copy bandwidth in bytes/s (measured now when not yet known)."""
        if self.bytes_per_s is None:
            t0 = time.perf_counter()
            self.bytes_per_s = memory_bandwidth(self.device)
            self.measured_s += time.perf_counter() - t0
        return self.bytes_per_s

    def describe(self) -> dict[str, Any]:
        """The manifest's account of the ceilings: per dtype the ceiling, its source and every candidate
        (TFLOP/s), the datasheet peaks (CUDA) and what the ISA peak was read from (CPU)."""
        tf = (lambda f: None if f is None else f / 1e12)
        return {"peak_tflops": {d: tf(f) for d, f in self.peak_flops.items()},
                "peak_source": {d: self.source(d) for d in self.peak_flops},
                "candidates_tflops": {d: {s: tf(f) for s, f in c.items()} for d, c in self.candidates.items()},
                "datasheet_tflops": {d: tf(f) for d, f in self.datasheet.items()}, "isa": self.isa,
                "convs_timed": len(self.convs)}


def isa_peak_now():
    """The ISA peak of this machine for the threads torch computes with (at most the CPUs this process may use)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return read_isa_peak(min(torch.get_num_threads(), usable))


def measure_ceilings(device: str, dtypes: list[str], bandwidth: bool,
                     convs: Iterable[ConvShape] = ()) -> Ceilings:
    """Measure the ceiling of every dtype in `dtypes` (and the bandwidth when `bandwidth`), once, for a run.

    Args:
        device: "cpu" or "cuda".
        dtypes: the dtypes the run's timing rows use.
        bandwidth: whether a roofline needs the memory bandwidth (layer timing on).
        convs: the suite's convolutions (`conv_shapes`), timed as the `conv_suite` candidate.
    """
    c = Ceilings(device, convs=tuple(sorted(set(convs))))
    for dtype in dtypes:
        c.peak(dtype)
    if bandwidth:
        c.bandwidth()
    return c


def matmul_peak_flops(device: str | torch.device, dtype: str = "fp32", n: int | None = None) -> float:
    """The best of `gemm_peaks`: the large GEMM's FLOP/s through BLAS and (CPU) oneDNN."""
    return max(gemm_peaks(device, dtype, n).values())


def gemm_peaks(device: str | torch.device, dtype: str = "fp32", n: int | None = None) -> dict[str, float]:
    """Achievable FLOP/s of a large n x n GEMM in `dtype`: through BLAS (torch.mm) and, on the CPU, oneDNN.

    On CUDA in fp32 the matmul runs in the precision cuDNN gives fp32 convolutions (TF32 by default), as the
    model's convolutions do. A too-small or too-briefly warmed GEMM under-reads the peak and inflates MFU: on an
    H100 a 4096^3 GEMM takes ~0.3 ms, so CUDA uses 8192^3, at least 0.5 s of warm-up (clocks, cuBLAS heuristics)
    and the best of 30. On the CPU the same GEMM also runs through oneDNN, as a 1x1 convolution (the library the
    model's convolutions use): `torch.mm` goes to the BLAS torch was built with (MKL, OpenBLAS), which on some
    CPUs is far from the machine's peak (measured on a 2-core AMD EPYC: MKL's sgemm 0.21 TFLOP/s, oneDNN's 1x1
    convolution about twice that).

    Args:
        device: "cpu" or a CUDA device.
        dtype: "fp32", "bf16" or "fp16".
        n: matrix size; None means 8192 on CUDA and 4096 on the CPU (on 2 cores 2048^2 under-read by ~17 %).

    Returns:
        {"gemm_blas": 2 n^3 / best seconds} and on the CPU "gemm_onednn" (absent for a dtype oneDNN's CPU
        convolution lacks).
    """
    device = torch.device(device)
    cuda = device.type == "cuda"
    n = n if n is not None else (8192 if cuda else 4096)
    gen = torch.Generator().manual_seed(INPUT_SEED)
    a = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    b = torch.randn(n, n, generator=gen).to(device, DTYPES[dtype])
    precision = matmul_precision_like_convs() if cuda and dtype == "fp32" else contextlib.nullcontext()
    with precision:
        out = {"gemm_blas": 2 * n**3 / (best_ms(lambda: torch.mm(a, b), device) / 1e3)}
    if not cuda:
        with contextlib.suppress(RuntimeError):  # a dtype oneDNN's CPU convolution lacks: no oneDNN figure
            out["gemm_onednn"] = 2 * n**3 / (_onednn_gemm_ms(n, dtype, gen) / 1e3)
    return out


def _onednn_gemm_ms(n: int, dtype: str, gen: torch.Generator) -> float:
    """The best time of an n x n x n GEMM done by oneDNN on the CPU: a 1x1 convolution with n/4 channels in and
    out over 4 images of (n/32) x 128 pixels, channels_last: 16 n pixels x (n/4)^2 multiply-adds, the same 2 n^3
    FLOPs as the n x n matmul."""
    c = n // 4
    x = torch.randn(4, c, n // 32, 128, generator=gen).to(DTYPES[dtype]).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, c, 1, 1, generator=gen).to(DTYPES[dtype]).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        return best_ms(lambda: torch.nn.functional.conv2d(x, w), torch.device("cpu"))


def utilisation(img_per_s: float, flops_per_img: float | None, peak_flops: float | Peak) -> dict[str, Any]:
    """Achieved TFLOP/s and MFU: (FLOPs per image x img/s) / the run's ceiling in the same dtype.

    A row attaining more than the ceiling it is handed is its own ceiling (source "row"): MFU never exceeds 1.
    Rows of one unit share a ceiling when the caller lifts it first (`add_utilisation` does).

    Args:
        img_per_s: measured throughput.
        flops_per_img: FLOPs of one image's forward (or forward + backward), None when unknown.
        peak_flops: the ceiling (`Ceilings.ceiling`), or a bare FLOP/s figure (its source unknown: None).

    Returns:
        {"flops_per_img", "achieved_tflops", "peak_tflops", "peak_source", "mfu", "datasheet_tflops",
        "mfu_datasheet"} (None where FLOPs or the datasheet figure are unknown).
    """
    peak = peak_flops if isinstance(peak_flops, Peak) else Peak(peak_flops)
    achieved = None if flops_per_img is None else img_per_s * flops_per_img
    if achieved is not None and achieved > peak.flops:
        peak = Peak(achieved, ROW, peak.datasheet)
    ratio = (lambda ref: None if achieved is None or ref is None else achieved / ref)
    return {"flops_per_img": flops_per_img, "achieved_tflops": None if achieved is None else achieved / 1e12,
            "peak_tflops": peak.flops / 1e12, "peak_source": peak.source, "mfu": ratio(peak.flops),
            "datasheet_tflops": None if peak.datasheet is None else peak.datasheet / 1e12,
            "mfu_datasheet": ratio(peak.datasheet)}


def add_utilisation(rows: list[dict[str, Any]], ceilings: Ceilings,
                    flops_of: Callable[[dict[str, Any]], float | None]) -> list[dict[str, Any]]:
    """Give every ok timing row its utilisation against the run's ceiling, lifted first to what the rows attain.

    What the timing stage calls once the rows of a unit (or of a round over units) are known: the ceiling of each
    dtype is raised to the best row where a row exceeds it (`Ceilings.lift`, source "row"), so all these rows
    share one ceiling, no MFU exceeds 1, and later units divide by the lifted ceiling too.

    Args:
        rows: timing rows (`mode`, `dtype`, `img_per_s`, `status`); error rows are left as they are.
        ceilings: the run's ceilings (lifted in place).
        flops_of: FLOPs per image of a row (its variant's forward or forward + backward), None when unknown.

    Returns:
        The same rows, updated in place with `utilisation`'s keys.
    """
    ok = [r for r in rows if r.get("status", "ok") == "ok"]
    attained: dict[str, list[float]] = {}
    for r in ok:
        flops = flops_of(r)
        if flops is not None:
            attained.setdefault(r["dtype"], []).append(r["img_per_s"] * flops)
    for dtype, values in attained.items():
        ceilings.lift(dtype, values)
    for r in ok:
        r.update(utilisation(r["img_per_s"], flops_of(r), ceilings.ceiling(r["dtype"])))
    return rows


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
    copy_ms = min(iteration_times_ms(lambda: dst.copy_(src), device, 10))
    return 2 * nbytes / (copy_ms / 1e3)


def roofline(rows: list[dict[str, Any]], peak_flops: float | Peak, bytes_per_s: float) -> list[dict[str, Any]]:
    """Add each layer's bound and how much of it the forward attains.

    The roof is the ceiling handed in, lifted to the best FLOP/s a layer's forward attains where one exceeds it
    (source "row"), so no compute-bound layer attains more than 1. The slope is the large copy's bandwidth (DRAM):
    a memory-bound layer whose data stays in cache can move bytes faster, so its `attained` can pass 1, which
    says exactly that.

    Args:
        rows: `time_layers` rows.
        peak_flops: the ceiling in the rows' dtype (`Ceilings.ceiling`), or a bare FLOP/s figure.
        bytes_per_s: the device's memory bandwidth (`memory_bandwidth`).

    Returns:
        New rows with `bound` ("memory" if the layer's intensity is below the ridge peak / bandwidth, else
        "compute"), `roofline_ms` (max of flops / peak and bytes / bandwidth: the least time the roofline allows),
        `attained` (roofline_ms / fwd_ms; None for the rest row or fwd_ms <= 0), `peak_tflops`, `peak_source`,
        `datasheet_tflops`, `mem_gb_per_s`.
    """
    peak = peak_flops if isinstance(peak_flops, Peak) else Peak(peak_flops)
    best = max((r["flops"] / (r["fwd_ms"] / 1e3) for r in rows
                if r["kind"] != "rest" and r["flops"] and r["fwd_ms"] > 0), default=0.0)
    if best > peak.flops:
        peak = Peak(best, ROW, peak.datasheet)
    ridge = peak.flops / bytes_per_s
    out = []
    for r in rows:
        extra: dict[str, Any] = {"peak_tflops": peak.flops / 1e12, "peak_source": peak.source,
                                 "datasheet_tflops": None if peak.datasheet is None else peak.datasheet / 1e12,
                                 "mem_gb_per_s": bytes_per_s / 1e9, "bound": None, "roofline_ms": None,
                                 "attained": None}
        if r["kind"] != "rest" and r["bytes"]:
            floor_ms = max(r["flops"] / peak.flops, r["bytes"] / bytes_per_s) * 1e3
            extra.update(bound="memory" if r["flops"] / r["bytes"] < ridge else "compute", roofline_ms=floor_ms,
                         attained=floor_ms / r["fwd_ms"] if r["fwd_ms"] > 0 else None)
        out.append({**r, **extra})
    return out
