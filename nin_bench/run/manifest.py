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

from nin_bench.version import __version__


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


# Where a checkout without .git (the copy a lent GPU machine gets) learns its commit: this variable, else the file
# scripts/gpu_prepare.sh writes at the checkout's root and carries along. Both hold "<commit> clean|dirty".
COMMIT_ENV = "NIN_BENCH_GIT_COMMIT"
COMMIT_FILE = Path(".gpu") / "commit"


def parse_commit(text: str) -> tuple[str | None, bool | None]:
    """(commit, dirty) from "<commit> clean|dirty" (the word may be missing: dirty unknown); (None, None) if empty."""
    words = text.split()
    if not words:
        return None, None
    state = words[1] if len(words) > 1 else None
    return words[0], {"dirty": True, "clean": False}.get(state)


def git_state(repo: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the checkout rooted at `repo`; dirty ignores results/.

    Without a `.git` there (or without git), env NIN_BENCH_GIT_COMMIT, else the file `.gpu/commit` at `repo`
    (written by scripts/gpu_prepare.sh before a GPU call); (None, None) when none says.
    """
    if (repo / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            # results/ is excluded: a run rewrites its own committed results folder, which says nothing of the code
            status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                     ":/", ":(exclude,top)results"],
                                    capture_output=True, text=True, timeout=10, check=True).stdout
            return commit, bool(status.strip())
        except (OSError, subprocess.SubprocessError):
            pass
    if os.environ.get(COMMIT_ENV):
        return parse_commit(os.environ[COMMIT_ENV])
    try:
        return parse_commit((repo / COMMIT_FILE).read_text())
    except OSError:
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

    commit, dirty = git_state(Path(__file__).resolve().parents[2])  # the checkout holding the package
    return {
        # installed or not (a lent GPU runs the source tree without installing it): the package's own version
        "nin_bench_version": _version("nin_bench") or __version__,
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
