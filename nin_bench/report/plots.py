"""Report figures (seaborn, Agg backend): accuracy vs cost, throughput vs batch, size by block; `save` and `Skip`
for every figure module.

Every figure function returns the PNG path it wrote (an SVG is written beside it), a `Skip` saying why the figure
would mislead or say nothing here, or None when the run has no data for it at all, so a partial run simply has
fewer figures. Accuracy axes run from 0 to 100 % (never zoomed): differences are read from the forest plot
(`effects.forest_figure`), which draws them on their own axis with their intervals.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the report runs in CI and over ssh
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from nin_bench.report import fmt
from nin_bench.report.encoding import Encoding
from nin_bench.report.stats import pareto_front
from nin_bench.store.folder import ResultsDir

DPI = 150
SVG = True  # tests turn it off (and lower DPI) to stay fast
MAX_HEIGHT_IN = 15.0  # 2,250 px at 150 dpi: every figure fits a screen or two
MAX_SETTING_ROWS = 4  # throughput rows (data set x timing setting) drawn; the rest are named in the caption


@dataclass(frozen=True)
class Skip:
    """A figure not drawn, and why (the report prints the reason).

    Attributes:
        reason: one clause, e.g. "every variant has the same parameters and MACs".
    """

    reason: str


def height(inches: float) -> float:
    """A figure height capped at `MAX_HEIGHT_IN`."""
    return min(float(inches), MAX_HEIGHT_IN)


def save(fig: plt.Figure, out: ResultsDir, name: str) -> Path:
    """Write the figure `name` as PNG (`DPI`) and SVG into the results folder (atomically), close the figure.

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
    if SVG:  # no date and a fixed id salt in the SVG, so re-running the report gives byte-identical files
        with matplotlib.rc_context({"svg.hashsalt": "nin_bench"}), out.writing(out.figure(name, "svg")) as tmp:
            fig.savefig(tmp, bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    return png


def legend_below(fig: plt.Figure, columns: list[list]) -> None:
    """One legend for the whole figure, under it: a column per group of entries (an axis's levels), padded so
    each group keeps its own column; a single long group wraps into columns of at most 6."""
    if len(columns) == 1 and len(columns[0]) > 6:
        columns = [columns[0][i:i + 6] for i in range(0, len(columns[0]), 6)]
    rows = max((len(c) for c in columns), default=0)
    blank = plt.Line2D([], [], ls="", label=" ")
    flat = [h for c in columns for h in c + [blank] * (rows - len(c))]
    fig.legend(handles=flat, loc="upper center", ncol=max(len(columns), 1), bbox_to_anchor=(0.5, 0.0),
               frameon=False)


def accuracy_vs_cost(table: pd.DataFrame, enc: Encoding, out: ResultsDir) -> Path | Skip | None:
    """Test accuracy vs params and vs MACs (log x), error bars = the 95 % t-CI over seeds, Pareto frontier dashed.

    Args:
        table: `tables.results_table` (full precision).
        enc: the grid's encoding.
        out: the results folder (figures go to its figures/).

    Returns:
        PNG path; a `Skip` when no data set's variants differ in parameters or MACs (a column of points says
        nothing the forest plot does not); None if nothing was trained or profiled.
    """
    t = table[table["test_acc_mean"].notna()]
    if t.empty or t[["params", "macs"]].isna().all().all():
        return None
    spread = t.groupby("dataset")[["params", "macs"]].nunique()
    if (spread.max(axis=1) <= 1).all():
        return Skip("every variant of a data set has the same parameters and MACs, so accuracy against cost "
                    "would be one column of points")
    datasets = list(dict.fromkeys(t["dataset"]))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(datasets), 2, figsize=(11, height(3.6 * len(datasets) + 0.8)),
                                 squeeze=False)
    for i, ds in enumerate(datasets):
        d = t[t["dataset"] == ds]
        for j, (col, xlabel) in enumerate([("params", "Parameters (count, log scale)"),
                                           ("macs", "MACs per image (multiply-adds, log scale)")]):
            axes[i, j].set_xscale("log")
            _scatter_front(axes[i, j], d, col, enc)
            axes[i, j].set(xlabel=xlabel, ylabel="Test accuracy (%)", title=f"{ds}", ylim=(0, 100))
    handles = [*enc.handles(points=True), [plt.Line2D([], [], ls="--", color="grey", marker="o", ms=10,
                                                              fillstyle="none", label="Pareto frontier")]]
    fig.tight_layout()
    legend_below(fig, handles)
    return save(fig, out, "accuracy_vs_cost")


