"""Where the time goes: per-layer time against per-layer MACs, a roofline, and the finding in one sentence.

Reads the "layer_timing" records (`nin_bench.measure.layer_timing`): one row per leaf module of a variant at one timing
setting, plus a "rest" row for the time no layer holds. Shares are taken within one (variant, setting): MACs over
the layers, time over the layers and the rest.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from nin_bench.report import fmt
from nin_bench.report.plots import height, save
from nin_bench.report.ratios import Ratio, TimingIndex, ratio_text
from nin_bench.store.folder import ResultsDir
from nin_bench.store.schema import LAYER_KINDS, LAYER_SETTING_KEYS

SETTING = list(LAYER_SETTING_KEYS)
KINDS = list(LAYER_KINDS)  # in the order a reader meets them in a block
KIND_LABEL = {"conv_kxk": "k×k conv", "conv_1x1": "1×1 conv", "batchnorm": "BatchNorm", "relu": "ReLU",
              "maxpool": "max pool", "avgpool": "avg pool", "dropout": "dropout", "gap": "GAP", "flatten": "flatten",
              "linear": "linear", "rest": "rest (outside layers)"}
SHARE_COLOURS = ["#999999", "#d95f02", "#1b9e77"]
MEASURES = {"macs_share": "share of MACs", "fwd_share": "share of forward time",
            "step_share": "share of train-step time"}


def reference_rows(layers: pd.DataFrame, reference_batch_size: int | None) -> pd.DataFrame:
    """The layer rows of one setting per variant: the reference batch if measured, else the largest batch;
    fp32 before other dtypes (the CPU protocol's setting)."""
    if layers.empty:
        return layers
    ok = layers[layers["status"] == "ok"] if "status" in layers else layers
    picked = []
    for _, rows in ok.groupby("variant", sort=False):
        settings = rows[SETTING].drop_duplicates()
        settings = settings.assign(ref=settings["batch_size"] == reference_batch_size,
                                   fp32=settings["dtype"] == "fp32")
        best = settings.sort_values(["ref", "fp32", "batch_size"], ascending=False).iloc[0]
        picked.append(rows[(rows[SETTING] == best[SETTING]).all(axis=1)])
    return pd.concat(picked) if picked else ok.iloc[0:0]


def shares(rows: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per `by` ("kind" or "block") within each variant: shares of MACs, forward time and train-step time (%)."""
    r = rows.assign(step_ms=rows["fwd_train_ms"].fillna(0) + rows["bwd_ms"].fillna(0))
    g = r.groupby(["variant", by], sort=False)[["macs", "fwd_ms", "step_ms"]].sum().reset_index()
    totals = g.groupby("variant")[["macs", "fwd_ms", "step_ms"]].transform("sum").replace(0, np.nan)
    return g.assign(macs_share=100 * g["macs"] / totals["macs"], fwd_share=100 * g["fwd_ms"] / totals["fwd_ms"],
                    step_share=100 * g["step_ms"] / totals["step_ms"])


def share_figure(rows: pd.DataFrame, labels: dict[str, str], out: ResultsDir,
                 keys: list[str] | None = None) -> Path | None:
    """Share of MACs vs share of forward and train-step time, per layer kind and per block, a row per variant.

    Args:
        rows: `reference_rows` of the "layer_timing" records.
        labels: variant id -> label.
        out: the results folder.
        keys: the variants drawn (`encoding.key_variants`: the baseline and the extremes); None: every variant.
            The rest are in `share_table`.

    Returns:
        PNG path, or None without layer rows.
    """
    if rows.empty:
        return None
    variants = [v for v in dict.fromkeys(rows["variant"]) if keys is None or v in keys] or \
        list(dict.fromkeys(rows["variant"]))
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(variants), 2, figsize=(12, height(1.0 + 1.9 * len(variants))), squeeze=False,
                                 sharex="col")  # one scale per column: the rows compare
    for i, v in enumerate(variants):
        for j, by in enumerate(("kind", "block")):
            s = shares(rows[rows["variant"] == v], by).set_index(by)
            order = [k for k in KINDS if k in s.index] if by == "kind" else list(s.index)
            _share_bars(axes[i, j], s.loc[order], [KIND_LABEL.get(k, k) for k in order])
            axes[i, j].set(xlabel="% of the variant's total" if i == len(variants) - 1 else "", ylabel="",
                           title=f"{labels.get(v, v)}: by {'layer kind' if by == 'kind' else 'block'}")
            axes[i, j].title.set_fontsize(10)
    axes[0, 1].legend(loc="upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return save(fig, out, "layer_time_vs_macs")


def _share_bars(ax: plt.Axes, s: pd.DataFrame, names: list[str]) -> None:
    """Three horizontal bars per row (share of MACs, of forward time, of train-step time), top to bottom."""
    y = np.arange(len(names))
    for k, (col, colour) in enumerate(zip(MEASURES, SHARE_COLOURS)):
        ax.barh(y + (k - 1) * 0.27, s[col].fillna(0).to_numpy(float), height=0.27, color=colour,
                label=MEASURES[col])
    ax.set_yticks(y, names)
    ax.set_ylim(len(names) - 0.5, -0.5)


def share_table(rows: pd.DataFrame, labels: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """Every variant's share of the forward time per layer kind (%), with its 1×1 convolutions' share of MACs:
    what `share_figure` shows for a few variants, for all of them.

    Args:
        rows: `reference_rows` of the "layer_timing" records.
        labels: variant id -> label.

    Returns:
        (header, rows) of strings.
    """
    s = shares(rows, "kind")
    kinds = [k for k in KINDS if k in set(s["kind"])]
    header = ["Variant", *[f"{KIND_LABEL[k]} (% fwd)" for k in kinds], "1×1 conv (% MACs)"]
    out = []
    for v, g in s.groupby("variant", sort=False):
        g = g.set_index("kind")
        cells = [f"{g.loc[k, 'fwd_share']:.0f}" if k in g.index and not np.isnan(g.loc[k, "fwd_share"])
                 else fmt.NA for k in kinds]
        macs = f"{g.loc['conv_1x1', 'macs_share']:.0f}" if "conv_1x1" in g.index else "0"
        out.append([labels.get(v, v), *cells, macs])
    return header, out


def roofline_figure(rows: pd.DataFrame, labels: dict[str, str], out: ResultsDir,
                    keys: list[str] | None = None) -> Path | None:
    """Attained FLOP/s vs arithmetic intensity per layer (forward), under the device's measured roofline.

    Args:
        rows: `reference_rows` with roofline keys (intensity, flops, fwd_ms, peak_tflops, mem_gb_per_s).
        labels: variant id -> label.
        out: the results folder.
        keys: the variants drawn, a marker each (the baseline and the extremes); None: every variant.

    Returns:
        PNG path, or None without roofline data.
    """
    need = {"intensity", "flops", "fwd_ms", "peak_tflops", "mem_gb_per_s"}
    if rows.empty or not need <= set(rows):
        return None
    r = rows[(rows["kind"] != "rest") & (rows["flops"] > 0) & (rows["fwd_ms"] > 0)].copy()
    if keys is not None and r["variant"].isin(keys).any():
        r = r[r["variant"].isin(keys)]
    if r.empty:
        return None
    r["attained_tflops"] = r["flops"] / (r["fwd_ms"] / 1e3) / 1e12
    r["variant label"] = r["variant"].map(labels)
    r["layer kind"] = r["kind"].map(lambda k: KIND_LABEL.get(k, k))
    peak, bw = float(r["peak_tflops"].iloc[0]), float(r["mem_gb_per_s"].iloc[0]) / 1e3  # TB/s
    x = np.logspace(np.log10(max(r["intensity"].min() / 3, 1e-3)), np.log10(r["intensity"].max() * 3), 200)
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(8.5, 5.5))
    ax.plot(x, np.minimum(peak, bw * x), color="black", lw=1.5, label="roofline (measured GEMM peak, copy bandwidth)")
    sns.scatterplot(r, x="intensity", y="attained_tflops", hue="layer kind", style="variant label", s=60, ax=ax,
                    hue_order=[KIND_LABEL[k] for k in KINDS if KIND_LABEL[k] in set(r["layer kind"])], alpha=0.85)
    ax.set(xscale="log", yscale="log", xlabel="Arithmetic intensity (FLOPs per byte moved, log scale)",
           ylabel="Attained TFLOP/s in the forward pass (log scale)",
           title=f"Roofline: ridge at {peak / bw:.0f} FLOP/byte ({peak:.3g} TFLOP/s, {bw * 1e3:.3g} GB/s)")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return save(fig, out, "roofline")


_FREE = ("batchnorm", "relu", "maxpool", "avgpool", "dropout", "gap", "flatten")  # layers without MACs


def finding(rows: pd.DataFrame, labels: dict[str, str], timing: TimingIndex | None = None) -> str | None:
    """The measured finding in a sentence or two: where the time of the variant with the most 1×1 convolutions
    goes, and (when the suite varies n_1x1) what the added 1×1 convolutions cost against the MACs they add.

    Args:
        rows: `reference_rows` of the "layer_timing" records.
        labels: variant id -> label.
        timing: the folder's timing rows and rounds: the time ratios come from its paired rounds at the layer
            rows' setting (with a CI); without rounds, from the layer rows' end-to-end times (no interval).
    """
    if rows.empty:
        return None
    n_1x1 = rows.groupby("variant", sort=False)["kind"].agg(lambda k: int((k == "conv_1x1").sum()))
    v = n_1x1.idxmax()
    s = shares(rows[rows["variant"] == v], "kind").set_index("kind")
    free = [k for k in _FREE if k in s.index]
    first = rows[rows["variant"] == v].iloc[0]
    text = (f"In {labels.get(v, v)} (batch {int(first['batch_size'])}, {first['dtype']}) the layers without MACs "
            f"({', '.join(KIND_LABEL[k] for k in free)}) take {s.loc[free, 'fwd_share'].sum():.0f} % of the "
            f"forward time and {s.loc[free, 'step_share'].sum():.0f} % of the train step")
    if "conv_1x1" in s.index:
        text += (f"; the 1×1 convolutions hold {s.loc['conv_1x1', 'macs_share']:.0f} % of the MACs and take "
                 f"{s.loc['conv_1x1', 'fwd_share']:.0f} % of the forward time")
    return text + ". " + (_added_cost(rows, n_1x1, labels, timing) or "")


def _time_ratio(a: pd.DataFrame, b: pd.DataFrame, mode: str, e2e: str, timing: TimingIndex | None) -> Ratio:
    """b's time ÷ a's in one mode at the layer rows' setting: paired over timing rounds when both have them, else
    the layer rows' end-to-end times (a bare ratio)."""
    first = a.iloc[0]
    setting = (mode, int(first["batch_size"]), str(first["dtype"]), bool(first["channels_last"]), False)
    va, vb = str(first["variant"]), str(b["variant"].iloc[0])
    if timing is not None and len(timing.round_ms(va, setting)) and len(timing.round_ms(vb, setting)):
        ratio = timing.time_ratio(vb, va, setting)
        if ratio is not None:
            return ratio
    return Ratio(float(b[e2e].iloc[0]) / float(a[e2e].iloc[0]))


def _added_cost(rows: pd.DataFrame, n_1x1: pd.Series, labels: dict[str, str],
                timing: TimingIndex | None = None) -> str | None:
    """What adding 1×1 convolutions costs: MACs vs measured time, and where the added train-step time goes.

    Compares the variants with the fewest and the most 1×1 convolutions on the data set of the latter.
    """
    most = n_1x1.idxmax()
    ds = rows.loc[rows["variant"] == most, "dataset"].iloc[0]
    same = n_1x1[[v for v in n_1x1.index if rows.loc[rows["variant"] == v, "dataset"].iloc[0] == ds]]
    least = same.idxmin()
    if same[least] == same[most]:
        return None
    a, b = rows[rows["variant"] == least], rows[rows["variant"] == most]
    macs = b["macs"].sum() / a["macs"].sum()
    fwd = _time_ratio(a, b, "forward", "e2e_fwd_ms", timing)
    step = _time_ratio(a, b, "train_step", "e2e_train_step_ms", timing)
    per_kind = (lambda r: (r["fwd_train_ms"] + r["bwd_ms"]).groupby(r["kind"]).sum())
    delta = per_kind(b).sub(per_kind(a), fill_value=0.0)
    added = float(delta.sum())
    if added <= 0:
        return None
    part = (lambda kinds: 100 * float(delta.reindex(kinds, fill_value=0.0).sum()) / added)
    one, elem, kxk = part(["conv_1x1"]), part(["batchnorm", "relu"]), part(["conv_kxk"])
    passes = "BatchNorm and ReLU passes" if (b["kind"] == "batchnorm").any() else "ReLU passes"
    verdict = ("the element-wise passes each 1×1 convolution brings cost about as much as its arithmetic, so MACs "
               "under-predict what it costs" if elem >= 0.5 * one else
               "the arithmetic dominates on this device, so MACs predict the cost fairly well here")
    return (f"On {ds}, {labels.get(most, most)} has {macs:.2f}× the MACs of {labels.get(least, least)} but its "
            f"forward takes {ratio_text(fwd)} and its train step {ratio_text(step)} as long"
            f"{' (95 % CIs over paired timing rounds)' if fwd.n or step.n else ''}; of the train-step time it adds, the "
            f"1×1 convolutions take {one:.0f} %, their {passes} {elem:.0f} %, the k×k "
            f"convolutions {kxk:.0f} % and the rest (pooling, dropout, framework) {100 - one - elem - kxk:.0f} %: "
            f"{verdict}.")


def coverage_table(rows: pd.DataFrame, timing: pd.DataFrame, labels: dict[str, str]) -> list[list[str]]:
    """Per variant: layer forward times summed, the timing stage's end-to-end forward median at the same setting,
    their ratio, and the rest's share — how much of the measured time the layers account for."""
    out = []
    for v, r in rows.groupby("variant", sort=False):
        first = r.iloc[0]
        layers_ms = float(r.loc[r["kind"] != "rest", "fwd_ms"].sum())
        match = timing[(timing["variant"] == v) & (timing["mode"] == "forward") & (timing["status"] == "ok")
                       & (timing["compile"] == False)  # pandas: element-wise, not `is False`
                       & (timing[SETTING] == first[SETTING]).all(axis=1)] if not timing.empty else timing
        e2e = float(match["ms_median"].iloc[0]) if len(match) else np.nan
        rest = float(r.loc[r["kind"] == "rest", "fwd_ms"].sum())
        out.append([labels.get(v, v), f"{int(first['batch_size'])}, {first['dtype']}", f"{layers_ms:.3g}",
                    fmt.NA if np.isnan(e2e) else f"{e2e:.3g}", fmt.NA if np.isnan(e2e) else f"{layers_ms / e2e:.2f}",
                    f"{100 * rest / (layers_ms + rest):.0f} %" if layers_ms + rest > 0 else fmt.NA])
    return out
