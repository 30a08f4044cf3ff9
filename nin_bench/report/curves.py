"""Per-epoch figures: learning curves (validation accuracy, train loss) and, where the records carry
`train_eval_acc` (eval-mode accuracy on a fixed sample of training images), training against validation accuracy
with the overfitting gap between them.

Accuracy axes run from 0 to 100 %; the gap gets its own axis with a zero line, so the comparison it carries is
drawn at its own scale rather than by zooming an accuracy axis.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from nin_bench.report import fmt
from nin_bench.report.encoding import Encoding
from nin_bench.report.plots import Skip, height, legend_below, save
from nin_bench.report.stats import t_estimate
from nin_bench.store.folder import ResultsDir

TRAIN_COLOUR, VAL_COLOUR = "#1b9e77", "#d95f02"
MAX_BANDS = 4  # past this many variants a panel draws means only: bands of 16 curves hide each other
NO_TRAIN_EVAL = ("the epoch records predate `train_eval_acc` (eval-mode accuracy on training images); their "
                 "running train-mode accuracy is not comparable with validation accuracy")


def _ok(epochs: pd.DataFrame) -> pd.DataFrame:
    """Successful epoch rows (empty without any)."""
    if epochs.empty or "epoch" not in epochs:
        return epochs.iloc[0:0]
    return epochs[epochs["status"] == "ok"]


def _mean_band(ax: plt.Axes, d: pd.DataFrame, col: str, style: dict, band: bool, scale: float = 1.0) -> None:
    """Mean over seeds per epoch, with a ±1 std band over seeds."""
    g = d.groupby("epoch")[col].agg(["mean", "std"]).astype(float) * scale
    ax.plot(g.index, g["mean"], **style)
    if band and g["std"].notna().any():
        ax.fill_between(g.index, g["mean"] - g["std"], g["mean"] + g["std"], color=style["color"], alpha=0.15,
                        lw=0)


def learning_curves(epochs: pd.DataFrame, enc: Encoding, out: ResultsDir) -> Path | None:
    """Validation accuracy (0-100 %) and train loss per epoch, a row per data set, each variant in its style.

    Args:
        epochs: records of the "train_epoch" stage.
        enc: the grid's encoding.
        out: the results folder (figures go to its figures/).

    Returns:
        PNG path, or None without epoch records.
    """
    e = _ok(epochs)
    if e.empty:
        return None
    datasets = list(dict.fromkeys(e["dataset"]))
    band = e["variant"].nunique() <= MAX_BANDS * len(datasets)
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(datasets), 2, figsize=(11, height(3.6 * len(datasets) + 0.8)), squeeze=False)
    for i, ds in enumerate(datasets):
        d = e[e["dataset"] == ds]
        for v, g in d.groupby("variant", sort=False):
            style = enc.style(str(v)).line()
            _mean_band(axes[i, 0], g, "val_acc", style, band, 100)
            _mean_band(axes[i, 1], g, "train_loss", style, band)
        axes[i, 0].set(xlabel="Epoch", ylabel="Validation accuracy (%)", title=ds, ylim=(0, 100))
        axes[i, 1].set(xlabel="Epoch", ylabel="Train loss (cross-entropy, nats)", title=ds)
        for ax in axes[i]:
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    legend_below(fig, enc.handles())
    return save(fig, out, "learning_curves")


def final_gaps(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per variant, at its last epoch: eval-mode train accuracy, validation accuracy and their gap over seeds.

    Args:
        epochs: records of the "train_epoch" stage (`train_eval_acc` where recorded).

    Returns:
        Rows dataset, variant, epoch, n, train_eval_acc, val_acc (means, fractions), gap_mean, gap_lo, gap_hi
        (train − validation per seed, mean and 95 % t-CI; NaN CI with one seed), in record order; empty when no
        record has `train_eval_acc`.
    """
    e = _ok(epochs)
    if e.empty or "train_eval_acc" not in e:
        return pd.DataFrame()
    e = e[e["train_eval_acc"].notna() & e["val_acc"].notna()]
    rows = []
    for (ds, v), g in e.groupby(["dataset", "variant"], sort=False):
        last = g[g["epoch"] == g["epoch"].max()].groupby("seed")[["train_eval_acc", "val_acc"]].mean()
        est = t_estimate((last["train_eval_acc"] - last["val_acc"]).to_numpy(float))
        rows.append({"dataset": ds, "variant": v, "epoch": int(g["epoch"].max()), "n": est.n,
                     "train_eval_acc": float(last["train_eval_acc"].mean()), "val_acc": float(last["val_acc"].mean()),
                     "gap_mean": est.mean, "gap_lo": est.lo, "gap_hi": est.hi})
    return pd.DataFrame(rows)


