"""Expand a suite's grid (and its explicit `variants` list) into variants, each with a readable deterministic id and
its flat axis columns."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from nin_bench.errors import ConfigError
from nin_bench.suite import presets
from nin_bench.suite.config import SuiteConfig, apply_overrides


@dataclass(frozen=True)
class Variant:
    """One grid point: the config with its grid values (and its `variants` entry) applied, and its id."""

    id: str
    config: SuiteConfig
    grid_values: tuple[tuple[str, Any], ...]

    def data_shape(self, observed: tuple[int, int, int] | None = None) -> "DataShape":
        """See `data_shape_of`."""
        return data_shape_of(self, observed)

    def record_columns(self, shape: "DataShape") -> dict[str, Any]:
        """The flat axis columns every record of this variant carries (its axes and the shape its model sees)."""
        m, d = self.config.model, self.config.data
        cols = {
            "variant": self.id, "preset": m.preset, "n_1x1": m.n_1x1, "head": m.head, "dropout": m.dropout,
            "head_dropout": m.resolved_head_dropout, "width": m.width, "batchnorm": m.batchnorm, "fc_hidden": _hidden_text(m.fc_hidden), "init": m.init,
            "dataset": d.dataset, "in_channels": shape.channels, "input_size": shape.side,
            "num_classes": shape.num_classes,
        }
        for key, value in self.grid_values:  # grid keys outside the model/data axes, e.g. train.lr
            cols.setdefault(key.split(".")[-1], value)
        return cols


def _hidden_text(hidden: list[int] | None) -> str | None:
    return None if hidden is None else "x".join(str(h) for h in hidden) or "none"


def input_size_of(cfg: SuiteConfig) -> int | None:
    """The input side the model sees: data.input_size, else the preset's `resize_to` (224 for nin_d2l), else None
    (the data's native side)."""
    return cfg.data.input_size or presets.REGISTRY[cfg.model.preset].resize_to


def variant_id(cfg: SuiteConfig, grid_values: tuple[tuple[str, Any], ...]) -> str:
    """A readable id, e.g. `nin_cifar-n1x1_2-gap-do0.5-cifar10`; non-default axes are appended.

    An FC head whose dropout differs from the trunk's gets `-hdo<p>` (e.g. `nin_cifar-n1x1_2-fc-do0.5-cifar10-hdo0`);
    a head dropout left unset (None: the trunk's p) or set to the trunk's p builds the model the id named before
    `model.head_dropout` existed, so it keeps that id (and the GAP head, which has no dropout, never gets one).

    Args:
        cfg: the variant's config (grid values applied).
        grid_values: (dotted key, value) of this grid point, to name axes the fixed parts do not.
    """
    m, d = cfg.model, cfg.data
    parts = [m.preset, f"n1x1_{m.n_1x1}", m.head, f"do{m.dropout:g}", d.dataset]
    if m.width != 1.0:
        parts.append(f"w{m.width:g}")
    if m.batchnorm:
        parts.append("bn")
    if m.fc_hidden is not None:
        parts.append(f"fc{_hidden_text(m.fc_hidden)}")
    if d.input_size is not None:
        parts.append(f"in{d.input_size}")
    if m.head != "gap" and m.resolved_head_dropout != m.dropout:
        parts.append(f"hdo{m.resolved_head_dropout:g}")
    named = {"model.preset", "model.n_1x1", "model.head", "model.dropout", "data.dataset", "model.width",
             "model.batchnorm", "model.fc_hidden", "data.input_size", "model.head_dropout"}
    for key, value in grid_values:
        if key not in named:
            parts.append(f"{key.split('.')[-1]}{value}")
    return "-".join(str(p) for p in parts)


def expand_grid(cfg: SuiteConfig) -> list[Variant]:
    """The cartesian product of the grid, in YAML order (last key varies fastest), crossed with the suite's
    `variants` list, which varies fastest of all (no list: the grid alone; no grid: the list alone).

    Raises:
        ConfigError: two points map to the same id (a grid over a key with duplicate values, two equal `variants`
            entries, or settings the model ignores: `model.head_dropout` of a GAP head, which has no dropout).
    """
    keys = list(cfg.grid)
    rows = [tuple(entry.items()) for entry in cfg.variants] or [()]
    variants = []
    for combo in itertools.product(*(cfg.grid[k] for k in keys)):
        for i, row in enumerate(rows):
            values = tuple(zip(keys, combo)) + row
            vcfg = apply_overrides(cfg, dict(values), where=f"variants[{i}]" if row else "grid")
            variants.append(Variant(variant_id(vcfg, values), vcfg, values))
    ids = [v.id for v in variants]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"the grid and variants give duplicate variants {dupes}: remove repeated values or "
                          "entries (a GAP head ignores model.head_dropout: it has no dropout layer)")
    return variants



@dataclass(frozen=True)
class DataShape:
    """What a variant's model sees: input channels, square input side and class count."""

    channels: int
    side: int
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input image."""
        return (self.channels, self.side, self.side)


def data_shape_of(variant: "Variant", observed: tuple[int, int, int] | None = None) -> DataShape:
    """The variant's data shape: the built-in data set's facts, or for an image tree the (channels, side, classes)
    its loaded images show (`observed`, read by the caller), at data.input_size or the preset's fixed size.

    Raises:
        ValueError: an image-tree variant without `observed`.
    """
    spec = presets.DATASETS[variant.config.data.dataset]
    c, side, n = spec.channels, spec.native_size, spec.num_classes
    if c is None:  # an image tree: its shape is its images'
        if observed is None:
            raise ValueError(f"the shape of a {spec.name!r} variant is read from its data: pass what it holds")
        c, side, n = observed
    return DataShape(c, input_size_of(variant.config) or side, n)
