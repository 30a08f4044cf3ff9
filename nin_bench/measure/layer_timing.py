"""Where the time goes: measured forward and backward time of every layer, beside its MACs, bytes and roofline.

Attribution uses torch.profiler (CPU, plus CUDA kernels on a GPU). Every leaf module's forward is wrapped in a
`record_function("layer::<path>")` range by forward pre/post hooks (not backward hooks, which reject the in-place
ReLU), so a layer's forward is the time of its range: its inclusive CPU time on the CPU, the device time of the
kernels its ops launched on CUDA. A backward node that autograd runs ("autograd::engine::evaluate_function:
ConvolutionBackward0") carries the `sequence_nr` and thread of the forward op that created it (the profiler's own
forward/backward correlation, as `EventList._set_backward_stacktraces` uses it); that op sits inside a layer
range, so the node's time goes to that layer. The loss, gradient accumulation, the optimizer step and the
framework between modules belong to no layer: they are the "rest" row, defined so that the rows add up exactly
to the end-to-end medians (see `time_layers`).

FLOPs per layer (the whole batch, forward): 2 per multiply-add for convolutions and linear layers (fvcore's MACs,
as `profile.py` counts them); element-wise layers get an explicit count so they can sit on a roofline: BatchNorm
2 per element (eval: a scale and a shift), ReLU 1 per element, max/avg pooling kernel² per output element, the GAP
1 per input element, dropout and flatten 0 (eval). Bytes: input + weights (+ bias; BatchNorm's weight, bias and
running statistics) + output of the whole batch at the compute dtype's size (4 for fp32, 2 for bf16/fp16): what
a layer must move at least once. Intensity = FLOPs / bytes.
"""
from __future__ import annotations

import bisect
import copy
import os
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from nin_bench.measure.counts import layer_table
from nin_bench.measure.timing import _make_batch, iteration_times_ms, sync
from nin_bench.runtime.device import configure_cuda
from nin_bench.runtime.train_step import (
    DTYPES,
    amp_dtype,
    autocast,
    grad_scaler,
    train_step,
)

_LAYER = "layer::"
_MODEL = "model::forward"
_ITER = "iter::"
_BACKWARD = "autograd::engine::evaluate_function: "
REST_NOTE = ("time in no layer: fwd = the whole forward minus the layers' (Python and dispatch between modules); "
             "bwd = the train step minus its model forward and the layers' backward (loss, gradient accumulation, "
             "SGD step, framework)")
REST_NOTE_CUDA = ("kernels in no layer: fwd = the forward's kernel time minus the layers'; bwd = the train step's kernel "
                  "time minus its model forward's and the layers' backward (loss, gradient accumulation, SGD step); "
                  "the device's idle time is apart (idle_fwd_ms, idle_train_step_ms)")


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


def _leaf_calls(net: nn.Module, x: torch.Tensor) -> dict[str, tuple[nn.Module, int, int]]:
    """{path: (module, input elements, output elements)} of every leaf module the forward calls, in call order."""
    seen: dict[str, tuple[nn.Module, int, int]] = {}

    def record(m: nn.Module, inputs: Any, output: torch.Tensor, name: str) -> None:  # must return None
        seen.setdefault(name, (m, inputs[0].numel(), output.numel()))

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
    """Open a `layer::<path>` range around every leaf module's forward and a `model::forward` range around the
    whole model's; returns the hook handles."""
    open_ranges: dict[str, Any] = {}

    def enter(name: str) -> None:
        open_ranges[name] = record_function(name).__enter__()

    def leave(name: str) -> None:
        open_ranges.pop(name).__exit__(None, None, None)

    ranges = [(_MODEL, net)] + [(_LAYER + n, m) for n, m in net.named_modules() if not any(True for _ in m.children())]
    hooks = []
    for name, m in ranges:
        hooks.append(m.register_forward_pre_hook(lambda _m, _i, name=name: enter(name)))
        hooks.append(m.register_forward_hook(lambda _m, _i, _o, name=name: leave(name)))
    return hooks