def gap_table(gaps: pd.DataFrame, labels: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """The rounded table of `final_gaps` (every variant, including those the figure leaves out)."""
    header = ["Data set", "Variant", "Last epoch", "Train acc (eval mode)", "Val acc", "Gap (train − val)",
              "95 % CI (n)"]
    rows = [[str(r["dataset"]), labels.get(r["variant"], r["variant"]), str(r["epoch"]), fmt.pct(r["train_eval_acc"]),
             fmt.pct(r["val_acc"]), fmt.delta(r["gap_mean"]),
             fmt.interval(r["gap_lo"], r["gap_hi"], signed=True, unit="pp") + f" ({r['n']})"]
            for _, r in gaps.iterrows()]
    return header, rows


def train_vs_val(epochs: pd.DataFrame, enc: Encoding, labels: dict[str, str], keys: list[str],
                 out: ResultsDir) -> Path | Skip | None:
    """Eval-mode train vs validation accuracy per epoch for the key variants, and the gap of every variant.

    A row per data set: a panel per key variant (train solid, validation dashed, 0-100 %, the gap shaded), then
    one panel of the gap (train − validation, pp) per epoch for every variant in its style, zero line drawn.

    Args:
        epochs: records of the "train_epoch" stage.
        enc: the grid's encoding.
        labels: variant -> label.
        keys: the variants that get their own panel (`encoding.key_variants`).
        out: the results folder.

    Returns:
        PNG path; a `Skip` when the records have no `train_eval_acc`; None without epoch records.
    """
    e = _ok(epochs)
    if e.empty:
        return None
    if "train_eval_acc" not in e or e["train_eval_acc"].isna().all():
        return Skip(NO_TRAIN_EVAL)
    e = e[e["train_eval_acc"].notna()].assign(gap=lambda d: 100 * (d["train_eval_acc"] - d["val_acc"]))
    datasets = list(dict.fromkeys(e["dataset"]))
    per_ds = {ds: [k for k in keys if k in set(e.loc[e["dataset"] == ds, "variant"])] for ds in datasets}
    ncol = max(len(k) for k in per_ds.values()) + 1
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(datasets), ncol, figsize=(min(3.3 * ncol, 12.0), height(3.4 * len(datasets) + 0.9)),
                                 squeeze=False)
    for i, ds in enumerate(datasets):
        d = e[e["dataset"] == ds]
        for j in range(ncol - 1):
            if j >= len(per_ds[ds]):
                axes[i, j].set_visible(False)
                continue
            _train_val_panel(axes[i, j], d[d["variant"] == per_ds[ds][j]], labels.get(per_ds[ds][j], per_ds[ds][j]))
        gap_ax = axes[i, -1]
        for v, g in d.groupby("variant", sort=False):
            _mean_band(gap_ax, g, "gap", enc.style(str(v)).line(), False)
        gap_ax.axhline(0, color="black", lw=1)
        gap_ax.set(xlabel="Epoch", ylabel="Train − validation accuracy (pp)", title=f"{ds}: overfitting gap, all")
        gap_ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.tight_layout()
    legend_below(fig, [[plt.Line2D([], [], color=TRAIN_COLOUR, ls="-", marker="o", label="train (eval mode)"),
                        plt.Line2D([], [], color=VAL_COLOUR, ls="--", marker="s", label="validation")],
                       *enc.handles()])
    return save(fig, out, "train_vs_val")


def _train_val_panel(ax: plt.Axes, d: pd.DataFrame, title: str) -> None:
    """One variant: eval-mode train and validation accuracy (mean over seeds), the gap shaded."""
    g = d.groupby("epoch")[["train_eval_acc", "val_acc"]].mean().astype(float) * 100
    ax.plot(g.index, g["train_eval_acc"], color=TRAIN_COLOUR, ls="-", marker="o", ms=4)
    ax.plot(g.index, g["val_acc"], color=VAL_COLOUR, ls="--", marker="s", ms=4)
    ax.fill_between(g.index, g["val_acc"], g["train_eval_acc"], color="0.6", alpha=0.25, lw=0)
    ax.set(xlabel="Epoch", ylabel="Accuracy (%)", ylim=(0, 100), title=textwrap.fill(title, 36))
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.title.set_fontsize(9)

