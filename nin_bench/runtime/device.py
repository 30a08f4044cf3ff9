"""Device facts and settings: CUDA availability, cuDNN autotuning and determinism, fp32 precision, OOM handling.

One place for the process-global torch flags the stages set, so every record and the manifest can say what they
ran with. Only the public `fp32_precision` API of torch >= 2.9 is used where it exists: once anything in a process
sets it, torch's legacy `allow_tf32` getters raise.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import torch

_MIB = 2**20
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory")
# cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2; torch's reproducibility notes).
CUBLAS_DETERMINISTIC = ":4096:8"


def steady_cpu_heap() -> str | None:
    """Make glibc's malloc keep freed memory for reuse: no mmap per large block, no trimming of the heap top.

    torch's CPU allocator is plain malloc. With glibc's defaults every activation map above the (adaptive) mmap
    threshold is mmapped and unmapped, and the heap top is trimmed after each step, so an iteration can pay page
    faults for every activation it writes. Measured on 2 cores (width-0.25 nin_cifar, batch 128 forward, one
    fresh process each): 9.5-17 ms by process, bimodal, against 9.5-10 ms with this; batch 32 4.3 -> 2.5 ms.
    The first variant of a sweep was the one hit, so its timing disagreed with everything measured after it.
    Keeping freed memory is the steady state of a long training loop and what jemalloc/tcmalloc (which
    PyTorch recommends on CPUs) do. Memory freed is still returned by `malloc_trim`, which the CPU peak-memory
    measurement calls, so its readings are unchanged.

    Returns:
        A description for the manifest, or None where the C library is not glibc (nothing was changed).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    m_trim_threshold, m_mmap_max = -1, -4  # glibc's <malloc.h> parameter numbers
    if mallopt(m_mmap_max, 0) == 1 and mallopt(m_trim_threshold, 2**31 - 1) == 1:
        return "glibc malloc: M_MMAP_MAX=0, M_TRIM_THRESHOLD=2^31-1 (freed memory kept for reuse)"
    return None


def cuda_fallback_reason() -> str | None:
    """Why a CUDA build of torch sees no GPU (old driver, no device, empty CUDA_VISIBLE_DEVICES), or None.

    Returns:
        One line, or None when CUDA works or torch was built without CUDA (a CPU build falling back is no surprise).
    """
    if torch.version.cuda is None or torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        torch.cuda.init()
        why = "torch.cuda.is_available() is False"
    except Exception as exc:  # torch says why (no driver, driver too old, no device) in its message
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if visible is not None and not visible.strip():
        why += " (CUDA_VISIBLE_DEVICES is empty)"
    return f"torch {torch.__version__} was built with CUDA {torch.version.cuda} but sees no CUDA device: {why}"


