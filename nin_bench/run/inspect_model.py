"""`nin_bench inspect`: the per-layer table (d2l's layer_summary, with params and MACs) of a preset or suite, and
with `--time` the measured time of every layer beside its share of the MACs."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from nin_bench.errors import ConfigError
from nin_bench.measure.counts import format_layer_table, layer_table
from nin_bench.models.build import build_variant_model
from nin_bench.suite.config import (
    load_config,
    parse_set,
    set_dotted,
    validate,
)
from nin_bench.suite.machine import resolve_device
from nin_bench.suite.presets import REGISTRY
from nin_bench.suite.variants import expand_grid


def _preset_config(preset: str, sets: list[str]):
    """A one-variant config of `preset` on the data set it is shown on (`PresetSpec.shown_on`)."""
    raw = {"name": f"inspect-{preset}", "model": {"preset": preset}, "data": {"dataset": REGISTRY[preset].shown_on},
           "grid": {"model.preset": [preset]}, "stages": ["profile"]}
    for item in sets:
        set_dotted(raw, *parse_set(item))
    return validate(raw)


def inspect_target(target: str, sets: list[str], *, time: bool = False, batch: int | None = None,
                   dtype: str = "fp32", device: str = "auto", trace: Path | None = None) -> str:
    """Layer tables for a preset name (with `--set` overrides) or for every variant of a suite YAML.

    Args:
        target: a preset name (a key of `presets.REGISTRY`) or a path to a suite YAML.
        sets: `key=value` overrides.
        time: also measure where the time goes (`layer_timing.time_layers`): per-layer forward and train-step
            time beside the share of MACs, and each layer's roofline bound.
        batch: batch size of the timing (None: the config's `timing.reference_batch_size`).
        dtype: "fp32", "bf16" or "fp16" (autocast).
        device: "auto" (CUDA when torch sees it), "cpu" or "cuda".
        trace: with `time`, write the profiled forward's Chrome/Perfetto trace (`time_layers`' `trace`) to this
            file; for several variants one file each, named `<stem>-<variant id><suffix>`.

    Returns:
        The text to print (with `trace`, a line naming each trace file).
    """
    if target in REGISTRY:
        cfg = _preset_config(target, sets)
    elif Path(target).suffix in (".yaml", ".yml") or Path(target).exists():
        cfg = load_config(Path(target), sets)
    else:
        raise ConfigError(f"{target!r} is neither a preset ({', '.join(sorted(REGISTRY))}) nor a suite YAML file")
    timer = _layer_timer(cfg, batch, dtype, device) if time else None
    out = []
    variants = expand_grid(cfg)
    for v in variants:
        shape = v.data_shape(_observed(v))
        model = build_variant_model(v, shape)
        c, side = shape.channels, shape.side
        text = f"{v.id}  (input {c}x{side}x{side})\n{format_layer_table(layer_table(model, shape.input_shape))}"
        if timer is not None:
            file = None if trace is None else trace_file(trace, v.id, len(variants))
            text += "\n\n" + timer(model, shape, file)
            if file is not None:
                text += f"\n\ntrace: {file} (open it in https://ui.perfetto.dev)"
        out.append(text)
    return "\n\n".join(out)


def trace_file(trace: Path, variant_id: str, n_variants: int) -> Path:
    """Where a variant's trace goes: `trace` itself for one variant, else `<stem>-<variant id><suffix>` beside it."""
    if n_variants == 1:
        return trace
    return trace.with_name(f"{trace.stem}-{variant_id}{trace.suffix or '.json'}")


def _layer_timer(cfg: Any, batch: int | None, dtype: str, device: str) -> Callable[[Any, Any, Path | None], str]:
    """A function (model, shape, trace file) -> the per-layer time table, with the device's roofline measured once."""
    import torch

    from nin_bench.measure.ceilings import measure_ceilings, roofline
    from nin_bench.measure.layer_timing import format_layer_times, time_layers
    from nin_bench.runtime.device import configure_process

    dev = resolve_device(device, torch.cuda.is_available(), asked_as="--device cuda")
    configure_process(cfg.threads)  # as a run has it: its threads, no page faults per step
    bs = batch or cfg.timing.reference_batch_size
    ceilings = measure_ceilings(dev, [dtype], bandwidth=True)
    peak, bandwidth = ceilings.ceiling(dtype), ceilings.bandwidth()
    t = cfg.timing

    def timed(model: Any, shape: Any, trace: Path | None) -> str:
        rows = time_layers(model, shape.input_shape, batch_size=bs, device=dev, dtype=dtype,
                           warmup=t.warmup, repeats=t.repeats, num_classes=shape.num_classes, trace=trace)
        return format_layer_times(roofline(rows, peak, bandwidth))

    return timed


def _observed(variant: Any) -> tuple[int, int, int] | None:
    """An image tree's (channels, side, classes), read from its images; None for a built-in data set."""
    d = variant.config.data
    if d.dataset != "imagefolder":
        return None
    from nin_bench.data.datasets import load_dataset

    return load_dataset(d.dataset, root=d.root, download=d.download, path=d.path).image_shape