def _duration_ms(e: Any, cuda: bool) -> float:
    """A host event's time: its kernels' device time on CUDA, its own inclusive CPU time on the CPU."""
    if not cuda:
        return e.cpu_time_total / 1e3
    us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total  # torch < 2.4 name
    return us / 1e3


def _context(e: Any) -> tuple[str | None, bool]:
    """(the layer range an event sits in or None, whether it runs inside autograd's backward), from its parents."""
    p = e
    while p is not None:
        if p.name.startswith(_LAYER):
            return p.name[len(_LAYER):], False
        if p.name.startswith(_BACKWARD):
            return None, True
        p = p.cpu_parent
    return None, False


def _forward_owners(events: list[Any]) -> dict[tuple[int, int], str | None]:
    """(sequence_nr, thread) of every forward op -> the layer it ran in (None outside every layer: the loss).

    Autograd moves its per-thread sequence counter when it creates a node, and every op records the counter's value
    when it starts; so ops that started before a node was made share its number, and in start order the last op
    holding a number is the one that made the node. Later claims therefore overwrite earlier ones.
    """
    owners: dict[tuple[int, int], str | None] = {}
    for e in events:  # sorted by start
        seq = getattr(e, "sequence_nr", -1)
        if seq < 0 or e.name.startswith((_BACKWARD, _LAYER, _MODEL, _ITER)):
            continue
        layer, in_backward = _context(e)
        if not in_backward:
            owners[(seq, e.thread)] = layer
    return owners


def _attribute(events: list[Any], e2e_ms: list[float], cuda: bool) -> list[dict[str, Any]]:
    """Sum the layer ranges, the model range and the backward nodes of each profiled iteration.

    Returns:
        One dict per iteration: {"e2e_ms": ms, "busy_ms": ms, "model": {"model::forward": ms}, "fwd": {layer: ms},
        "bwd": {layer: ms}}; busy_ms is the device time of every kernel launched in the iteration (CUDA; one
        stream, so kernels do not overlap), 0 on the CPU.
    """
    events = sorted((e for e in events if getattr(e, "device_type", None) == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.time_range.start)  # a CUDA trace also lists device-side copies of user ranges
    windows = sorted((e.time_range.start, e.time_range.end, int(e.name[len(_ITER):]))
                     for e in events if e.name.startswith(_ITER))
    starts = [w[0] for w in windows]
    owners = _forward_owners(events)
    out = [{"e2e_ms": ms, "busy_ms": 0.0, "model": {}, "fwd": {}, "bwd": {}} for ms in e2e_ms]
    for e in events:
        w = bisect.bisect_right(starts, e.time_range.start) - 1
        if cuda and e.kernels and w >= 0 and e.time_range.start <= windows[w][1]:
            out[windows[w][2]]["busy_ms"] += sum(k.duration for k in e.kernels) / 1e3  # kernels this op launched
        if e.name.startswith(_LAYER):
            part, layer = "fwd", e.name[len(_LAYER):]
        elif e.name.startswith(_BACKWARD):
            thread = e.fwd_thread if getattr(e, "fwd_thread", None) is not None else e.thread
            part, layer = "bwd", owners.get((e.sequence_nr, thread))
        elif e.name == _MODEL:
            part, layer = "model", _MODEL
        else:
            continue
        if layer is None or w < 0 or e.time_range.start > windows[w][1]:
            continue  # a backward node of no layer (loss, AccumulateGrad) is rest; so is anything between windows
        it = out[windows[w][2]]
        it[part][layer] = it[part].get(layer, 0.0) + _duration_ms(e, cuda)
    return out


def _profile_iterations(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int,
                        trace: Path | None = None) -> list[dict]:
    """Profile `repeats` calls of fn, each timed end to end, after `warmup` unprofiled ones (see `_attribute`).

    On the CPU an iteration's end-to-end time is the host clock around it inside the profiled run, so the
    layers' CPU times and the whole carry the same profiler overhead. On CUDA it comes from `repeats` unprofiled
    iterations (CUDA events, as the timing stage measures): inside a profiled run the host is slowed by the
    profiler and the device idles between kernels, so its event time is not the iteration's; the device's idle
    time is that unprofiled time minus the busy time of the kernels (`busy_ms`). `trace`: also write the profiled
    run as a Chrome/Perfetto trace there.
    """
    # kineto logs every profiler start and stop (and, on a CUDA build without a GPU, a device error) to stderr
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    for _ in range(warmup):
        fn()
    sync(device)
    cuda = device.type == "cuda"
    unprofiled = iteration_times_ms(fn, device, repeats) if cuda else None
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    e2e: list[float] = []
    with profile(activities=activities) as prof:
        for i in range(repeats):
            with record_function(f"{_ITER}{i}"):
                e2e += iteration_times_ms(fn, device, 1)  # CUDA events or the host clock around the call
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    return _attribute(list(prof.events()), unprofiled or e2e, cuda)


def _median(iters: list[dict], part: str, name: str | None = None) -> float:
    return statistics.median(it[part] if name is None else it[part].get(name, 0.0) for it in iters)


def _measure(net: nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: str, warmup: int, repeats: int,
             trace: Path | None = None) -> tuple[list[dict], list[dict]]:
    """Profiled iterations of the forward (eval, inference mode; its trace written to `trace` when given) and of
    `steps.train_step` (train mode, SGD)."""
    device, amp = x.device, amp_dtype(dtype)

    def forward() -> None:  # as timing's "forward" mode runs it
        with torch.inference_mode(), autocast(device.type, amp):
            net(x)

    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)  # timing's train-step optimizer
    scaler = grad_scaler(device.type, amp)
    hooks = _annotate(net)
    try:
        net.eval()
        fwd_iters = _profile_iterations(forward, device, warmup, repeats, trace)
        net.train()
        step_iters = _profile_iterations(lambda: train_step(net, optimizer, x, y, autocast_dtype=amp, scaler=scaler),
                                         device, warmup, repeats)
    finally:
        for h in hooks:
            h.remove()
    return fwd_iters, step_iters


