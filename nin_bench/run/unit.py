"""What every stage of a run shares: the unit of work, its result, the run's context and the shared record columns.

A unit is a stage of a variant (and a seed, for training); a timing unit holds every variant timed side by side.
No module state: a unit runs the same in this process, a pool worker or a Ray worker.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from nin_bench.data.datasets import Dataset, load_dataset
from nin_bench.measure.ceilings import Ceilings
from nin_bench.store.folder import ResultsDir
from nin_bench.suite.variants import DataShape, Variant


class DeadlineReached(Exception):
    """The run's time budget (`RunContext.deadline`) is spent: stop between units or epochs, resumably."""


@dataclass(frozen=True)
class Unit:
    """One piece of work: a stage of a variant (and a seed, for training).

    A timing unit times several variants side by side in interleaved rounds: `group` holds them all (`variant`
    is the first); every other unit has an empty group.
    """

    variant: Variant
    stage: str
    seed: int | None = None
    group: tuple[Variant, ...] = ()

    @property
    def variants(self) -> tuple[Variant, ...]:
        """The variants this unit measures."""
        return self.group or (self.variant,)

    @property
    def label(self) -> str:
        """e.g. "nin_cifar-n1x1_2-gap-do0.5-cifar10 train s1", or "timing of 3 variants (nin_cifar-...)"."""
        if len(self.variants) > 1:
            return f"{self.stage} of {len(self.variants)} variants ({self.variant.id}, ...)"
        return f"{self.variant.id} {self.stage}" + ("" if self.seed is None else f" s{self.seed}")


@dataclass
class UnitResult:
    """What one unit produced: its records, and the GAP maps and test-set predictions of a training run (written
    by the runner)."""

    records: list[dict[str, Any]]
    maps: dict[str, Any] | None = None
    maps_name: str | None = None  # the results-folder name the final record gives the maps file
    preds: dict[str, Any] | None = None  # arrays `pred`, `label` (see `TrainResult.preds`)
    preds_name: str | None = None  # the results-folder name the final record gives them (`preds_file`)


@dataclass
class RunContext:
    """What the stages of one run share: the results folder, the device, and per-process caches."""

    results: ResultsDir
    device: str
    device_name: str
    protocol: str
    progress: bool = True
    datasets: dict[str, Dataset] = field(default_factory=dict)
    ceilings: Ceilings | None = None  # the run's measured peaks and bandwidth (None: measured on first use)
    train_step_img_per_s: dict[tuple, float] = field(default_factory=dict)
    deadline: float | None = None  # time.time() after which no new unit or epoch starts (None: no budget)

    def __post_init__(self) -> None:
        if self.ceilings is None:
            self.ceilings = Ceilings(self.device)

    def fresh(self) -> RunContext:
        """The same run without its data caches (what a Ray task receives: nothing large is pickled); the
        ceilings travel with it, so every unit divides by the same peak."""
        return RunContext(self.results, self.device, self.device_name, self.protocol, self.progress,
                          ceilings=self.ceilings, deadline=self.deadline)

    def check_deadline(self) -> None:
        """Raise DeadlineReached once the run's time budget is spent."""
        if self.deadline is not None and time.time() >= self.deadline:
            raise DeadlineReached("the run's time budget is spent")

    def dataset(self, variant: Variant) -> Dataset:
        """Load (once per context) the variant's data set."""
        d = variant.config.data
        key = d.path if d.dataset == "imagefolder" else d.dataset
        if key not in self.datasets:
            self.datasets[key] = load_dataset(d.dataset, root=d.root, download=d.download, path=d.path)
        return self.datasets[key]

    def shape(self, variant: Variant) -> DataShape:
        """The variant's input shape and class count (an image tree is read for its own)."""
        observed = self.dataset(variant).image_shape if variant.config.data.dataset == "imagefolder" else None
        return variant.data_shape(observed)



def base_record(variant: Variant, ctx: RunContext, stage: str) -> dict[str, Any]:
    """The keys every record carries: variant axes, stage, protocol, device."""
    return {**variant.record_columns(ctx.shape(variant)), "stage": stage, "status": "ok", "error": None,
            "protocol": ctx.protocol, "device": ctx.device, "device_name": ctx.device_name}


def unit_records(records: list[dict[str, Any]], unit: Unit) -> list[dict[str, Any]]:
    """The successful records of the unit's variants (what a later stage may reuse: FLOPs, timing rows)."""
    ids = {v.id for v in unit.variants}
    return [r for r in records if r.get("variant") in ids and r.get("status") == "ok"]
