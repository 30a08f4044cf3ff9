"""A grid that sweeps a training setting (`train.lr`, `train.epochs`): which value the validation set picks.

The choice is read off the last epoch's validation accuracy (`val_acc`, the held-out part of the training split),
never off test accuracy, per group of the other axes (e.g. per head type). The winner is said to be resolved from
the runner-up only when the 95 % interval of their difference excludes 0: paired by seed when both have two or
more seeds in common, else a normal interval for two independent proportions over the validation images (which
covers validation-set sampling only, not seed-to-seed variation). No torch here.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import pandas as pd

from nin_bench.report import fmt
from nin_bench.report.document import Doc
from nin_bench.report.load import Run, grid_axes, variant_label
from nin_bench.report.stats import paired_delta, proportion_diff
from nin_bench.report.summary import TRAIN_AXES


@dataclass(frozen=True)
class Setting:
    """One value of the swept training setting within a group: its validation accuracy at the last epoch.

    Attributes:
        variant: the variant id.
        label: the swept setting, e.g. "lr=0.2".
        val: seed -> last-epoch validation accuracy (empty: not trained yet).
        gap: mean over seeds of the last epoch's eval-mode training accuracy minus validation accuracy (NaN
            when not recorded).
        val_size: validation images per run (NaN when not recorded).
    """

    variant: str
    label: str
    val: pd.Series
    gap: float
    val_size: float

    @property
    def mean(self) -> float:
        return float(self.val.mean()) if len(self.val) else math.nan


def swept_axes(run: Run) -> list[str]:
    """The grid's training axes (`lr`, `epochs`): empty when the suite sweeps no training setting."""
    keys = [str(k) for k in (run.config.get("grid") or {}) if str(k).startswith("train.")]
    return [k.split(".")[-1] for k in keys if k.split(".")[-1] in TRAIN_AXES]


def _last_epochs(epochs: pd.DataFrame) -> pd.DataFrame:
    """Each (variant, seed)'s last epoch record."""
    if epochs.empty or "val_acc" not in epochs:
        return pd.DataFrame(columns=["variant", "seed", "val_acc"])
    ok = epochs[epochs["val_acc"].notna()]
    return ok.sort_values("epoch").groupby(["variant", "seed"], sort=False).tail(1)


def groups(run: Run) -> dict[tuple[str, str], list[Setting]]:
    """(data set, label of the other axes) -> the swept settings of that group, in grid order.

    A variant with no finished training run appears with an empty `val` (not trained yet)."""
    swept = swept_axes(run)
    others = [a for a in grid_axes(run.config, run.summary) if a not in swept]
    last = _last_epochs(run.stage("train_epoch"))
    finals = run.stage("train")
    done = set(finals.loc[finals["status"] == "ok", "variant"]) if "status" in finals else set()
    out: dict[tuple[str, str], list[Setting]] = {}
    for _, row in run.summary.iterrows():
        mine = last[(last["variant"] == row["variant"]) & last["variant"].isin(done)]
        val = mine.set_index("seed")["val_acc"].astype(float) if len(mine) else pd.Series(dtype=float)
        gap = (mine["train_eval_acc"] - mine["val_acc"]).mean() if "train_eval_acc" in mine and len(mine) else math.nan
        size = finals.loc[finals["variant"] == row["variant"], "val_size"] if "val_size" in finals else pd.Series()
        setting = Setting(str(row["variant"]), variant_label(row, swept), val, float(gap),
                          float(size.iloc[0]) if len(size) else math.nan)
        out.setdefault((str(row["dataset"]), variant_label(row, others)), []).append(setting)
    grid = run.config.get("grid") or {}
    wanted = [", ".join(f"{a}={v}" for a, v in zip(swept, combo, strict=True))
              for combo in itertools.product(*(grid[f"train.{a}"] for a in swept))]
    for settings in out.values():  # the grid's values no run of this group has finished yet
        have = {s.label for s in settings}
        settings += [Setting("", label, pd.Series(dtype=float), math.nan, math.nan)
                     for label in wanted if label not in have]
    return out


def _difference(best: Setting, next_: Setting) -> tuple[float, float, str]:
    """The 95 % interval of best − runner-up and what it covers."""
    shared = best.val.index.intersection(next_.val.index)
    if len(shared) >= 2:
        d = paired_delta(best.val, next_.val)
        return d.lo, d.hi, f"paired over {d.n} seeds"
    if math.isnan(best.val_size) or math.isnan(next_.val_size):
        return math.nan, math.nan, "no interval"
    lo, hi = proportion_diff(best.mean, best.val_size, next_.mean, next_.val_size)
    return lo, hi, f"{int(best.val_size):,} validation images, unpaired: validation-set sampling only"


def choice_text(group: str, settings: list[Setting]) -> str:
    """One group's choice: the value with the highest last-epoch validation accuracy, and whether it is resolved
    from the runner-up; "provisional" while some values have not been trained."""
    trained = sorted((s for s in settings if len(s.val)), key=lambda s: -s.mean)
    missing = [s.label for s in settings if not len(s.val)]
    head = f"**{group}:** " if group not in {s.variant for s in settings} else ""
    if not trained:
        return head + "no value trained yet."
    best = trained[0]
    text = f"{head}{best.label} (validation {fmt.pct(best.mean)}, n = {len(best.val)})"
    if len(trained) > 1:
        nxt = trained[1]
        lo, hi, how = _difference(best, nxt)
        resolved = not math.isnan(lo) and (lo > 0 or hi < 0)
        ci = fmt.interval(-hi, -lo, signed=True, unit="pp")
        text += (f"; next {nxt.label} at {fmt.delta(nxt.mean - best.mean)} ({ci}, {how}): "
                 + ("resolved." if resolved else "not resolved, so the choice is a point estimate that more seeds "
                    "could change."))
    if missing:
        text += ("" if text.endswith(".") else ".") + f" Provisional: {', '.join(missing)} not trained yet."
    return text


def add_section(doc: Doc, run: Run) -> None:
    """The report section of a suite that sweeps a training setting; nothing for any other suite."""
    swept = swept_axes(run)
    if not swept:
        return
    found = groups(run)
    if not found:
        return
    doc.h(2, "Training-setting choice (on validation accuracy)")
    doc.p(f"This suite sweeps {', '.join(f'`train.{a}`' for a in swept)}. Each group's value is the one with the "
          "highest validation accuracy at the last epoch (mean over its seeds; the validation images are held out "
          "of the training split), never the test accuracy, which the tables above report but which chooses "
          "nothing. The gap is eval-mode accuracy on a fixed sample of training images minus validation "
          "accuracy at the last epoch: above about 5 pp, the model overfits.")
    rows = []
    for (ds, group), settings in found.items():
        for s in settings:
            rows.append([ds, group, s.label, fmt.pct(s.mean) if len(s.val) else "not trained yet",
                         fmt.delta(s.gap) if not math.isnan(s.gap) else fmt.NA, str(len(s.val))])
    doc.table(["Data set", "Group", "Setting", "Val acc, last epoch", "Train (eval) − val", "n"], rows)
    doc.ul([f"{ds}: " + choice_text(group, settings) for (ds, group), settings in found.items()])
