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
import dataclasses
import math
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nin_bench.runtime.compiled import (
    check_compiled,
    compile_shared,
    compile_stats,
    no_eager_fallback,
    reset_compiled,
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
INPUT_SEED = 0  # fixed so every row of a sweep times the same batch
# Iterations after the warm-up over which a contender's peak memory is read (CUDA: the autotuning is done by then).
_MEMORY_ITERS = 2
_MAX_WINDOW_ITERS = 1000  # a cap on the iterations min_window_ms may ask of one window


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
    """Peak memory of one contender: on CUDA the peak allocated after its warm-up less what was allocated before
    its copy existed; on the CPU the rise of the process's RSS high-water mark from before its copy."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rss_kb: int | None = None
        self.base_bytes = 0

    def start(self) -> None:
        """Note where memory stands before the model copy is made, so the copy, batch and work are all counted."""
        if self.device.type == "cuda":
            sync(self.device)
            self.base_bytes = torch.cuda.memory_allocated(self.device)
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

    def after_warmup(self) -> None:
        """On CUDA, start the peak here: the warm-up's cuDNN autotuning tries algorithms with workspaces the
        timed iterations never hold (torch.backends.cudnn.benchmark), and those would be the peak otherwise."""
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)

    def stop(self) -> tuple[float | None, str]:
        """Read the peak since `start` (CUDA: since `after_warmup`).

        Returns:
            (peak MiB, method), or (None, "unavailable").
        """
        if self.device.type == "cuda":
            sync(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) - self.base_bytes
            return peak / _MIB, "cuda_max_allocated_after_warmup"
        hwm_kb = _cpu_status_kb("VmHWM")
        if self.rss_kb is None or hwm_kb is None:
            return None, "unavailable"
        return max(0, hwm_kb - self.rss_kb) * 1024 / _MIB, "cpu_vmhwm_delta"


def _make_batch(
    input_shape: tuple[int, ...], batch_size: int, num_classes: int, device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One fixed random batch (inputs stay fp32: autocast casts them, as in a real AMP loop)."""
    gen = torch.Generator().manual_seed(INPUT_SEED)
    x = torch.randn(batch_size, *input_shape, generator=gen).to(device)
    y = torch.randint(0, num_classes, (batch_size,), generator=gen).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _make_iteration(
    model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, device: torch.device, dtype: str
) -> Callable[[], Any]:
    """The work of one timed iteration: a forward pass (eval) or one `train_step` with SGD (train).

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


def summarise_rounds(rounds_ms: list[list[float]], batch_size: int) -> dict[str, float]:
    """A row's figures from its rounds: the median over rounds of each round's median (`ms_median`, `img_per_s`),
    the per-iteration quartiles and minimum of all rounds pooled, and the spread of the round medians.

    Args:
        rounds_ms: per round, the per-iteration times (ms) of its timing window.
        batch_size: images per iteration.
    """
    medians = [statistics.median(r) for r in rounds_ms]
    median = statistics.median(medians)
    pooled = _summarise([t for r in rounds_ms for t in r], batch_size)
    return {**pooled, "ms_median": median, "img_per_s": batch_size / (median / 1e3), "rounds": len(rounds_ms),
            "round_ms_min": min(medians), "round_ms_max": max(medians),
            "round_spread_pct": 100.0 * (max(medians) - min(medians)) / median}


def round_windows(repeats: int, rounds: int) -> list[int]:
    """The timed iterations of each round: `repeats` split as evenly as it goes (earlier rounds take the rest).

    Raises:
        ValueError: fewer repeats than rounds (a round must time at least one iteration).
    """
    if not 1 <= rounds <= repeats:
        raise ValueError(f"{repeats} timed iterations cannot fill {rounds} rounds (1 <= rounds <= repeats)")
    return [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]


def round_order(keys: list[str], seed: int, round_index: int, salt: str = "") -> list[str]:
    """The order the contenders run in one round: `keys` shuffled by a generator seeded from (seed, salt, round),
    so every round's order is fixed by the recorded seed and a resumed run repeats it."""
    order = list(keys)
    random.Random(f"{seed}:{salt}:{round_index}").shuffle(order)
    return order


def _first_call_s(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call, synchronised (the compile happens inside the first call of a compiled model)."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0


@dataclass(frozen=True)
class Setting:
    """One timing setting: what tells two rows of one model apart (`schema.SETTING_KEYS`)."""

    mode: str
    batch_size: int
    dtype: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.dtype not in DTYPES:
            raise ValueError(f"timing setting: mode={self.mode!r} (allowed {MODES}), dtype={self.dtype!r} "
                             f"(allowed {sorted(DTYPES)})")


class Contender:
    """One model made ready to be timed in a setting: its device copy, fixed batch, compile and warm-up done.

    Preparing runs the first call (the compile, when compiling), `warmup` untimed iterations, and measures the
    peak memory: on CUDA the peak allocated during `_MEMORY_ITERS` iterations *after* the warm-up (cuDNN's
    autotuning workspace is not the model's), minus what was allocated before this copy existed (other contenders
    stay resident); on the CPU the rise of the process's RSS high-water mark over the copy, warm-up and those
    iterations. `window(repeats)` then times `repeats` iterations, as often as the rounds ask.
    """

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], device: torch.device, setting: Setting,
                 warmup: int, num_classes: int = 10, min_window_ms: float = 0.0) -> None:
        self.device, self.setting = device, setting
        cuda_settings = configure_cuda(deterministic=False) if device.type == "cuda" else {"cudnn_benchmark": None}
        memory = _PeakMemory(device)
        memory.start()
        net = copy.deepcopy(model).to(device)  # a copy: train_step would otherwise change the caller's weights
        if setting.channels_last:
            net = net.to(memory_format=torch.channels_last)
        x, y = _make_batch(input_shape, setting.batch_size, num_classes, device, setting.channels_last)
        before = compile_stats() if setting.compile else None
        if setting.compile:
            net = compile_shared(net)  # shares the copy's parameters, so the optimizer steps the same weights
        self.fn = _make_iteration(net, setting.mode, x, y, device, setting.dtype)
        compiled: dict[str, Any] = {"compiled_graphs": None, "graph_breaks": None}
        compile_s = None
        with self._grad_mode():
            if setting.compile:
                compile_s = _first_call_s(self.fn, device)
                compiled = {k: v - before[k] for k, v in compile_stats().items()}
                check_compiled(compiled)
            for _ in range(warmup):
                self.fn()
            memory.after_warmup()
            t0 = time.perf_counter()
            for _ in range(_MEMORY_ITERS):
                self.fn()
            sync(device)
            iter_ms = (time.perf_counter() - t0) * 1e3 / _MEMORY_ITERS
        peak_mem_mb, peak_mem_method = memory.stop()
        # a window must last min_window_ms: a 1 ms iteration timed 10 times is one scheduler hiccup from noise
        self.min_iters = max(1, min(_MAX_WINDOW_ITERS, math.ceil(min_window_ms / iter_ms))) if iter_ms > 0 else 1
        self.info: dict[str, Any] = {
            "threads": torch.get_num_threads(), "warmup": warmup, "peak_mem_mb": peak_mem_mb,
            "peak_mem_method": peak_mem_method, "compile_s": compile_s, **compiled,
            "cudnn_benchmark": cuda_settings["cudnn_benchmark"],
            "fp32_conv_precision": fp32_precision("conv") if device.type == "cuda" else None,
        }

    def _grad_mode(self) -> contextlib.AbstractContextManager:
        return torch.inference_mode() if self.setting.mode == "forward" else contextlib.nullcontext()

    def window(self, repeats: int) -> list[float]:
        """Per-iteration times (ms) of one round's timing window: `repeats` timed iterations, or as many more as
        the window needs to last `min_window_ms` (estimated from the iterations after the warm-up)."""
        with self._grad_mode():
            return iteration_times_ms(self.fn, self.device, max(repeats, self.min_iters))

    def close(self) -> None:
        """Drop the device copy, its batch and optimizer (the next setting's contenders need the memory)."""
        self.fn = None


