"""Profile stage: parameters, MACs (fvcore) and FLOPs (torch's FlopCounterMode) of one model, plus a layer table.

Conventions (see README "How counts are defined"):
- `macs`: fvcore `FlopCountAnalysis` total, which counts one fused multiply-add as one: conv + linear only.
  Every other op NiN traces to (pooling, BatchNorm, ReLU, dropout, flatten) is explicitly excluded by a `None`
  handle and listed in `macs_excluded_ops`, so `unsupported_ops` is "" unless a new op shows up.
- `flops_fwd` / `flops_fwd_bwd`: `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add, matmul
  and conv ops only), an independent counter; `counts_agree` checks flops_fwd == 2 * macs within 1 %.
"""
from __future__ import annotations

import contextlib
import warnings
from importlib.metadata import version
from typing import Any, Iterator

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

with warnings.catch_warnings():
    # fvcore.nn's __init__ jit-scripts its focal loss at import time, which torch >= 2.10 flags as deprecated;
    # that warning is about fvcore's import, not about any model we count, so it is filtered here alone.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS

# Ops NiN traces to that are not multiply-adds, each given a None handle (fvcore: "explicitly ignored"):
# - max_pool2d, avg_pool2d: fvcore has no handle, so without this it reports them unsupported.
# - adaptive_avg_pool2d, batch_norm: fvcore's defaults would count 1 flop per input element (BN: 1 or 4 per
#   element), mixing element-wise work into the multiply-add total the pins are defined on.
# - relu, relu_, dropout, flatten: already in fvcore's ignored set; listed so the record says so explicitly.
MACS_EXCLUDED_OPS: tuple[str, ...] = (
    "aten::adaptive_avg_pool2d", "aten::avg_pool2d", "aten::batch_norm", "aten::dropout",
    "aten::flatten", "aten::max_pool2d", "aten::relu", "aten::relu_",
)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode (deterministic: no dropout, BN running stats), then restore each."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