def _scatter_front(ax: plt.Axes, d: pd.DataFrame, col: str, enc: Encoding) -> None:
    """Points with their CI bars on one axis, and the dashed step line through the Pareto-optimal ones."""
    d = d[d[col].notna()]
    x, y = d[col].to_numpy(float), d["test_acc_mean"].to_numpy(float) * 100
    lo = np.nan_to_num(y - d["ci_lo"].to_numpy(float) * 100)
    hi = np.nan_to_num(d["ci_hi"].to_numpy(float) * 100 - y)
    for xi, yi, l, h, v in zip(x, y, lo, hi, d["variant"]):
        ax.errorbar(xi, yi, yerr=[[l], [h]], capsize=3, **enc.style(str(v)).point())
    if len(x) and x.min() == x.max():  # one x value: give the log axis a span (matplotlib warns otherwise)
        ax.set_xlim(x.min() / 2, x.max() * 2)
    front = pareto_front(x, y)
    if len(front):
        ax.plot(x[front], y[front], ls="--", color="grey", drawstyle="steps-post", zorder=0)
        ax.scatter(x[front], y[front], s=200, facecolors="none", edgecolors="grey", zorder=0)
    _ticks_at(ax, np.unique(x), fmt.params if col == "params" else fmt.macs)
    ax.margins(x=0.08)


def _ticks_at(ax: plt.Axes, values: np.ndarray, label: Callable[[float], str]) -> None:
    """Log-axis ticks at the data values, labelled readably ("967k", "222.5M"): the variants often span less
    than a decade, where default log ticks are absent or crowded. A label closer than 1/12 of the axis span (in
    log) to the previous one is left out, so clustered values do not print over each other."""
    values = np.sort(values[values > 0])
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(values))
    gap = (np.log10(values[-1] / values[0]) / 12) if len(values) > 1 else 0.0
    shown, last = [], None
    for v in values:
        keep = last is None or np.log10(v / last) >= gap
        shown.append(label(v) if keep else "")
        last = v if keep else last
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter(shown))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.tick_params(axis="x", labelrotation=30)


def throughput_vs_batch(timing: pd.DataFrame, enc: Encoding, out: ResultsDir) -> tuple[Path, list[str]] | None:
    """Images/s vs batch size per variant; forward and train step side by side, a row per data set and timing
    setting (fp32 eager first), at most `MAX_SETTING_ROWS` rows.

    Args:
        timing: records of the "timing" stage.
        enc: the grid's encoding.
        out: the results folder (figures go to its figures/).

    Returns:
        (PNG path, the "data set: setting" rows left out), or None without successful timing rows.
    """
    if timing.empty or "img_per_s" not in timing:
        return None
    t = timing[(timing["status"] == "ok") & timing["img_per_s"].notna()].copy()
    if t.empty:
        return None
    t["setting"] = [_setting(r) for _, r in t.iterrows()]
    order = list(dict.fromkeys(t["dataset"]))
    rows = sorted(t[["dataset", "setting"]].drop_duplicates().itertuples(index=False, name=None),
                  key=lambda r: (order.index(r[0]), "compile" in r[1], not r[1].startswith("fp32"), r[1]))
    left_out = [f"{ds}: {st}" for ds, st in rows[MAX_SETTING_ROWS:]]
    rows = rows[:MAX_SETTING_ROWS]
    modes = [m for m in ("forward", "train_step") if m in set(t["mode"])]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(rows), len(modes), figsize=(5.5 * len(modes), height(3.4 * len(rows) + 0.8)),
                                 squeeze=False)
    for i, (ds, setting) in enumerate(rows):
        for j, mode in enumerate(modes):
            d = t[(t["dataset"] == ds) & (t["setting"] == setting) & (t["mode"] == mode)]
            ax = axes[i, j]
            for v, g in d.groupby("variant", sort=False):
                g = g.sort_values("batch_size")
                ax.plot(g["batch_size"], g["img_per_s"], **enc.style(str(v)).line())
            _round_spread(ax, d, enc)
            ax.set(xscale="log", yscale="log", xlabel="Batch size (images, log scale)",
                   ylabel="Throughput (img/s, log scale)", title=f"{ds}, {setting}: {mode.replace('_', ' ')}")
            _ticks_at(ax, np.unique(d["batch_size"].to_numpy(float)), lambda v: f"{v:.0f}")
    fig.tight_layout()
    legend_below(fig, enc.handles())
    return save(fig, out, "throughput_vs_batch"), left_out


def _round_spread(ax: plt.Axes, d: pd.DataFrame, enc: Encoding) -> None:
    """Error bars from the slowest to the fastest round's median (img/s) on rows timed in rounds."""
    if "round_ms_min" not in d:
        return
    r = d[d["round_ms_min"].notna() & d["round_ms_max"].notna()]
    for _, row in r.iterrows():
        ips, bs = float(row["img_per_s"]), float(row["batch_size"])
        lo, hi = 1000 * bs / float(row["round_ms_max"]), 1000 * bs / float(row["round_ms_min"])
        ax.errorbar(bs, ips, yerr=[[max(ips - lo, 0.0)], [max(hi - ips, 0.0)]], fmt="none", capsize=3, lw=1,
                    color=enc.style(str(row["variant"])).color)


def _setting(r: pd.Series) -> str:
    """"fp32", "bf16, channels_last, compile": the timing options of a row."""
    parts = [str(r.get("dtype", "fp32"))]
    if bool(r.get("channels_last")):
        parts.append("channels_last")
    if bool(r.get("compile")):
        parts.append("compile")
    return ", ".join(parts)


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
        fig, axes = plt.subplots(1, 2, figsize=(12, height(1.0 + 0.4 * len(names))), squeeze=False)
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
