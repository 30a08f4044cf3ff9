"""Which device a suite runs on: the one rule (`resolve_device`) and a torch-free guess at CUDA (`guess_cuda`).

`run` and `inspect --time` ask torch whether CUDA is usable and pass the answer to `resolve_device`; `list`, which
must stay light, passes `guess_cuda()` instead and says so. No torch here.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from nin_bench.errors import ConfigError

__all__ = ["GUESSED_BY", "guess_cuda", "resolve_device"]

DEVICES = ("auto", "cpu", "cuda")
# How `list` names its answer in an error and in its header (it does not ask torch).
GUESSED_BY = "the torch-free guess (NVIDIA device files)"


def resolve_device(asked: str, cuda_available: bool, *, asked_as: str = "device: cuda",
                   seen_by: str = "torch") -> Literal["cpu", "cuda"]:
    """The device a run uses: CUDA when asked for, or for "auto" when it is available; else the CPU.

    Args:
        asked: "auto", "cpu" or "cuda" (the config's `device`, or inspect's `--device`).
        cuda_available: whether a CUDA device is usable here (torch's answer, or `guess_cuda()`).
        asked_as: how the error names the request ("device: cuda" in a suite, "--device cuda" on the command line).
        seen_by: who said CUDA is absent, for the error ("torch", or `GUESSED_BY`).

    Returns:
        "cpu" or "cuda".

    Raises:
        ConfigError: "cuda" asked for where none is available, or an unknown device name.
    """
    if asked not in DEVICES:
        raise ConfigError(f"device: unknown device {asked!r}; allowed: {', '.join(DEVICES)}")
    if asked == "cuda" and not cuda_available:
        raise ConfigError(f"{asked_as} was asked for, but {seen_by} sees no CUDA device; use --device cpu or auto")
    return "cuda" if asked == "cuda" or (asked == "auto" and cuda_available) else "cpu"


def guess_cuda(env: Mapping[str, str] | None = None, root: Path = Path("/")) -> bool:
    """Guess, without importing torch, whether CUDA is usable: an NVIDIA GPU's device file or driver entry is
    present and CUDA_VISIBLE_DEVICES does not hide every device ("" or "-1").

    A guess: a CPU-only build of torch on a GPU machine, or WSL (its GPU is /dev/dxg), is guessed wrong; `run`
    decides with torch.

    Args:
        env: the environment (None: `os.environ`).
        root: the file system root the device files are looked up under (tests pass a folder).
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = root / "proc" / "driver" / "nvidia" / "gpus"
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    dev = root / "dev"
    return dev.is_dir() and any(dev.glob("nvidia[0-9]*"))