def _example_input(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """A batch-1 input on the model's device. Zeros, not randn: counts don't depend on values, and drawing
    from the global RNG would shift a seeded run's stream depending on whether it was profiled."""
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    return torch.zeros(1, *input_shape, device=device)


def _fvcore(model: nn.Module, x: torch.Tensor) -> FlopCountAnalysis:
    """An fvcore analysis with the exclusions above, already run.

    fvcore's own log warnings (unsupported ops, uncalled modules) are switched off: the unsupported ops are
    read back from the analysis and stored in the record instead (`unsupported_ops`).
    """
    analysis = FlopCountAnalysis(model, (x,))
    # A None handle only lands in fvcore's ignored set, and a registered handle wins over it (fvcore
    # 0.1.5 checks handles first), so batch_norm / adaptive_avg_pool2d would still be counted: re-register
    # fvcore's defaults without the excluded ops, then mark those ignored.
    kept = {op: h for op, h in _DEFAULT_SUPPORTED_OPS.items() if op not in MACS_EXCLUDED_OPS}
    analysis.clear_op_handles().set_op_handle(**kept, **{op: None for op in MACS_EXCLUDED_OPS})
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    analysis.total()  # runs the trace once; later queries reuse it
    return analysis


def _torch_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """FLOPs of the forward, and of forward + backward of `logits.sum()`, from FlopCounterMode.

    Runs on the meta device (shapes only) through `functional_call` with meta copies of the parameters, so
    it costs milliseconds instead of a real 224x224 backward, and leaves the model's weights, `.grad` and
    `requires_grad` untouched. Every parameter copy requires grad, so weight and bias gradients are counted.
    The input does not require grad, so, as autograd skips it, the first conv's input gradient is
    *excluded*; every later layer's input gradient is included (torch's own accounting).

    Returns:
        (flops_fwd, flops_fwd_bwd).
    """
    params = {n: torch.empty_like(p, device="meta").requires_grad_(True) for n, p in model.named_parameters()}
    buffers = {n: torch.empty_like(b, device="meta") for n, b in model.named_buffers()}
    x = torch.zeros(1, *input_shape, device="meta")
    with FlopCounterMode(display=False) as fwd:
        with torch.no_grad():
            functional_call(model, (params, buffers), (x,))
    with FlopCounterMode(display=False) as both:
        logits = functional_call(model, (params, buffers), (x,))
        torch.autograd.grad(logits.sum(), list(params.values()))
    return fwd.get_total_flops(), both.get_total_flops()


def param_groups(model: nn.Module) -> list[str]:
    """Profile groups: top-level children of `model.features` that have parameters, then "head".

    Args:
        model: a NiN (has `features` and `head`).

    Returns:
        Group names, e.g. ["block1", "block2", "block3", "head"].
    """
    names = [n for n, m in model.features.named_children() if any(True for _ in m.parameters())]
    return [*names, "head"]


def _group_counts(model: nn.Module, by_module: dict[str, int]) -> dict[str, int]:
    """`params_<g>` and `macs_<g>` per group (MACs from fvcore's per-module totals)."""
    out: dict[str, int] = {}
    for g in param_groups(model):
        path = "head" if g == "head" else f"features.{g}"
        module = model.get_submodule(path)
        out[f"params_{g}"] = sum(p.numel() for p in module.parameters())
        out[f"macs_{g}"] = int(by_module.get(path, 0))
    return out


def profile_model(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, Any]:
    """Count parameters, MACs and FLOPs of `model` for one input of `input_shape`.

    The model is profiled at batch 1 in eval mode (each submodule's mode is restored after); nothing about
    the model (weights, `.grad`, requires_grad) is changed.

    Args:
        model: a NiN (needs `features` and `head` for the per-group keys).
        input_shape: (C, H, W) of one input.

    Returns:
        Flat record: params, params_trainable, macs, flops_fwd, flops_fwd_bwd, counts_agree, macs_counter,
        flops_counter, macs_excluded_ops, unsupported_ops, params_<g>, macs_<g>.
    """
    with _eval_mode(model):
        x = _example_input(model, tuple(input_shape))
        analysis = _fvcore(model, x)
        flops_fwd, flops_fwd_bwd = _torch_flops(model, tuple(input_shape))
    macs = int(analysis.total())
    unsupported = analysis.unsupported_ops()
    record: dict[str, Any] = {
        "params": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "macs": macs,
        "flops_fwd": int(flops_fwd),
        "flops_fwd_bwd": int(flops_fwd_bwd),
        "counts_agree": abs(flops_fwd - 2 * macs) <= 0.01 * 2 * macs,
        "macs_counter": f"fvcore {version('fvcore')}",
        "flops_counter": f"torch.utils.flop_counter torch {torch.__version__}",
        "macs_excluded_ops": ",".join(MACS_EXCLUDED_OPS),
        "unsupported_ops": ",".join(f"{op}:{n}" for op, n in sorted(unsupported.items())),
    }
    record.update(_group_counts(model, dict(analysis.by_module())))
    return record


def _output_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, list[int]]]:
    """(name, module, output shape) of every leaf module, in the order the forward calls them."""
    calls: list[tuple[str, nn.Module, list[int]]] = []
    hooks = [m.register_forward_hook(lambda mod, _i, out, name=name: calls.append((name, mod, list(out.shape))))
             for name, m in model.named_modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def layer_table(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict[str, Any]]:
    """Per-layer table (d2l's `layer_summary` plus sizes): one row per leaf module in forward order.

    Args:
        model: the network.
        input_shape: (C, H, W) of one input; the table is for batch 1, eval mode.

    Returns:
        Rows {name, type, output_shape (list, batch first), params, macs}; MACs use the same fvcore
        settings as `profile_model`, so the rows sum to its `params` and `macs`.
    """
    with _eval_mode(model):
        x = _example_input(model, tuple(input_shape))
        by_module = _fvcore(model, x).by_module()
        calls = _output_shapes(model, x)
    return [{"name": name, "type": type(mod).__name__, "output_shape": shape,
             "params": sum(p.numel() for p in mod.parameters()), "macs": int(by_module.get(name, 0))}
            for name, mod, shape in calls]


def format_layer_table(rows: list[dict[str, Any]]) -> str:
    """Aligned text table of `layer_table` rows with a total line (what `nin_bench inspect` prints).

    Args:
        rows: output of `layer_table`.

    Returns:
        The table as one string (no trailing newline).
    """
    cells = [[r["name"], r["type"], "x".join(map(str, r["output_shape"])), f"{r['params']:,}", f"{r['macs']:,}"]
             for r in rows]
    cells.append(["total", "", "", f"{sum(r['params'] for r in rows):,}", f"{sum(r['macs'] for r in rows):,}"])
    header = ["name", "type", "output_shape", "params", "macs"]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]

    def line(c: list[str]) -> str:
        # Text columns left-aligned, counts right-aligned so the digits line up.
        return "  ".join(s.ljust(w) if i < 3 else s.rjust(w) for i, (s, w) in enumerate(zip(c, widths))).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    return "\n".join([line(header), rule, *map(line, cells[:-1]), rule, line(cells[-1])])
