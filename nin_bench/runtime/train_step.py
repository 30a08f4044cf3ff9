"""The one optimisation step shared by the timing stage and the training loop, and the dtype rules around it.

Keeping a single `train_step` means the throughput the timing stage reports is the throughput of the step the
trainer actually runs (no second, slightly different copy to drift apart): fp16 includes its GradScaler there
too, because unscaling, the inf check and the skipped steps are part of what a real fp16 step costs.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype: str, device_type: str) -> str:
    """A dtype name as it runs: "auto" is bf16 autocast on CUDA and fp32 elsewhere; other names pass through."""
    if dtype == "auto":
        return "bf16" if device_type == "cuda" else "fp32"
    return dtype


def amp_dtype(dtype: str) -> torch.dtype | None:
    """The autocast dtype of a name ("fp32", "bf16", "fp16"): None for plain fp32."""
    return None if dtype == "fp32" else DTYPES[dtype]


def autocast(device_type: str, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device_type`, or a no-op context for None (fp32)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type, dtype=dtype)


def grad_scaler(device_type: str, dtype: torch.dtype | None) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast (its gradients underflow without one: bf16 has fp32's range and needs
    none), else None.

    Args:
        device_type: "cuda" or "cpu" (torch.amp.GradScaler supports both).
        dtype: the autocast dtype, or None for fp32.
    """
    return torch.amp.GradScaler(device_type) if dtype == torch.float16 else None


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    autocast_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.0,
    scaler: torch.amp.GradScaler | None = None,
) -> torch.Tensor:
    """Run forward, cross-entropy, backward and one optimizer step.

    No `.item()` or other host sync happens here: on CUDA the caller decides when to wait, so the step can be
    queued back to back (and timed with CUDA events). With a scaler, `scaler.step` skips the update when the
    scaled gradients hold inf/NaN and `scaler.update` adapts the scale (torch's AMP recipe).

    Args:
        model: the network, already in train mode and on x's device.
        optimizer: optimizer over the model's parameters.
        x: input batch [B, C, H, W].
        y: integer class labels [B].
        autocast_dtype: torch.bfloat16 / torch.float16 to run forward and loss under autocast on x's device type;
            None for plain fp32.
        label_smoothing: passed to cross-entropy.
        scaler: a GradScaler (see `grad_scaler`) for fp16, else None.

    Returns:
        The (unscaled) loss as a detached 0-d tensor (still on the device).
    """
    with autocast(x.device.type, autocast_dtype):
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
    # set_to_none skips a memset per parameter and lets backward write fresh gradients.
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach()
