"""Training checkpoints: written atomically each epoch, restored only into the run they belong to."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], fingerprint: str) -> None:
    """Write the run's state atomically: a temp file then os.replace, so a kill never leaves half a checkpoint.

    Args:
        path: checkpoint file.
        model: the (uncompiled) model.
        optimizer: its state (momentum buffers) is saved.
        scheduler: its state (step count) is saved.
        state: the loop's epoch counters and history (plain data).
        fingerprint: what the run is (settings, seed, model, data); `load_checkpoint` checks it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "state": state, "fingerprint": fingerprint,
               # dropout draws from the global generator: restoring it makes a resumed run bit-identical
               "rng_cpu": torch.get_rng_state(),
               "rng_cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    fingerprint: str) -> dict[str, Any] | None:
    """Restore a run from `path` if it exists and belongs to this run.

    Args:
        path: checkpoint file.
        model: its weights are restored in place.
        optimizer: restored in place.
        scheduler: restored in place.
        fingerprint: must equal the stored one; otherwise the file is ignored (with a warning) and overwritten.

    Returns:
        The saved loop state, or None to start from scratch.
    """
    if not path.exists():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("fingerprint") != fingerprint:
        warnings.warn(f"checkpoint {path} belongs to another configuration; starting this run from scratch")
        return None
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["rng_cpu"])
    if payload["rng_cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(payload["rng_cuda"])
    return payload["state"]
