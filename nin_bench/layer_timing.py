"""Where the time goes: measured forward and backward time of every layer, beside its MACs, bytes and roofline.

Attribution uses torch.profiler (CPU, plus CUDA kernels on a GPU). Every leaf module's forward is wrapped in a
`record_function("layer::<path>")` range by forward pre/post hooks, so each layer's forward is the time of its
range (CPU time on the CPU, the device time of the kernels its ops launched on CUDA). A backward node that
autograd runs ("autograd::engine::evaluate_function: ConvolutionBackward0") carries the `sequence_nr` of the
forward op that created it (the profiler's own forward/backward correlation); that op sits inside a layer range,
so the backward time goes to that layer. Gradient accumulation, the loss, the optimizer step and the framework
between modules belong to no layer: they are the "rest" row, computed per iteration as end-to-end minus layers.

FLOPs per layer (the whole batch, forward): 2 per multiply-add for convolutions and linear layers (fvcore's MACs,
as `profile.py` counts them); element-wise layers get an explicit count so they can sit on a roofline: BatchNorm
2 per element (eval: a scale and a shift), ReLU 1 per element, max/avg pooling kernel² per output element, the GAP
1 per input element, dropout and flatten 0 (eval). Bytes: input + weights (+ bias, BN's statistics) + output of the
whole batch at the compute dtype's size (4 for fp32, 2 for bf16/fp16): what a layer must move at least once.
"""
from __future__ import annotations

import copy
import os
import statistics
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from nin_bench.profile import layer_table
from nin_bench.steps import DTYPES, amp_dtype, autocast, grad_scaler, train_step
from nin_bench.timing import _iteration_times_ms, _make_batch, _sync

_LAYER = "layer::"
_ITER = "iter::"
_BACKWARD = "autograd::engine::evaluate_function: "
REST_NOTE = ("time in no layer: Python and dispatch between modules; in the train step also the loss, "
             "gradient accumulation and the SGD step")


def layer_kind(module: nn.Module) -> str:
    """The kind of a leaf module: conv_kxk, conv_1x1, batchnorm, relu, maxpool, avgpool, gap, dropout, flatten,
    linear (else the class name, lower case)."""
    if isinstance(module, nn.Conv2d):
        return "conv_1x1" if tuple(module.kernel_size) == (1, 1) else "conv_kxk"
    kinds = {nn.BatchNorm2d: "batchnorm", nn.ReLU: "relu", nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool",
             nn.AdaptiveAvgPool2d: "gap", nn.Dropout: "dropout", nn.Flatten: "flatten", nn.Linear: "linear"}
    for cls, kind in kinds.items():
        if isinstance(module, cls):
            return kind
    return "gap" if type(module).__name__ == "GlobalMeanPool" else type(module).__name__.lower()


def _flops(kind: str, module: nn.Module, macs_batch: int, in_numel: int, out_numel: int) -> int:
    """Forward FLOPs of one layer for the whole batch (see the module docstring for the conventions)."""
    if kind in ("conv_kxk", "conv_1x1", "linear"):
        return 2 * macs_batch
    if kind == "batchnorm":
        return 2 * out_numel
    if kind == "relu":
        return out_numel
    if kind in ("maxpool", "avgpool"):
        k = module.kernel_size
        return out_numel * (k * k if isinstance(k, int) else k[0] * k[1])
    if kind == "gap":
        return in_numel
    return 0


def _shapes(net: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int]]:
    """(input elements, output elements) of every leaf module for the batch x (eval, no grad)."""
    seen: dict[str, tuple[int, int]] = {}

    def record(_m: nn.Module, inputs: Any, output: torch.Tensor, name: str) -> None:  # must return None
        seen.setdefault(name, (inputs[0].numel(), output.numel()))

    hooks = [m.register_forward_hook(lambda m, i, o, n=n: record(m, i, o, n))
             for n, m in net.named_modules() if not any(True for _ in m.children())]
    try:
        with torch.no_grad():
            net.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _annotate(net: nn.Module) -> list[Any]:
    """Open a `layer::<path>` profiler range around every leaf module's forward; returns the hook handles."""
    open_ranges: dict[str, Any] = {}

    def enter(_m: nn.Module, _i: Any, name: str) -> None:
        open_ranges[name] = record_function(_LAYER + name).__enter__()

    def leave(_m: nn.Module, _i: Any, _o: Any, name: str) -> None:
        open_ranges.pop(name).__exit__(None, None, None)

    hooks = []
    for name, m in net.named_modules():
        if not any(True for _ in m.children()):
            hooks.append(m.register_forward_pre_hook(lambda m, i, name=name: enter(m, i, name)))
            hooks.append(m.register_forward_hook(lambda m, i, o, name=name: leave(m, i, o, name)))
    return hooks