def _layer_row(name: str, m: nn.Module, n_in: int, n_out: int, macs: int, batch_size: int,
               itemsize: int) -> dict[str, Any]:
    """The static columns of one layer: block, kind, MACs, FLOPs, bytes, intensity (module docstring)."""
    kind = layer_kind(m)
    weights = sum(t.numel() for t in (*m.parameters(recurse=False), *m.buffers(recurse=False))
                  if t.is_floating_point())  # BN's num_batches_tracked is an integer counter, not data it reads
    nbytes = (n_in + weights + n_out) * itemsize
    flops = _flops(kind, m, macs * batch_size, n_in, n_out)
    block = name.split(".")[1] if name.startswith("features.") else name.split(".")[0]
    return {"layer": name, "block": block, "kind": kind, "macs": macs, "macs_batch": macs * batch_size,
            "flops": flops, "bytes": nbytes, "intensity": flops / nbytes if nbytes else None}


def time_layers(model: nn.Module, input_shape: tuple[int, ...], *, batch_size: int, device: str | torch.device,
                dtype: str = "fp32", channels_last: bool = True, warmup: int = 3, repeats: int = 10,
                num_classes: int = 10, trace: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Measured forward and backward time of every leaf module of a copy of `model`, with MACs, FLOPs and bytes.

    Args:
        model: the network (deep-copied: its weights, device and modes are left as they are).
        input_shape: per-image (C, H, W).
        batch_size: images per iteration.
        device: "cpu" or "cuda" (cuDNN autotuning on, as the timing stage has it).
        dtype: "fp32", or "bf16"/"fp16" under autocast (fp16 with its GradScaler in the train step).
        channels_last: model and input in channels_last.
        warmup: unprofiled iterations before each profiled pass.
        repeats: profiled iterations (medians are reported).
        num_classes: range of the random labels.
        trace: a file to write the profiled forward's Chrome/Perfetto trace to (torch.profiler's
            `export_chrome_trace`: the `layer::<path>`, `model::forward` and `iter::<i>` ranges beside the ops),
            to open in https://ui.perfetto.dev or chrome://tracing; None writes none.

    Returns:
        One row per leaf module in forward order: layer, block, kind, batch_size, dtype, channels_last, device,
        fwd_ms (eval forward under inference mode), fwd_train_ms and bwd_ms (forward and backward inside the train
        step), macs (per image), macs_batch, flops, bytes, intensity, e2e_fwd_ms, e2e_train_step_ms and
        e2e_train_fwd_ms (the model's forward inside the step). Then a "rest" row with a `note`: fwd_ms =
        e2e_fwd_ms - the layers' fwd_ms, fwd_train_ms = e2e_train_fwd_ms - the layers' fwd_train_ms, bwd_ms =
        e2e_train_step_ms - e2e_train_fwd_ms - the layers' bwd_ms; so fwd_ms sums to e2e_fwd_ms over the rows and
        fwd_train_ms + bwd_ms to e2e_train_step_ms. On CUDA the end-to-end times are unprofiled (CUDA events) and
        the rows sum to the device's busy time instead; the rest row's idle_fwd_ms and idle_train_step_ms (None
        on the CPU) hold the difference, so rows + idle = end to end. All times are medians over `repeats` in ms.

    Raises:
        ValueError: unknown dtype, repeats < 1 or warmup < 0.
    """
    if dtype not in DTYPES or repeats < 1 or warmup < 0:
        raise ValueError(f"time_layers: dtype={dtype!r} (allowed {sorted(DTYPES)}), repeats={repeats} (>= 1), "
                         f"warmup={warmup} (>= 0)")
    device = torch.device(device)
    if device.type == "cuda":
        configure_cuda(deterministic=False)
    net = copy.deepcopy(model).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x, y = _make_batch(tuple(input_shape), batch_size, num_classes, device, channels_last)
    macs = {r["name"]: r["macs"] for r in layer_table(copy.deepcopy(model).cpu(), tuple(input_shape))}
    calls = _leaf_calls(net, x)
    fwd_iters, step_iters = _measure(net, x, y, dtype, warmup, repeats, None if trace is None else Path(trace))
    itemsize = DTYPES[dtype].itemsize
    e2e = {"e2e_fwd_ms": _median(fwd_iters, "e2e_ms"), "e2e_train_step_ms": _median(step_iters, "e2e_ms"),
           "e2e_train_fwd_ms": _median(step_iters, "model", _MODEL)}
    setting = {"batch_size": batch_size, "dtype": dtype, "channels_last": channels_last, "device": device.type}
    rows = [{**_layer_row(n, m, n_in, n_out, int(macs.get(n, 0)), batch_size, itemsize), **setting,
             "fwd_ms": _median(fwd_iters, "fwd", n), "fwd_train_ms": _median(step_iters, "fwd", n),
             "bwd_ms": _median(step_iters, "bwd", n), **e2e} for n, (m, n_in, n_out) in calls.items()]
    rows.append(_rest_row(rows, fwd_iters, step_iters, e2e, setting, device.type == "cuda"))
    return rows


def _rest_row(rows: list[dict[str, Any]], fwd_iters: list[dict], step_iters: list[dict], e2e: dict[str, float],
              setting: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """The time in no layer, so that the rows add up to the whole (see `time_layers`).

    On the CPU the whole is the end-to-end time. On CUDA it is the device's busy time (its kernels), and the rest
    of the unprofiled end-to-end time is the device's idle time (`idle_fwd_ms`, `idle_train_step_ms`): launch
    gaps, host work the device waits for.
    """
    busy_fwd = _median(fwd_iters, "busy_ms") if cuda else e2e["e2e_fwd_ms"]
    busy_step = _median(step_iters, "busy_ms") if cuda else e2e["e2e_train_step_ms"]
    return {"layer": "rest", "block": "rest", "kind": "rest", "macs": 0, "macs_batch": 0, "flops": 0, "bytes": 0,
            "intensity": None, **setting,
            "fwd_ms": busy_fwd - sum(r["fwd_ms"] for r in rows),
            "fwd_train_ms": e2e["e2e_train_fwd_ms"] - sum(r["fwd_train_ms"] for r in rows),
            "bwd_ms": busy_step - e2e["e2e_train_fwd_ms"] - sum(r["bwd_ms"] for r in rows),
            **e2e, "idle_fwd_ms": e2e["e2e_fwd_ms"] - busy_fwd if cuda else None,
            "idle_train_step_ms": e2e["e2e_train_step_ms"] - busy_step if cuda else None,
            "note": REST_NOTE_CUDA if cuda else REST_NOTE}


def format_layer_times(rows: list[dict[str, Any]]) -> str:
    """An aligned text table of `time_layers` rows (what `nin_bench inspect --time` prints).

    Args:
        rows: `time_layers` rows, optionally through `roofline` (for the bound column).

    Returns:
        A title line, then per layer MACs, share of MACs (over the layers), forward and backward ms with their
        shares (over the layers and the rest), FLOP/byte and bound; then the rest line and the total line.
    """
    layers = [r for r in rows if r["kind"] != "rest"]
    total_macs = sum(r["macs"] for r in layers)
    total_fwd, total_bwd = sum(r["fwd_ms"] for r in rows), sum(r["bwd_ms"] for r in rows)
    pct = (lambda part, whole: f"{100 * part / whole:.1f}" if whole else "")
    header = ["layer", "kind", "MACs", "MACs %", "fwd ms", "fwd %", "bwd ms", "bwd %", "FLOP/B", "bound"]

    def cells(r: dict[str, Any]) -> list[str]:
        return [r["layer"], r["kind"], f"{r['macs']:,}", pct(r["macs"], total_macs), f"{r['fwd_ms']:.3f}",
                pct(r["fwd_ms"], total_fwd), f"{r['bwd_ms']:.3f}", pct(r["bwd_ms"], total_bwd),
                "" if r.get("intensity") is None else f"{r['intensity']:.2f}", r.get("bound") or ""]

    body = [cells(r) for r in rows]
    total = ["total", "", f"{total_macs:,}", pct(total_macs, total_macs), f"{total_fwd:.3f}",
             pct(total_fwd, total_fwd), f"{total_bwd:.3f}", pct(total_bwd, total_bwd), "", ""]
    widths = [max(len(c[i]) for c in [header, *body, total]) for i in range(len(header))]

    def line(c: list[str]) -> str:
        return "  ".join(s.ljust(w) if i in (0, 1, 9) else s.rjust(w)
                         for i, (s, w) in enumerate(zip(c, widths))).rstrip()

    rule = "-" * len(line(["-" * w for w in widths]))
    first = rows[0]
    title = (f"batch {first['batch_size']}, {first['dtype']}, {'channels_last' if first['channels_last'] else 'NCHW'}"
             f", {first['device']}: end-to-end forward {first['e2e_fwd_ms']:.3f} ms, train step "
             f"{first['e2e_train_step_ms']:.3f} ms (medians); bwd = the layer's backward in the train step; rest = "
             f"{REST_NOTE}")
    idle = next((r for r in rows if r["kind"] == "rest" and r.get("idle_fwd_ms") is not None), None)
    if idle is not None:  # CUDA: the rows sum to the device's busy time; its idle time is apart
        title += (f"; device idle (not in the rows) {idle['idle_fwd_ms']:.3f} ms in the forward, "
                  f"{idle['idle_train_step_ms']:.3f} ms in the train step")
    if first.get("peak_tflops") is not None:
        source = f" ({first['peak_source']})" if first.get("peak_source") else ""
        title += f"; roof {first['peak_tflops']:.3g} TFLOP/s{source}"
    rest = [c for c, r in zip(body, rows) if r["kind"] == "rest"]
    return "\n".join([title, line(header), rule, *(line(c) for c, r in zip(body, rows) if r["kind"] != "rest"),
                      rule, *map(line, rest), line(total)])
