"""Report figures (seaborn, Agg backend): accuracy vs cost, throughput vs batch, learning curves, size by block.

Every function returns the PNG path it wrote (an SVG is written beside it), or None when the run has no data
for that figure, so a partial run simply has fewer figures.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")  # headless: the report runs in CI and over ssh
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from nin_bench.report import fmt  # noqa: E402
from nin_bench.report.stats import pareto_front  # noqa: E402
from nin_bench.store.folder import ResultsDir  # noqa: E402

DPI = 150


def save(fig: plt.Figure, out: ResultsDir, name: str) -> Path:
    """Write the figure `name` as PNG (150 dpi) and SVG into the results folder (atomically), close the figure.

    Args:
        fig: the figure.
        out: the results folder.
        name: file stem.

    Returns:
        Path of the PNG.
    """
    png = out.figure(name, "png")
    with out.writing(png) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    # No date and a fixed id salt in the SVG, so re-running the report gives byte-identical files.
    with matplotlib.rc_context({"svg.hashsalt": "nin_bench"}), out.writing(out.figure(name, "svg")) as tmp:
        fig.savefig(tmp, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return png


def _palette(labels: list[str]) -> dict[str, tuple]:
    """One stable colour per variant label, shared by every figure."""
    return dict(zip(labels, sns.color_palette("tab10" if len(labels) <= 10 else "husl", len(labels))))


def accuracy_vs_cost(table: pd.DataFrame, out: ResultsDir) -> Path | None:
    """Test accuracy vs params and vs MACs (log x), error bars = std over seeds, Pareto frontier dashed.

    Args:
        table: `tables.results_table` (full precision).
        out: the results folder (figures go to its figures/).

    Returns:
        PNG path, or None if nothing was trained.
    """
    t = table[table["test_acc_mean"].notna()]
    if t.empty:
        return None
    datasets = list(dict.fromkeys(t["dataset"]))
    colours = _palette(list(dict.fromkeys(table["label"])))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        d = t[t["dataset"] == ds]
        for j, (col, xlabel) in enumerate([("params", "Parameters (count, log scale)"),
                                           ("macs", "MACs per image (multiply-adds, log scale)")]):
            axes[i, j].set_xscale("log")
            _scatter_front(axes[i, j], d, col, colours)
            axes[i, j].set(xlabel=xlabel, ylabel="Test accuracy (%)", title=f"{ds}")
    handles = [plt.Line2D([], [], marker="o", ls="", color=c, label=lab) for lab, c in colours.items()]
    handles.append(plt.Line2D([], [], ls="--", color="grey", label="Pareto frontier"))
    fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), bbox_to_anchor=(0.5, -0.02),
               frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save(fig, out, "accuracy_vs_cost")


def _scatter_front(ax: plt.Axes, d: pd.DataFrame, col: str, colours: dict[str, tuple]) -> None:
    """Points with std error bars on one axis, and the dashed step line through the Pareto-optimal ones."""
    d = d[d[col].notna()]
    x, y = d[col].to_numpy(float), d["test_acc_mean"].to_numpy(float) * 100
    err = np.nan_to_num(d["test_acc_std"].to_numpy(float) * 100)
    for xi, yi, ei, lab in zip(x, y, err, d["label"]):
        ax.errorbar(xi, yi, yerr=ei, fmt="o", ms=7, capsize=4, color=colours[lab])
    if len(x) and x.min() == x.max():  # one x value: give the log axis a span (matplotlib warns otherwise)
        ax.set_xlim(x.min() / 2, x.max() * 2)
    front = pareto_front(x, y)
    if len(front):
        ax.plot(x[front], y[front], ls="--", color="grey", drawstyle="steps-post", zorder=0)
        ax.scatter(x[front], y[front], s=180, facecolors="none", edgecolors="grey", zorder=0)
    _ticks_at(ax, np.unique(x), fmt.params if col == "params" else fmt.macs)
    ax.margins(x=0.08)


def _ticks_at(ax: plt.Axes, values: np.ndarray, label: Callable[[float], str]) -> None:
    """Log-axis ticks at the data values, labelled readably ("967k", "222.5M"): the variants often span less
    than a decade, where default log ticks are absent or crowded."""
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(values))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([label(v) for v in values]))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.tick_params(axis="x", labelrotation=30)


def throughput_vs_batch(timing: pd.DataFrame, labels: dict[str, str], out: ResultsDir) -> Path | None:
    """Images/s vs batch size per variant; forward and train step side by side, one row per data set.

    Args:
        timing: records of the "timing" stage.
        labels: variant id -> label.
        out: the results folder (figures go to its figures/).

    Returns:
        PNG path, or None without successful timing rows.
    """
    if timing.empty or "img_per_s" not in timing:
        return None
    t = timing[(timing["status"] == "ok") & timing["img_per_s"].notna()].copy()
    if t.empty:
        return None
    t["variant label"] = t["variant"].map(labels)
    t["setting"] = [_setting(r) for _, r in t.iterrows()]
    style = "setting" if t["setting"].nunique() > 1 else None
    modes = [m for m in ("forward", "train_step") if m in set(t["mode"])]
    datasets = list(dict.fromkeys(t["dataset"]))
    colours = _palette(list(dict.fromkeys(labels.values())))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(datasets), len(modes), figsize=(5.5 * len(modes), 4 * len(datasets)),
                                 squeeze=False)
    for i, ds in enumerate(datasets):
        for j, mode in enumerate(modes):
            d = t[(t["dataset"] == ds) & (t["mode"] == mode)]
            sns.lineplot(d, x="batch_size", y="img_per_s", hue="variant label", style=style, markers=True,
                         marker=None if style else "o", palette=colours, ax=axes[i, j],
                         legend=(i == 0 and j == len(modes) - 1))
            _round_spread(axes[i, j], d, colours)
            axes[i, j].set(xscale="log", yscale="log", xlabel="Batch size (images, log scale)",
                           ylabel="Throughput (img/s, log scale)", title=f"{ds}: {mode.replace('_', ' ')}")
            _ticks_at(axes[i, j], np.unique(d["batch_size"].to_numpy(float)), lambda v: f"{v:.0f}")
    if axes[0, -1].get_legend():
        sns.move_legend(axes[0, -1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return save(fig, out, "throughput_vs_batch")


def _round_spread(ax: plt.Axes, d: pd.DataFrame, colours: dict[str, tuple]) -> None:
    """Error bars from the slowest to the fastest round's median (img/s) on rows timed in rounds."""
    if "round_ms_min" not in d:
        return
    r = d[d["round_ms_min"].notna() & d["round_ms_max"].notna()]
    for _, row in r.iterrows():
        ips, bs = float(row["img_per_s"]), float(row["batch_size"])
        lo, hi = 1000 * bs / float(row["round_ms_max"]), 1000 * bs / float(row["round_ms_min"])
        ax.errorbar(bs, ips, yerr=[[max(ips - lo, 0.0)], [max(hi - ips, 0.0)]], fmt="none", capsize=3, lw=1,
                    color=colours.get(row["variant label"], "grey"))