def _cpu_events(events: Any) -> list[Any]:
    """The host-side events (a CUDA trace also lists device-side copies of user ranges)."""
    return [e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU]


def _duration_us(e: Any, cuda: bool) -> float:
    """A host event's time: its kernels' device time on CUDA, its own inclusive CPU time on the CPU."""
    return float(e.device_time_total if cuda else e.cpu_time_total)


def _layer_of(e: Any) -> str | None:
    """The layer range an op event sits in (walking up its CPU parents), or None."""
    p = e
    while p is not None:
        if p.name.startswith(_LAYER):
            return p.name[len(_LAYER):]
        p = p.cpu_parent
    return None


def _profile_iterations(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[dict]:
    """Profile `repeats` calls of fn (after `warmup` plain ones); per call: end-to-end ms, layer fwd and bwd ms.

    Returns:
        One dict per iteration: {"e2e_ms": float, "fwd": {layer: ms}, "bwd": {layer: ms}}.
    """
    cuda = device.type == "cuda"
    # kineto logs every profiler start and stop (and, on a CUDA build without a GPU, a device error) to stderr
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    for _ in range(warmup):
        fn()
    _sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    e2e: list[float] = []
    with profile(activities=activities) as prof:
        for i in range(repeats):
            with record_function(f"{_ITER}{i}"):
                # CUDA events (or the host clock) around the call: the iteration's end-to-end time
                e2e += _iteration_times_ms(fn, device, 1)
    events = _cpu_events(prof.events())
    windows = sorted((e.time_range.start, e.time_range.end, int(e.name[len(_ITER):]))
                     for e in events if e.name.startswith(_ITER))
    seq_layer = {e.sequence_nr: layer for e in events
                 if getattr(e, "sequence_nr", -1) >= 0 and not e.name.startswith(("autograd::", _LAYER))
                 and (layer := _layer_of(e)) is not None}
    out = [{"e2e_ms": e2e[i], "fwd": {}, "bwd": {}} for i in range(repeats)]

    def iteration(e: Any) -> int | None:
        start = e.time_range.start
        return next((i for s, end, i in windows if s <= start <= end), None)

    for e in events:
        if e.name.startswith(_LAYER):
            part, layer = "fwd", e.name[len(_LAYER):]
        elif e.name.startswith(_BACKWARD) and e.sequence_nr in seq_layer:
            part, layer = "bwd", seq_layer[e.sequence_nr]
        else:
            continue
        i = iteration(e)
        if i is not None:
            out[i][part][layer] = out[i][part].get(layer, 0.0) + _duration_us(e, cuda) / 1e3
    return out


def _medians(iters: list[dict], part: str, names: list[str]) -> dict[str, float]:
    return {n: statistics.median(it[part].get(n, 0.0) for it in iters) for n in names}


def time_layers(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int, device: str | torch.device,
                dtype: str = "fp32", channels_last: bool = True, warmup: int = 3, repeats: int = 10,
                num_classes: int = 10) -> list[dict[str, Any]]:
    """Measured forward and backward time of every leaf module of a copy of `model`, with MACs, FLOPs and bytes.

    Args:
        model: the network (deep-copied: its weights and modes are left as they are).
        input_shape: per-image (C, H, W).
        batch_size: images per iteration.
        device: "cpu" or "cuda".
        dtype: "fp32", or "bf16"/"fp16" under autocast (fp16 with its GradScaler in the train step).
        channels_last: model and input in channels_last.
        warmup: unprofiled iterations before each profiled pass.
        repeats: profiled iterations (medians are reported).
        num_classes: range of the random labels.

    Returns:
        One row per leaf module in forward order (layer, block, kind, batch_size, dtype, channels_last, device,
        fwd_ms, fwd_train_ms, bwd_ms, macs, macs_batch, flops, bytes, intensity, e2e_fwd_ms, e2e_train_step_ms),
        then a "rest" row: end-to-end minus the layers (forward: `fwd_ms`; train step: `bwd_ms` holds what the
        step spent outside the layers' forward and backward), with a `note`.
    """
    if dtype not in DTYPES:
        raise ValueError(f"time_layers: dtype={dtype!r} (allowed {sorted(DTYPES)})")
    device = torch.device(device)
    amp = amp_dtype(dtype)
    net = copy.deepcopy(model).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x, y = _make_batch(tuple(input_shape), batch_size, num_classes, device, channels_last)
    macs = {r["name"]: r["macs"] for r in layer_table(copy.deepcopy(model), tuple(input_shape))}
    sizes = _shapes(net, x)
    leaves = [(n, m) for n, m in net.named_modules() if not any(True for _ in m.children())]
    names = [n for n, _ in leaves]

    def forward() -> None:
        with torch.inference_mode(), autocast(device.type, amp):
            net(x)

    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scaler = grad_scaler(device.type, amp)
    hooks = _annotate(net)
    try:
        net.eval()
        fwd_iters = _profile_iterations(forward, device, warmup, repeats)
        net.train()
        step_iters = _profile_iterations(lambda: train_step(net, optimizer, x, y, autocast_dtype=amp, scaler=scaler),
                                         device, warmup, repeats)
    finally:
        for h in hooks:
            h.remove()
    fwd, fwd_train, bwd = (_medians(fwd_iters, "fwd", names), _medians(step_iters, "fwd", names),
                           _medians(step_iters, "bwd", names))
    e2e_fwd = statistics.median(it["e2e_ms"] for it in fwd_iters)
    e2e_step = statistics.median(it["e2e_ms"] for it in step_iters)
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    setting = {"batch_size": batch_size, "dtype": dtype, "channels_last": channels_last, "device": device.type,
               "e2e_fwd_ms": e2e_fwd, "e2e_train_step_ms": e2e_step}
    rows = []
    for name, m in leaves:
        kind = layer_kind(m)
        n_in, n_out = sizes.get(name, (0, 0))
        weights = sum(t.numel() for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
                      if t.is_floating_point())
        nbytes = (n_in + weights + n_out) * itemsize
        macs_batch = int(macs.get(name, 0)) * batch_size
        flops = _flops(kind, m, macs_batch, n_in, n_out)
        rows.append({"layer": name, "block": name.split(".")[1] if name.startswith("features.") else "head",
                     "kind": kind, **setting, "fwd_ms": fwd[name], "fwd_train_ms": fwd_train[name],
                     "bwd_ms": bwd[name], "macs": int(macs.get(name, 0)), "macs_batch": macs_batch, "flops": flops,
                     "bytes": nbytes, "intensity": flops / nbytes if nbytes else None})
    rest_fwd = statistics.median(it["e2e_ms"] - sum(it["fwd"].values()) for it in fwd_iters)
    rest_step = statistics.median(it["e2e_ms"] - sum(it["fwd"].values()) - sum(it["bwd"].values())
                                  for it in step_iters)
    rows.append({"layer": "rest", "block": "rest", "kind": "rest", **setting, "fwd_ms": rest_fwd,
                 "fwd_train_ms": 0.0, "bwd_ms": rest_step, "macs": 0, "macs_batch": 0, "flops": 0, "bytes": 0,
                 "intensity": None, "note": REST_NOTE})
    return rows


def memory_bandwidth(device: str | torch.device, nbytes: int | None = None) -> float:
    """Achievable memory bandwidth in bytes/s: the best of several copies of a large buffer (read + write).

    Args:
        device: "cpu" or a CUDA device.
        nbytes: buffer size; None means 1 GiB on CUDA and 256 MiB on the CPU (beyond any last-level cache).

    Returns:
        2 * nbytes / (best copy time in seconds).
    """
    device = torch.device(device)
    nbytes = nbytes or (2**30 if device.type == "cuda" else 2**28)
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    best_ms = min(_iteration_times_ms(lambda: dst.copy_(src), device, 10))
    return 2 * nbytes / (best_ms / 1e3)


def roofline(rows: list[dict[str, Any]], peak_flops: float, bytes_per_s: float) -> list[dict[str, Any]]:
    """Add each layer's bound and how much of it the forward attains.

    Args:
        rows: `time_layers` rows.
        peak_flops: the device's matmul FLOP/s in the rows' dtype (`timing.matmul_peak_flops`).
        bytes_per_s: the device's memory bandwidth (`memory_bandwidth`).

    Returns:
        New rows with `bound` ("memory" if the layer's intensity is below the ridge peak / bandwidth, else
        "compute"), `roofline_ms` (max of flops / peak and bytes / bandwidth: the least time the roofline allows),
        `attained` (roofline_ms / fwd_ms; None for the rest row), `peak_tflops` and `mem_gb_per_s`.
    """
    ridge = peak_flops / bytes_per_s
    out = []
    for r in rows:
        extra: dict[str, Any] = {"peak_tflops": peak_flops / 1e12, "mem_gb_per_s": bytes_per_s / 1e9,
                                 "bound": None, "roofline_ms": None, "attained": None}
        if r["kind"] != "rest" and r["bytes"]:
            floor_ms = max(r["flops"] / peak_flops, r["bytes"] / bytes_per_s) * 1e3
            extra.update(bound="memory" if (r["intensity"] or 0) < ridge else "compute", roofline_ms=floor_ms,
                         attained=floor_ms / r["fwd_ms"] if r["fwd_ms"] > 0 else None)
        out.append({**r, **extra})
    return out


def format_layer_times(rows: list[dict[str, Any]]) -> str:
    """An aligned text table of `time_layers` rows (what `nin_bench inspect --time` prints).

    Shares: MACs over the layers, time over the layers and the rest (the rest line closes the table).
    """
    layers = [r for r in rows if r["kind"] != "rest"]
    total_macs = sum(r["macs"] for r in layers) or 1
    total_fwd = sum(r["fwd_ms"] for r in rows) or 1.0
    total_bwd = sum(r["fwd_train_ms"] + r["bwd_ms"] for r in rows) or 1.0
    header = ["layer", "kind", "MACs", "MACs %", "fwd ms", "fwd %", "step ms", "step %", "FLOP/B", "bound"]

    def cells(r: dict[str, Any]) -> list[str]:
        step = r["fwd_train_ms"] + r["bwd_ms"]
        return [r["layer"], r["kind"], f"{r['macs']:,}", f"{100 * r['macs'] / total_macs:.1f}", f"{r['fwd_ms']:.3f}",
                f"{100 * r['fwd_ms'] / total_fwd:.1f}", f"{step:.3f}", f"{100 * step / total_bwd:.1f}",
                "" if r.get("intensity") is None else f"{r['intensity']:.2f}", r.get("bound") or ""]

    body = [cells(r) for r in rows]
    widths = [max(len(c[i]) for c in [header, *body]) for i in range(len(header))]

    def line(c: list[str]) -> str:
        return "  ".join(s.ljust(w) if i in (0, 1, 9) else s.rjust(w) for i, (s, w) in enumerate(zip(c, widths)))

    rule = "-" * len(line(["-" * w for w in widths]))
    first = rows[0]
    title = (f"batch {first['batch_size']}, {first['dtype']}, {'channels_last' if first['channels_last'] else 'NCHW'}"
             f", {first['device']}: end-to-end forward {first['e2e_fwd_ms']:.3f} ms, train step "
             f"{first['e2e_train_step_ms']:.3f} ms (medians); step = forward in train mode + backward; rest = "
             f"{REST_NOTE}")
    return "\n".join([title, line(header), rule, *map(line, body[:-1]), rule, line(body[-1])])