def interleave(contenders: dict[str, Contender], *, windows: list[int], seed: int, salt: str = "",
               start: int = 0, on_round: Callable[[int, dict[str, list[float]], list[str]], None] | None = None,
               on_fail: Callable[[str, BaseException], None] | None = None) -> None:
    """Time the contenders in rounds: round r times every contender for one window of `windows[r]` iterations,
    back to back, in an order shuffled per round (`round_order`), so a slow spell of the machine lands on all of
    them alike and their per-round times pair.

    Args:
        contenders: key -> prepared contender (all of one setting); a failed one is removed by `on_fail`.
        windows: timed iterations of each round (`round_windows`); its length is the number of rounds.
        seed: the recorded seed of the round orders.
        salt: what else fixes the orders (the setting), so two settings do not share one order.
        start: the first round to run (rounds before it were measured by an earlier, interrupted run).
        on_round: called after each round with (round index, key -> that round's per-iteration ms, the order).
        on_fail: called with (key, exception) when a contender's window fails (it must drop that contender);
            None: the exception propagates.
    """
    for r in range(start, len(windows)):
        order = round_order(sorted(contenders), seed, r, salt)
        times = {}
        for key in order:
            try:
                times[key] = contenders[key].window(windows[r])
            except Exception as exc:
                if on_fail is None:
                    raise
                on_fail(key, exc)
        if on_round is not None:
            on_round(r, times, [k for k in order if k in times])


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
    """Time a forward pass or a training step of a copy of `model` on one fixed random batch (one window).

    The same protocol as a suite's rounds (`Contender`, `interleave`), for one model and one round: what
    `inspect`, the self-check and a training run's reference throughput use.

    Args:
        model: the network; it is deep-copied, so its weights and device are left untouched.
        input_shape: per-image shape (C, H, W).
        mode: "forward" (eval, torch.inference_mode) or "train_step" (train mode, SGD lr 0.01 momentum 0.9 via
            `train_step`).
        batch_size: images per iteration.
        device: "cpu", "cuda", "cuda:1", ...
        dtype: "fp32", or "bf16"/"fp16" run under autocast (weights and inputs stay fp32).
        channels_last: convert model and input to torch.channels_last.
        compile: wrap the copy in torch.compile after resetting dynamo (static shapes, whole graph, no eager
            fallback: see `nin_bench.runtime.compiled`); the first call's wall time, which holds the whole compile,
            is reported as `compile_s`, and the graphs dynamo built as `compiled_graphs`.
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
    if repeats < 1 or warmup < 0:
        raise ValueError(f"time_model: repeats={repeats} (>= 1), warmup={warmup} (>= 0)")
    setting = Setting(mode, batch_size, dtype, channels_last, compile)
    device = torch.device(device)
    if compile:
        reset_compiled()
    with oom_freed(device), (no_eager_fallback() if compile else contextlib.nullcontext()):
        contender = Contender(model, input_shape, device, setting, warmup, num_classes)
        times = contender.window(repeats)
        contender.close()
    return {**dataclasses.asdict(setting), **contender.info, "repeats": repeats,
            **_summarise(times, batch_size)}


@contextlib.contextmanager
def oom_freed(device: torch.device) -> Iterator[None]:
    """Turn an out-of-memory error inside the block (also one torch.compile wrapped) into a plain
    `torch.cuda.OutOfMemoryError`, raised after the device's memory is freed, so the sweep can go on."""
    try:
        yield
        return
    except Exception as exc:
        if not is_oom(exc):
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    # Outside the except block the traceback (whose frames hold the model copy and activations) is released,
    # so collecting and emptying the cache here actually returns that memory before the next setting is tried.
    free_device_memory(device)
    raise torch.cuda.OutOfMemoryError(message)
