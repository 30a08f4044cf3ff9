"""`nin_bench inspect`: the per-layer table (d2l's layer_summary, with params and MACs) of a preset or suite."""
from __future__ import annotations

from pathlib import Path

from nin_bench.config import (
    PRESETS,
    ConfigError,
    load_config,
    parse_set,
    set_dotted,
    validate,
)
from nin_bench.profile import format_layer_table, layer_table
from nin_bench.variants import build_variant_model, expand_grid

# The data set each preset is shown on when only a preset is named: d2l's NiN is its Fashion-MNIST model.
_PRESET_DATA = {"nin_cifar": "cifar10", "nin_d2l": "fashion_mnist"}


def _preset_config(preset: str, sets: list[str]):
    raw = {"name": f"inspect-{preset}", "model": {"preset": preset}, "data": {"dataset": _PRESET_DATA[preset]},
           "grid": {"model.preset": [preset]}, "stages": ["profile"]}
    for item in sets:
        set_dotted(raw, *parse_set(item))
    return validate(raw)


def inspect_target(target: str, sets: list[str]) -> str:
    """Layer tables for a preset name (with `--set` overrides) or for every variant of a suite YAML.

    Args:
        target: "nin_cifar", "nin_d2l" or a path to a suite YAML.
        sets: `key=value` overrides.

    Returns:
        The text to print.
    """
    if target in PRESETS:
        cfg = _preset_config(target, sets)
    elif Path(target).suffix in (".yaml", ".yml") or Path(target).exists():
        cfg = load_config(Path(target), sets)
    else:
        raise ConfigError(f"{target!r} is neither a preset ({', '.join(PRESETS)}) nor a suite YAML file")
    out = []
    for v in expand_grid(cfg):
        shape = v.data_shape(_load)
        rows = layer_table(build_variant_model(v, shape), shape.input_shape)
        c, side = shape.channels, shape.side
        out.append(f"{v.id}  (input {c}x{side}x{side})\n{format_layer_table(rows)}")
    return "\n\n".join(out)


def _load(variant):
    """An image tree's data set (its channels, size and classes make the model's shape)."""
    from nin_bench.data import load_dataset

    d = variant.config.data
    return load_dataset(d.dataset, root=d.root, download=d.download, path=d.path)
