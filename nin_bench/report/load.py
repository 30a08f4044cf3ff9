"""Read a results folder (records, resolved config, manifest) into pandas, and name its variants and baselines."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nin_bench.report.summary import AXES, build_summary
from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import latest_per_key
from nin_bench.store.schema import RECORD_KINDS


@dataclass
class Run:
    """Everything the report reads from one results folder.

    Attributes:
        results_dir: the folder.
        config: resolved config (plain dict; {} if missing).
        manifest: manifest.json ({} if missing).
        stages: stage name -> DataFrame of that stage's records (empty DataFrame if the stage never ran).
        summary: one row per variant (`nin_bench.report.summary.build_summary`).
        variants: variant ids in grid (first appearance) order.
    """

    results_dir: Path
    config: dict[str, Any]
    manifest: dict[str, Any]
    stages: dict[str, pd.DataFrame]
    summary: pd.DataFrame
    variants: list[str] = field(default_factory=list)

    def stage(self, name: str) -> pd.DataFrame:
        """Records of one stage (empty DataFrame if none)."""
        return self.stages.get(name, pd.DataFrame())

    @property
    def reference_batch_size(self) -> int | None:
        """The timing section's reference batch size (None if unset)."""
        return (self.config.get("timing") or {}).get("reference_batch_size")


def load_run(results_dir: Path | ResultsDir) -> Run:
    """Load a results folder.

    Args:
        results_dir: folder holding records.jsonl (and optionally config.resolved.yaml, manifest.json).

    Returns:
        A `Run`. Missing files give empty parts, never an error, so partial runs still report.
    """
    out = results_dir if isinstance(results_dir, ResultsDir) else ResultsDir(results_dir)
    records = latest_per_key(out.read_records())  # a retried unit's later record replaces the earlier
    config = out.read_config()
    manifest = out.read_manifest()
    frames = {s: pd.DataFrame([r for r in records if r.get("stage") == s]) for s in RECORD_KINDS}
    ref = (config.get("timing") or {}).get("reference_batch_size")
    summary = build_summary(records, reference_batch_size=ref)
    return Run(out.root, config, manifest, frames, summary, list(summary["variant"]))


def grid_axes(config: dict[str, Any], summary: pd.DataFrame | None = None) -> list[str]:
    """Record columns of the grid's dotted keys (`model.n_1x1` -> `n_1x1`), in grid order, then those of the
    `variants` entries' keys, in order of first appearance.

    Args:
        config: resolved config.
        summary: used when the config has neither: the axes whose values differ between variants.

    Returns:
        Column names; only those that are variant axes.
    """
    keys = [*(config.get("grid") or {}), *(k for entry in config.get("variants") or [] for k in entry)]
    cols = list(dict.fromkeys(str(k).split(".")[-1] for k in keys))
    if not cols and summary is not None and len(summary):
        cols = [a for a in AXES if a in summary and summary[a].astype(str).nunique() > 1]
    return [c for c in cols if c in AXES]


def variant_label(row: pd.Series | dict[str, Any], axes: list[str]) -> str:
    """A short label naming a variant by the grid axes that vary (dataset left out: tables are per data set).

    Args:
        row: a summary row.
        axes: grid axis columns.

    Returns:
        e.g. "n_1x1=2, head=gap"; the variant id when there are no other axes.
    """
    parts = [f"{a}={row[a]}" for a in axes if a != "dataset"]
    return ", ".join(parts) if parts else str(row["variant"])


def baselines(summary: pd.DataFrame, config: dict[str, Any]) -> dict[str, str | None]:
    """The baseline variant of each data set for paired deltas.

    Args:
        summary: one row per variant.
        config: resolved config; `report.baseline` maps dotted grid keys to values.

    Returns:
        dataset -> baseline variant id: the first variant matching every `report.baseline` value, or the
        data set's first variant in grid order when no baseline is configured; None when none matches.
    """
    spec = ((config.get("report") or {}).get("baseline")) or {}
    return {str(ds): matching_variant(group, spec) for ds, group in summary.groupby("dataset", sort=False)}


def matching_variant(group: pd.DataFrame, spec: dict[str, Any]) -> str | None:
    """The first variant of `group` (summary rows) whose columns match every dotted key of `spec` (a key whose
    column the summary lacks is ignored), or None when none matches."""
    match = group
    for key, value in spec.items():
        col = str(key).split(".")[-1]
        if col in match:
            match = match[match[col].map(lambda v, want=value: _same(v, want))]
    return str(match["variant"].iloc[0]) if len(match) else None


def _same(a: Any, b: Any) -> bool:
    """Equality that treats 0.5 and "0.5", 1 and 1.0 alike (YAML vs JSON types)."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
