"""The environment manifest: what produced a results folder (versions, device, GPU and CUDA facts, CPU, threads,
commit, date)."""
from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import os
import platform
import subprocess
from pathlib import Path
from typing import Any


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(repo: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout holding `repo`, or (None, None) outside git; dirty ignores results/."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        # results/ is excluded: a run rewrites its own committed results folder, which says nothing of the code
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                 ":/", ":(exclude,top)results"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def device_name(device: str) -> str:
    """The GPU's name on CUDA, the CPU model otherwise."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return cpu_model()


def build_manifest(*, device: str, device_name: str, threads: int, protocol: str, cuda_fallback: str | None = None,
                   executor: str = "local") -> dict[str, Any]:
    """Collect the environment facts every results folder carries.

    Args:
        device: "cpu" or "cuda".
        device_name: e.g. the GPU's name, or the CPU model.
        threads: torch's intra-op thread count used for the run.
        protocol: "cpu" | "gpu" | "full" | "quick".
        cuda_fallback: why a CUDA build of torch ran on the CPU (None when it did not).
        executor: "local" or "ray".

    Returns:
        A JSON-ready dict (`peak_tflops` and `data` are filled in by the runner as stages measure them).
        The CUDA keys (`device.cuda_facts`) are present on every device, None where not applicable.
    """
    from nin_bench.runtime.device import cuda_facts

    commit, dirty = git_state(Path(__file__).resolve().parent)
    return {
        "nin_bench_version": _version("nin_bench"),
        "python_version": platform.python_version(),
        "torch_version": _version("torch"),
        "torchvision_version": _version("torchvision"),
        "fvcore_version": _version("fvcore"),
        "pandas_version": _version("pandas"),
        "device": device,
        "device_name": device_name,
        **cuda_facts(device),
        "cuda_fallback": cuda_fallback,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "executor": executor,
        "platform": platform.platform(),
        "git_commit": commit,
        "git_dirty": dirty,
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "protocol": protocol,
        "peak_tflops": {},
        "data": {},
    }
