"""The one optimisation step shared by the timing stage and the training loop.

Keeping a single `train_step` means the throughput the timing stage reports is the throughput of the step the
trainer actually runs (no second, slightly different copy to drift apart).
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


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    autocast_dtype: torch.dtype | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Run forward, cross-entropy, backward and one optimizer step.

    No `.item()` or other host sync happens here: on CUDA the caller decides when to wait, so the step can be
    queued back to back (and timed with CUDA events).

    Args:
        model: the network, already in train mode and on x's device.
        optimizer: optimizer over the model's parameters.
        x: input batch [B, C, H, W].
        y: integer class labels [B].
        autocast_dtype: torch.bfloat16 / torch.float16 to run forward and loss under autocast on x's device type;
            None for plain fp32.
        label_smoothing: passed to cross-entropy.

    Returns:
        The loss as a detached 0-d tensor (still on the device).
    """
    with autocast(x.device.type, autocast_dtype):
        loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
    # set_to_none skips a memset per parameter and lets backward write fresh gradients.
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()