def use_deterministic_cublas() -> None:
    """Give cuBLAS the fixed workspace it needs to be deterministic (the one setter of CUBLAS_WORKSPACE_CONFIG).

    cuBLAS reads the variable when a handle is created, so a deterministic run calls this before any GPU matmul
    (the CLI does, before the run's GEMM peak); `configure_cuda` calls it again, harmlessly, for library users.
    A value the user set stays.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_DETERMINISTIC)


def configure_cuda(deterministic: bool) -> dict[str, Any]:
    """Set cuDNN autotuning and determinism for what runs next, and say what was set.

    Timing and fast training use `cudnn.benchmark = True` (the warm-up absorbs the autotune). Deterministic mode
    (opt-in, `train.deterministic`) turns autotuning off, asks cuDNN for deterministic algorithms and makes torch
    raise on any op without a deterministic implementation (`torch.use_deterministic_algorithms`).

    Args:
        deterministic: the run asks for bit-reproducible CUDA results.

    Returns:
        {"cudnn_benchmark", "deterministic"} as set.
    """
    if deterministic:
        use_deterministic_cublas()
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)
    return {"cudnn_benchmark": not deterministic, "deterministic": deterministic}


def _precision(module: Any) -> str | None:
    value = getattr(module, "fp32_precision", None)
    return None if value in (None, "none", "default") else str(value)


def fp32_precision(op: str) -> str:
    """The precision fp32 `op` ("matmul" or "conv") runs in on CUDA: "tf32" or "ieee" (full fp32).

    Reads the op's `fp32_precision`, then the generic `torch.backends.fp32_precision`; "none" means "inherit", and
    at the root the defaults are torch's: TF32 for cuDNN convolutions, IEEE for cuBLAS matmuls. Torch builds
    without that API fall back to the legacy `allow_tf32` flags.
    """
    module = torch.backends.cuda.matmul if op == "matmul" else torch.backends.cudnn.conv
    if hasattr(module, "fp32_precision"):
        value = _precision(module) or _precision(torch.backends)
        if value is None:
            value = "tf32" if op == "conv" else "ieee"
        return "tf32" if value == "tf32" else "ieee"
    legacy = torch.backends.cuda.matmul.allow_tf32 if op == "matmul" else torch.backends.cudnn.allow_tf32
    return "tf32" if legacy else "ieee"


@contextlib.contextmanager
def matmul_precision_like_convs() -> Iterator[str]:
    """Run fp32 matmuls in the precision fp32 convolutions use (TF32 by default), then restore the setting.

    The MFU reference for fp32 must be measured at the convs' precision, or fp32 MFU could exceed 1.

    Yields:
        The precision used ("tf32" or "ieee").
    """
    want = fp32_precision("conv")
    mm = torch.backends.cuda.matmul
    attr = "fp32_precision" if hasattr(mm, "fp32_precision") else "allow_tf32"
    previous = getattr(mm, attr)
    setattr(mm, attr, want if attr == "fp32_precision" else want == "tf32")
    try:
        yield want
    finally:
        setattr(mm, attr, previous)


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory error, also when it arrives wrapped (inductor, dynamo, a RuntimeError's text).

    Walks `__cause__` / `__context__`, since torch.compile re-raises a kernel's OOM inside its own exceptions.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, torch.cuda.OutOfMemoryError) or isinstance(e, MemoryError):
            return True
        if any(t in str(e).lower() for t in _OOM_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def free_device_memory(device: torch.device) -> None:
    """Collect garbage, then hand cached CUDA blocks back, so the next setting starts clean.

    Call it after leaving an `except` block: inside it the traceback's frames still hold the failed setting's
    tensors, and `empty_cache` cannot free what is still referenced.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _driver_version() -> str | None:
    """The NVIDIA driver version from nvidia-smi (best effort; None where it is missing)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20, check=True).stdout.strip().splitlines()
        return out[0].strip() if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def cuda_facts(device: str) -> dict[str, Any]:
    """CUDA, cuDNN, driver and GPU facts for the manifest (None where not applicable, e.g. on the CPU).

    Args:
        device: "cuda" or "cpu": the run's device.

    Returns:
        torch_cuda_build, cuda_runtime, cudnn_version, driver_version, gpu_name, gpu_memory_gib, gpu_capability,
        gpu_count, cudnn_benchmark, cudnn_deterministic, fp32_matmul_precision, fp32_conv_precision.
    """
    facts: dict[str, Any] = {"torch_cuda_build": torch.version.cuda, "cuda_runtime": None, "cudnn_version": None,
                             "driver_version": None, "gpu_name": None, "gpu_memory_gib": None,
                             "gpu_capability": None, "gpu_count": None, "cudnn_benchmark": None,
                             "cudnn_deterministic": None, "fp32_matmul_precision": None, "fp32_conv_precision": None}
    if device != "cuda" or not torch.cuda.is_available():
        return facts
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    facts.update(cuda_runtime=torch.version.cuda, cudnn_version=torch.backends.cudnn.version(),
                 driver_version=_driver_version(), gpu_name=props.name,
                 gpu_memory_gib=round(props.total_memory / 2**30, 2), gpu_capability=f"{props.major}.{props.minor}",
                 gpu_count=torch.cuda.device_count(), cudnn_benchmark=torch.backends.cudnn.benchmark,
                 cudnn_deterministic=torch.backends.cudnn.deterministic,
                 fp32_matmul_precision=fp32_precision("matmul"), fp32_conv_precision=fp32_precision("conv"))
    return facts


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count explicitly, for the whole run (timing and training alike), so every record states what it ran with.

    Args:
        threads: number of threads; None means os.cpu_count().

    Returns:
        The thread count torch now uses (torch.get_num_threads()).
    """
    torch.set_num_threads(threads if threads is not None else (os.cpu_count() or 1))
    return torch.get_num_threads()


def configure_process(threads: int | None) -> tuple[int, str | None]:
    """What every process that runs units sets first (the driver, a Ray worker, a pool worker): the run's thread
    count (`set_threads`) and the steady CPU heap (`steady_cpu_heap`), so all of them measure alike.

    Returns:
        (the thread count torch now uses, the heap description for the manifest or None).
    """
    return set_threads(threads), steady_cpu_heap()
