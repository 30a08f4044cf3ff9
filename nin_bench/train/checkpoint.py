"""Training checkpoints: written atomically each epoch, restored only into the run they belong to."""
from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nin_bench.store.atomic import write_atomic
from nin_bench.store.crash_points import crash_point


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    state: dict[str, Any], fingerprint: str, scaler: torch.amp.GradScaler | None = None) -> None:
    """Write the run's state atomically (`atomic.write_atomic`), so a kill never leaves half a checkpoint.

    Args:
        path: checkpoint file.
        model: the (uncompiled) model.
        optimizer: its state (momentum buffers) is saved.
        scheduler: its state (step count) is saved.
        state: the loop's epoch counters and history (plain data).
        fingerprint: what the run is (settings, seed, model, data); `load_checkpoint` checks it.
        scaler: the fp16 GradScaler (its scale and growth tracker), or None.
    """
    payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "state": state, "fingerprint": fingerprint,
               "scaler": scaler.state_dict() if scaler is not None else None,
               # dropout draws from the global generator: restoring it lets a resumed run draw what the
               # uninterrupted run would have (bit-identical on the CPU; see train.py on CUDA)
               "rng_cpu": torch.get_rng_state(),
               "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_atomic(Path(path), buffer.getvalue())
    crash_point("checkpoint:saved")


def load_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                    fingerprint: str, scaler: torch.amp.GradScaler | None = None) -> dict[str, Any] | None:
    """Restore a run from `path` if it exists and belongs to this run.

    Args:
        path: checkpoint file.
        model: its weights are restored in place.
        optimizer: restored in place.
        scheduler: restored in place.
        fingerprint: must equal the stored one; otherwise the file is ignored (with a warning) and overwritten.
        scaler: restored in place when given and saved.

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
    if scaler is not None and payload.get("scaler") is not None:
        scaler.load_state_dict(payload["scaler"])
    torch.set_rng_state(payload["rng_cpu"])
    rng_cuda = payload["rng_cuda"]
    if rng_cuda is not None and torch.cuda.is_available():
        # a list per device (older checkpoints: one state of the current device)
        torch.cuda.set_rng_state_all(rng_cuda) if isinstance(rng_cuda, list) else torch.cuda.set_rng_state(rng_cuda)
    return payload["state"]
