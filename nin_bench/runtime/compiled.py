"""torch.compile for measured rows and training runs: a fresh dynamo state each time, never a silent eager run.

Dynamo caches compiled code on the code object of `NiN.forward`, which every model copy and variant shares, and
its recompile limit (8) counts all of that object's entries together: train vs eval, grad mode, autocast dtype,
memory layout and batch size each add one. Past the limit dynamo warns and runs the frame eagerly, so a row
labelled "compiled" would time eager code. Here every compiled row or run starts from `torch._dynamo.reset()`,
compiles with static shapes and `fullgraph=True`, and runs with `fail_on_recompile_limit_hit`, so hitting the
limit or breaking the graph raises (and becomes an error row) instead of falling back.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

# torch.compile's backend; tests of the dynamo logic swap in "eager" (the same capture and guards, no codegen).
BACKEND = "inductor"


def reset_compiled() -> None:
    """Drop every cache entry of every code object and zero dynamo's counters (what `compile_stats` reads)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def compile_shared(model: nn.Module) -> nn.Module:
    """Wrap `model` in torch.compile (inductor, static shapes, whole graph or an error) without a reset: the
    entries of models compiled before stay, as a setting's interleaved contenders need (`no_eager_fallback`
    gives them the recompile room)."""
    return torch.compile(model, backend=BACKEND, dynamic=False, fullgraph=True)


def compile_fresh(model: nn.Module) -> nn.Module:
    """Reset dynamo (every cache entry of every code object, the counters) and wrap `model` in torch.compile.

    Args:
        model: the module; the wrapper shares its parameters (an optimizer over `model` steps the compiled one).

    Returns:
        The compiled wrapper (inductor, static shapes, whole graph or an error).
    """
    reset_compiled()
    return compile_shared(model)


@contextlib.contextmanager
def no_eager_fallback(models: int = 1) -> Iterator[None]:
    """Within the block, reaching dynamo's recompile limit raises instead of running eagerly.

    Args:
        models: how many models are compiled side by side in the block (a setting's interleaved contenders); each
            adds its own entries to `NiN.forward`'s cache, so the limit is raised to leave each the default room.
    """
    config = torch._dynamo.config
    # the same switches under their older names (torch < 2.6 called the recompile limit the cache size limit)
    fail = "fail_on_recompile_limit_hit" if hasattr(config, "fail_on_recompile_limit_hit") else "fail_on_cache_limit_hit"
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    with config.patch({fail: True, limit: getattr(config, limit) * max(1, models)}):
        yield


def compile_stats() -> dict[str, Any]:
    """What dynamo compiled since the last `compile_fresh`: graphs and graph breaks (0 breaks with fullgraph).

    Returns:
        {"compiled_graphs": int, "graph_breaks": int}.
    """
    counters = torch._dynamo.utils.counters
    return {"compiled_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def check_compiled(stats: dict[str, Any]) -> None:
    """Raise when nothing was compiled (the rows would be eager while labelled compiled)."""
    if stats["compiled_graphs"] < 1:
        raise RuntimeError("torch.compile produced no graph: the model ran eagerly")


def warm_up(net: nn.Module, model: nn.Module, train_batch: tuple[torch.Tensor, torch.Tensor],
            evaluate: Callable[[], None], amp: torch.dtype | None) -> float:
    """Compile every graph a training run will call, before its clock starts, leaving the run's result unchanged.

    One forward + backward in train mode (no optimizer step) compiles the training graphs; `evaluate` runs the
    run's own evaluation once per shape it will see, compiling the eval graphs. The RNG states (dropout draws
    from the global generator) and the model's buffers (BatchNorm's running statistics move in train mode) are
    restored after, and the gradients dropped, so the run then trains exactly as an uncompiled run would start.

    Args:
        net: the compiled wrapper.
        model: the module it wraps (its state is saved and restored).
        train_batch: (inputs, labels) of one training batch, made as the run makes its batches.
        evaluate: runs the run's evaluation on one batch of every evaluation shape.
        amp: the autocast dtype or None.

    Returns:
        Wall seconds the warm-up took (the compile time, plus a few steps).
    """
    from nin_bench.runtime.train_step import (
        autocast,  # steps imports nothing from here; local import keeps the module light
    )

    x, y = train_batch
    device_type = x.device.type
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device_type == "cuda" else None
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    t0 = time.perf_counter()
    net.train()
    with autocast(device_type, amp):
        loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    evaluate()  # leaves the net in train mode again
    if device_type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    model.load_state_dict(saved)
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    return elapsed
