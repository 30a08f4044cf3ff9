"""A CUDA self-check of every GPU path nin_bench measures with, each a pass/fail line with its figure.

Run first on a lent GPU (`python -m nin_bench gpu-session`): these paths cannot run on the CPU machines the suite
is developed on, so this is where a wrong CUDA number would first show. Each check is a function of the device
that returns a `Check`; one failing check never stops the others.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nin_bench.measure.ceilings import matmul_peak_flops
from nin_bench.measure.timing import iteration_times_ms, time_model
from nin_bench.models.nin import build_model
from nin_bench.runtime.device import (
    configure_cuda,
    fp32_precision,
    free_device_memory,
    is_oom,
)
from nin_bench.runtime.train_step import grad_scaler, train_step
from nin_bench.store.records import error_text

_MIB = 2**20
SHAPE = (3, 32, 32)


@dataclass
class Check:
    """One self-check: its name, whether it passed, its figure and what it means."""

    name: str
    passed: bool
    figure: str
    detail: str = ""


def _model(**kw: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("nin_cifar", **kw)


def check_events_vs_wall(device: torch.device) -> Check:
    """CUDA-event time of a loop of forward passes vs the wall clock of the same loop (synchronised)."""
    net = _model().to(device).eval()
    x = torch.randn(256, *SHAPE, device=device)

    def fwd() -> None:
        with torch.inference_mode():
            net(x)

    for _ in range(10):
        fwd()
    n = 50
    events_ms = sum(iteration_times_ms(fwd, device, n))
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fwd()
    torch.cuda.synchronize(device)
    wall_ms = (time.perf_counter() - t0) * 1e3
    ratio = events_ms / wall_ms
    return Check("events_vs_wall", 0.9 <= ratio <= 1.05, f"ratio {ratio:.3f}",
                 f"{n} forwards at batch 256: events {events_ms:.1f} ms, wall {wall_ms:.1f} ms")


def check_max_memory(device: torch.device) -> Check:
    """max_memory_allocated sees a known 256 MiB tensor."""
    free_device_memory(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    t = torch.empty(256 * _MIB // 4, dtype=torch.float32, device=device)
    peak = (torch.cuda.max_memory_allocated(device) - base) / _MIB
    del t
    return Check("max_memory_allocated", abs(peak - 256) <= 2, f"{peak:.1f} MiB", "a 256 MiB fp32 tensor")


def check_oom_then_ok(device: torch.device) -> Check:
    """An absurd batch gives an OOM error (recognised, memory freed) and the next setting succeeds."""
    model = _model()
    free_device_memory(device)
    base = torch.cuda.memory_allocated(device)
    try:
        # batch 2^18: a 3.2 GB input (quick to make on the host), a 206 GB first activation (more than any GPU)
        time_model(model, SHAPE, mode="forward", batch_size=2**18, device=device, warmup=0, repeats=3)
        oom = "no error"
    except Exception as exc:
        oom = "oom" if is_oom(exc) else error_text(exc)
    free_device_memory(device)
    left = (torch.cuda.memory_allocated(device) - base) / _MIB
    row = time_model(model, SHAPE, mode="forward", batch_size=128, device=device, warmup=2, repeats=5)
    ok = oom == "oom" and row["img_per_s"] > 0 and left < 64
    return Check("oom_row", ok, f"{oom}; next row {row['img_per_s']:.0f} img/s",
                 f"batch 2^18 then 128; {left:.1f} MiB left allocated after the OOM")


def check_bf16(device: torch.device) -> Check:
    """bf16 autocast runs the convs in bf16 and times a train step."""
    net = _model().to(device)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_dtype = net.features.block1.conv1(torch.randn(8, *SHAPE, device=device)).dtype
    row = time_model(_model(), SHAPE, mode="train_step", batch_size=256, device=device, dtype="bf16",
                     channels_last=True, warmup=5, repeats=10)
    ok = out_dtype == torch.bfloat16 and row["img_per_s"] > 0
    return Check("bf16", ok, f"{row['img_per_s']:.0f} train img/s", f"conv output dtype {out_dtype}")


def check_compile(device: torch.device) -> Check:
    """torch.compile rows are really compiled (graphs counted, no eager fallback) with a real compile_s."""
    row = time_model(_model(), SHAPE, mode="train_step", batch_size=128, device=device, dtype="bf16",
                     channels_last=True, compile=True, warmup=5, repeats=10)
    ok = row["compiled_graphs"] >= 1 and row["graph_breaks"] == 0 and row["compile_s"] > 1
    return Check("compile", ok, f"compile_s {row['compile_s']:.1f}; {row['img_per_s']:.0f} train img/s",
                 f"{row['compiled_graphs']} graphs, {row['graph_breaks']} breaks")


def check_cudnn_benchmark(device: torch.device) -> Check:
    """Timing runs with cuDNN autotuning on, and its rows say so."""
    row = time_model(_model(), SHAPE, mode="forward", batch_size=64, device=device, warmup=2, repeats=3)
    ok = row["cudnn_benchmark"] is True and torch.backends.cudnn.benchmark
    return Check("cudnn_benchmark", ok, f"cudnn.benchmark={torch.backends.cudnn.benchmark}",
                 f"fp32 conv precision {fp32_precision('conv')}, matmul {fp32_precision('matmul')}")


def check_fp16_scaler(device: torch.device) -> Check:
    """An fp16 train step of the no-BatchNorm NiN with its GradScaler: finite loss, a finite scale."""
    net = _model().to(device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scaler = grad_scaler("cuda", torch.float16)
    x, y = torch.randn(128, *SHAPE, device=device), torch.randint(0, 10, (128,), device=device)
    losses = [train_step(net, opt, x, y, autocast_dtype=torch.float16, scaler=scaler).item() for _ in range(5)]
    scale = scaler.get_scale()
    ok = all(math.isfinite(v) for v in losses) and math.isfinite(scale) and scale > 0
    return Check("fp16_grad_scaler", ok, f"scale {scale:g}", f"losses {[round(v, 3) for v in losses]}")


def check_peaks(device: torch.device) -> Check:
    """The MFU reference peaks (8192^3 GEMM) in fp32 (at the convs' precision) and bf16."""
    fp32, bf16 = (matmul_peak_flops(device, d) / 1e12 for d in ("fp32", "bf16"))
    return Check("mfu_peaks", fp32 > 0 and bf16 > fp32, f"fp32 {fp32:.0f} / bf16 {bf16:.0f} TFLOP/s",
                 f"fp32 at {fp32_precision('conv')} (the convs' precision)")


def check_resume(device: torch.device, dataset: Any, workdir: Any, *, subset: int = 20000, val_size: int = 5000,
                 width: float = 1.0) -> Check:
    """Two epochs interrupted after the first and resumed equal the uninterrupted run (deterministic mode); the
    figure also gives what deterministic mode costs against the default (autotuned) mode.

    The keyword arguments shrink it for a test on the CPU (where every run is deterministic anyway)."""
    from nin_bench.suite.config import TrainSettings
    from nin_bench.train.loop import train_model

    settings = TrainSettings(epochs=2, batch_size=128, lr=0.05, subset=subset, val_size=val_size,
                             schedule="onecycle", warmup_epochs=0.0, augment="crop", dtype="bf16",
                             deterministic=True)

    def run(s: TrainSettings, ckpt: Any = None, stop_after: int | None = None) -> Any:
        class Stop(Exception):
            pass

        def on_epoch(row: dict) -> None:
            if stop_after is not None and row["epoch"] == stop_after:
                raise Stop

        try:
            # BatchNorm: two epochs of the plain NiN may not leave chance level, and a diverged run ends early
            channels, side, _ = dataset.image_shape
            model = _model(in_channels=channels, input_size=side, batchnorm=True, width=width)
            return train_model(model, dataset, s, device=device, seed=0, checkpoint_path=ckpt, on_epoch=on_epoch,
                               progress=False)
        except Stop:
            return None

    whole = run(settings)
    ckpt = workdir / "resume-check.pt"
    ckpt.unlink(missing_ok=True)
    run(settings, ckpt, stop_after=1)
    resumed = run(settings, ckpt)
    fast = run(settings.model_copy(update={"deterministic": False}))
    if device.type == "cuda":
        configure_cuda(deterministic=False)  # what the rest of the batch measures with
    same = whole.final["test_acc"] == resumed.final["test_acc"] and \
        [e["train_loss"] for e in whole.epochs] == [e["train_loss"] for e in resumed.epochs]
    cost = fast.final["loop_img_per_s"] / whole.final["loop_img_per_s"]
    return Check("train_resume", same and resumed.final["epochs"] == 2,
                 f"test_acc {whole.final['test_acc']:.4f} vs resumed {resumed.final['test_acc']:.4f}",
                 f"deterministic mode: default mode trains {cost:.2f}x as fast "
                 f"({fast.final['loop_img_per_s']:.0f} vs {whole.final['loop_img_per_s']:.0f} img/s)")


CHECKS: tuple[Callable[[torch.device], Check], ...] = (
    check_events_vs_wall, check_max_memory, check_oom_then_ok, check_bf16, check_compile, check_cudnn_benchmark,
    check_fp16_scaler, check_peaks,
)
# By the name each check records. The default leaves out `compile` (one inductor compile, 20-60 s: a third of a
# call's 60 s for the self-check), which runs only when a compile step is asked for.
DEFAULT_CHECKS = ("events_vs_wall", "max_memory_allocated", "oom_row", "bf16", "cudnn_benchmark",
                  "fp16_grad_scaler", "mfu_peaks", "train_resume")
CPU_CHECKS = ("train_resume",)  # the one that runs on a CPU (a rehearsal): the others time CUDA itself
_NAMES = {"events_vs_wall": check_events_vs_wall, "max_memory_allocated": check_max_memory,
          "oom_row": check_oom_then_ok, "bf16": check_bf16, "compile": check_compile,
          "cudnn_benchmark": check_cudnn_benchmark, "fp16_grad_scaler": check_fp16_scaler, "mfu_peaks": check_peaks}
# The resume check shrunk for a CPU (as tests/test_gpu_ready.py runs it): seconds instead of minutes.
_CPU_RESUME = dict(subset=600, val_size=500, width=0.125)


def run_checks(device: torch.device, dataset: Any, workdir: Any, log: Callable[[str], None] = print,
               names: Sequence[str] | None = None) -> list[Check]:
    """Run the checks (a crash in one is its failure), printing each line as it finishes.

    Args:
        device: the CUDA device (or the CPU in a rehearsal, where only CPU_CHECKS make sense).
        dataset: the data set the resume check trains on (CIFAR-10 in the GPU batch, the only one it carries).
        workdir: a scratch folder for the resume check's checkpoint.
        log: where each "PASS/FAIL name: figure (detail)" line goes.
        names: which checks, by recorded name (None: every check).

    Returns:
        One Check per check run, in the order of `names`.
    """
    shrink = _CPU_RESUME if device.type == "cpu" else {}
    table = {**_NAMES, "train_resume": lambda d: check_resume(d, dataset, workdir, **shrink)}
    unknown = [n for n in names or () if n not in table]
    if unknown:
        raise ValueError(f"unknown self-check {unknown[0]!r}; expected one of {sorted(table)}")
    checks = [(n, lambda f=table[n]: f(device)) for n in (names or table)]
    results = []
    for name, check in checks:
        try:
            result = check()
        except Exception as exc:  # a check that crashes fails with its error; the others still run
            result = Check(name, False, "crashed", error_text(exc))
        free_device_memory(device)
        log(f"{'PASS' if result.passed else 'FAIL'} {result.name}: {result.figure}"
            + (f" ({result.detail})" if result.detail else ""))
        results.append(result)
    return results