def _setting(r: pd.Series) -> str:
    """"fp32", "bf16, channels_last, compile": the timing options of a row."""
    parts = [str(r.get("dtype", "fp32"))]
    if bool(r.get("channels_last")):
        parts.append("channels_last")
    if bool(r.get("compile")):
        parts.append("compile")
    return ", ".join(parts)


def learning_curves(epochs: pd.DataFrame, labels: dict[str, str], out: ResultsDir) -> Path | None:
    """Validation accuracy and train loss per epoch: mean over seeds with a ±1 std band.

    Args:
        epochs: records of the "train_epoch" stage.
        labels: variant id -> label.
        out: the results folder (figures go to its figures/).

    Returns:
        PNG path, or None without epoch records.
    """
    if epochs.empty or "epoch" not in epochs:
        return None
    e = epochs[epochs["status"] == "ok"].copy()
    if e.empty:
        return None
    e["variant label"] = e["variant"].map(labels)
    e["val_acc_pct"] = e["val_acc"].astype(float) * 100
    datasets = list(dict.fromkeys(e["dataset"]))
    colours = _palette(list(dict.fromkeys(labels.values())))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(datasets), 2, figsize=(11, 4 * len(datasets)), squeeze=False)
    for i, ds in enumerate(datasets):
        d = e[e["dataset"] == ds]
        for j, (col, ylabel) in enumerate([("val_acc_pct", "Validation accuracy (%)"),
                                           ("train_loss", "Train loss (cross-entropy, nats)")]):
            sns.lineplot(d, x="epoch", y=col, hue="variant label", errorbar="sd", palette=colours,
                         ax=axes[i, j], legend=(i == 0 and j == 1), marker="o")
            axes[i, j].set(xlabel="Epoch", ylabel=ylabel, title=ds)
            axes[i, j].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if axes[0, 1].get_legend():
        sns.move_legend(axes[0, 1], "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return save(fig, out, "learning_curves")


def _group_cols(profile: pd.DataFrame, prefix: str) -> list[str]:
    """`params_block1..N`, `params_head` (blocks in numeric order, head last); skips params_trainable."""
    cols = [c for c in profile.columns if re.fullmatch(f"{prefix}_(block\\d+|head)", c)]
    return sorted(cols, key=lambda c: (c.endswith("_head"), int(re.sub(r"\D", "", c) or 0)))


def size_by_block(profile: pd.DataFrame, labels: dict[str, str], out: ResultsDir) -> Path | None:
    """Stacked horizontal bars of params and MACs per block and head, one bar per variant.

    Args:
        profile: records of the "profile" stage.
        labels: variant id -> label (data set appended when there are several).
        out: the results folder (figures go to its figures/).

    Returns:
        PNG path, or None without per-group columns.
    """
    if profile.empty:
        return None
    p = profile[profile["status"] == "ok"].drop_duplicates("variant")
    pcols, mcols = _group_cols(p, "params"), _group_cols(p, "macs")
    if p.empty or not pcols:
        return None
    names = [labels.get(v, v) for v in p["variant"]]
    groups = list(dict.fromkeys(c.split("_", 1)[1] for c in pcols + mcols))
    colours = dict(zip(groups, sns.color_palette("Set2", len(groups))))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(1, 2, figsize=(12, 1.0 + 0.5 * len(names)), squeeze=False)
    for ax, cols, scale, xlabel in [(axes[0, 0], pcols, 1e6, "Parameters (millions)"),
                                    (axes[0, 1], mcols, 1e6, "MACs per image (millions)")]:
        left = np.zeros(len(names))
        for c in cols:
            vals = p[c].fillna(0).to_numpy(float) / scale
            ax.barh(names, vals, left=left, color=colours[c.split("_", 1)[1]], label=c.split("_", 1)[1])
            left += vals
        ax.set(xlabel=xlabel)
        ax.invert_yaxis()
    axes[0, 1].set_yticklabels([])
    axes[0, 1].legend(title="Group", loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return save(fig, out, "size_by_block")
