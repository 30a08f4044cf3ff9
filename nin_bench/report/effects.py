"""The accuracy figures that carry the answers: paired differences with their intervals, drawn from
`comparisons.compare_run`'s rows (never recomputed differently).

- `forest_figure`: every variant's test accuracy minus its data set's baseline's, paired by seed, with the 95 %
  t-interval; the zero line drawn; a difference resolved after Holm's adjustment (over the data set's pairs)
  filled, one that is not open and grey.
- `interaction_figure`: for a full grid of two or more factors, each pair of factors as an interaction plot
  (cells as differences from the reference cell, paired by seed, averaged over the other factors) beside a forest
  of the main effects and interactions.
- `paper_figure`: our difference in test error beside the NiN paper's, row by row of the paper comparison.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from nin_bench.report import inference
from nin_bench.report.encoding import Encoding
from nin_bench.report.plots import Skip, height, save
from nin_bench.store.folder import ResultsDir

FOREST_COLS = ["dataset", "variant", "label", "baseline", "baseline_label", "n", "delta_mean", "ci_lo", "ci_hi",
               "p_holm", "resolved"]
RESOLVED, OPEN = "#1f4e79", "0.55"
ROW_IN = 0.3  # inches per forest row
MAX_PAIRS = 6  # interaction panels (pairs of factors) drawn


def _oriented(pw: pd.DataFrame, v: str, base: str) -> dict | None:
    """The pair row v − base from rows oriented higher − lower: as stored, or negated with its CI flipped."""
    fwd, rev = pw[(pw["a"] == v) & (pw["b"] == base)], pw[(pw["a"] == base) & (pw["b"] == v)]
    if len(fwd):
        r = fwd.iloc[0]
        return {"delta_mean": r["delta_mean"], "ci_lo": r["ci_lo"], "ci_hi": r["ci_hi"], "n": r["n"],
                "p_holm": r["p_holm"], "resolved": bool(r["resolved"])}
    if len(rev):
        r = rev.iloc[0]
        return {"delta_mean": -r["delta_mean"], "ci_lo": -r["ci_hi"], "ci_hi": -r["ci_lo"], "n": r["n"],
                "p_holm": r["p_holm"], "resolved": bool(r["resolved"])}
    return None


def forest_rows(cmp: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Each trained variant's paired difference from its data set's baseline, from `compare_run`'s pair rows.

    Args:
        cmp: `comparisons.compare_run` of the run.
        table: `tables.results_table` (label, is_baseline, grid order).

    Returns:
        `FOREST_COLS` rows (fractions), data set by data set in grid order; the baseline itself is left out.
    """
    rows = []
    pw = cmp[cmp["kind"] == "pair"] if len(cmp) and "kind" in cmp else pd.DataFrame()
    for ds, t in table.groupby("dataset", sort=False):
        base = t[t["is_baseline"].astype(bool)]
        if base.empty or pw.empty:
            continue
        b = base.iloc[0]
        p = pw[pw["dataset"] == str(ds)]
        for _, r in t[~t["is_baseline"].astype(bool) & t["test_acc_mean"].notna()].iterrows():
            d = _oriented(p, r["variant"], b["variant"])
            if d is not None:
                rows.append({"dataset": str(ds), "variant": r["variant"], "label": r["label"],
                             "baseline": b["variant"], "baseline_label": b["label"]} | d)
    return pd.DataFrame(rows, columns=FOREST_COLS)


def _forest_panel(ax: plt.Axes, labels: list[str], mean: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  resolved: np.ndarray) -> None:
    """Horizontal CI bars (pp) with their means, top to bottom, a zero line, the values written at the right."""
    y = np.arange(len(labels))[::-1]
    for yi, m, a, b, ok in zip(y, mean, lo, hi, resolved):
        colour = RESOLVED if ok else OPEN
        if np.isfinite(a) and np.isfinite(b):
            ax.plot([a, b], [yi, yi], color=colour, lw=2.2 if ok else 1.6, solid_capstyle="butt")
        ax.plot(m, yi, marker="o", ms=7, color=colour, fillstyle="full" if ok else "none", mew=1.6)
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(-0.7, len(labels) - 0.3)
    ax.grid(axis="y", visible=False)
    right = ax.twinx()
    right.set_ylim(ax.get_ylim())
    r2 = (lambda x: np.round(x, 2) + 0.0)  # no "-0.00"
    right.set_yticks(y, [f"{r2(m):+.2f} [{r2(a):+.2f}, {r2(b):+.2f}]" if np.isfinite(a) else f"{r2(m):+.2f} (no CI)"
                         for m, a, b in zip(mean, lo, hi)], fontsize=8)
    right.grid(False)


def _legend_resolved(fig: plt.Figure, rule: str) -> None:
    """The figure's legend: filled = resolved (by `rule`), open = not."""
    fig.legend(handles=[plt.Line2D([], [], color=RESOLVED, marker="o", lw=2.2, label=f"resolved ({rule})"),
                        plt.Line2D([], [], color=OPEN, marker="o", fillstyle="none", lw=1.6, label="not resolved")],
               loc="upper center", ncol=2, bbox_to_anchor=(0.5, 0.0), frameon=False)


def forest_figure(rows: pd.DataFrame, out: ResultsDir) -> Path | Skip | None:
    """The main accuracy figure: each variant − the baseline (pp), paired by seed, one panel per data set.

    Args:
        rows: `forest_rows`.
        out: the results folder.

    Returns:
        PNG path; a `Skip` when no pair has two seeds (no interval); None without rows.
    """
    if rows.empty:
        return None
    if (rows["n"] < 2).all():
        return Skip("every variant has one seed, so no paired difference has an interval (the tables give "
                    "test-set intervals)")
    groups = list(rows.groupby("dataset", sort=False))
    sizes = [0.9 + ROW_IN * len(g) for _, g in groups]
    with sns.axes_style("whitegrid"):
        fig, axes = plt.subplots(len(groups), 1, figsize=(9.5, height(sum(sizes) + 0.6)), squeeze=False,
                                 gridspec_kw={"height_ratios": sizes})
    for ax, (ds, g) in zip(axes[:, 0], groups):
        _forest_panel(ax, list(g["label"]), 100 * g["delta_mean"].to_numpy(float), 100 * g["ci_lo"].to_numpy(float),
                      100 * g["ci_hi"].to_numpy(float), g["resolved"].to_numpy(bool))
        n = sorted(set(g["n"].astype(int)))
        ax.set_title(f"{ds}: each variant − {g['baseline_label'].iloc[0]} (baseline); paired over "
                     f"{'/'.join(map(str, n))} seeds", fontsize=10)
        ax.set_xlabel("Test accuracy difference (pp), 95 % CI")
    fig.tight_layout()
    _legend_resolved(fig, "Holm-adjusted p < 0.05")
    return save(fig, out, "accuracy_forest")


def interaction_cells(accs: dict[str, pd.Series], design: tuple[pd.DataFrame, dict, dict], a: str,
                      b: str) -> pd.DataFrame:
    """The a × b cells of a full grid as paired differences from the reference cell (ref[a], ref[b]).

    A cell's accuracy per seed is the mean over the variants in it (the other factors' levels); each cell's
    difference from the reference cell is taken per seed over the seeds both have.

    Args:
        accs: variant -> Series(seed -> test accuracy).
        design: `comparisons.design` (variant × factor levels, factor -> levels, factor -> reference level).
        a: the factor on the x axis.
        b: the factor drawn as lines.

    Returns:
        Rows a_level, b_level, acc_mean (the cell's mean accuracy), n, delta_mean, ci_lo, ci_hi (fractions; the
        reference cell has delta 0 and no CI).
    """
    table, levels, ref = design

    def cell(la: str, lb: str) -> pd.Series:
        series = [accs[v] for v in table.index[(table[a] == la) & (table[b] == lb)] if v in accs]
        seeds = series[0].index
        for s in series[1:]:
            seeds = seeds.intersection(s.index)
        return sum(s[seeds] for s in series) / len(series)

    base = cell(ref[a], ref[b])
    rows = []
    for la, lb in itertools.product(levels[a], levels[b]):
        c = cell(la, lb)
        shared = c.index.intersection(base.index)
        t = inference.paired_test((c[shared] - base[shared]).to_numpy(float))
        is_ref = la == ref[a] and lb == ref[b]
        rows.append({"a_level": la, "b_level": lb, "acc_mean": float(c.mean()), "n": t.n,
                     "delta_mean": 0.0 if is_ref else t.mean, "ci_lo": np.nan if is_ref else t.lo,
                     "ci_hi": np.nan if is_ref else t.hi})
    return pd.DataFrame(rows)


def _interaction_panel(ax: plt.Axes, cells: pd.DataFrame, a: str, b: str, enc: Encoding, base_acc: float) -> None:
    """x = a's levels, a line per b level, Δ from the reference cell (pp) with CI bars; accuracy at the right."""
    xs = list(dict.fromkeys(cells["a_level"]))
    lines = list(dict.fromkeys(cells["b_level"]))
    for k, lb in enumerate(lines):
        c = cells[cells["b_level"] == lb].set_index("a_level").loc[xs]
        x = np.arange(len(xs)) + 0.06 * (k - (len(lines) - 1) / 2)  # dodge: the bars do not hide each other
        m = 100 * c["delta_mean"].to_numpy(float)
        err = [m - 100 * c["ci_lo"].to_numpy(float), 100 * c["ci_hi"].to_numpy(float) - m]
        ax.errorbar(x, m, yerr=np.nan_to_num(err), capsize=3, label=f"{b} = {lb}", **enc.level_style(b, lb, k))
    ax.axhline(0, color="black", lw=1)
    ax.set_xticks(range(len(xs)), xs)
    ax.set(xlabel=a, ylabel="Δ test accuracy vs reference cell (pp)")
    if np.isfinite(base_acc):
        right = ax.secondary_yaxis("right", functions=(lambda d: d + 100 * base_acc, lambda y: y - 100 * base_acc))
        right.set_ylabel("Test accuracy (%), same scale", fontsize=8)
    ax.legend(fontsize=8, frameon=False)


def _effect_label(r: pd.Series) -> str:
    """"n_1x1 3−2", "head fc−gap × dropout 0.0−0.5": a factorial row's contrast on one line."""
    parts = [p.split(": ", 1) for p in str(r["contrast"]).split("; ")]
    return " × ".join(f"{f} {c.replace(' − ', '−')}" for f, c in parts)


def _interaction_title(cmp: pd.DataFrame, a: str, b: str) -> str:
    """"head × dropout\ninteraction −8.91 pp [−15.42, −2.40]" when one contrast, else the count."""
    f = cmp[(cmp["kind"] == "interaction") & cmp["factors"].isin([f"{a} × {b}", f"{b} × {a}"])]
    if len(f) != 1:
        return f"{a} × {b}\n{len(f)} interaction contrasts (below)"
    r = f.iloc[0]
    return (f"{a} × {b}\ninteraction {100 * r['delta_mean']:+.2f} pp "
            f"[{100 * r['ci_lo']:+.2f}, {100 * r['ci_hi']:+.2f}]{'' if r['resolved'] else ', not resolved'}")


def interaction_figure(ds: str, cmp: pd.DataFrame, accs: dict[str, pd.Series],
                       design: tuple[pd.DataFrame, dict, dict], enc: Encoding, out: ResultsDir) -> Path | Skip | None:
    """Interaction plots of every pair of factors (at most `MAX_PAIRS`) and a forest of main effects and
    interactions, for one data set's full grid.

    Args:
        ds: the data set.
        cmp: `comparisons.compare_run` rows of this data set.
        accs: variant -> Series(seed -> test accuracy).
        design: `comparisons.design` of the data set's variants (table, levels, reference levels).
        enc: the grid's encoding.
        out: the results folder.

    Returns:
        PNG path; a `Skip` when a cell of the grid has no test accuracy; None when the data set has no
        main-effect rows (not a full grid of two or more factors).
    """
    eff = cmp[cmp["kind"].isin(["main", "interaction"])] if len(cmp) else cmp
    table, levels, ref = design
    if eff.empty or len(levels) < 2:
        return None
    if not set(table.index) <= set(accs):
        return Skip(f"not every cell of the {' × '.join(levels)} grid on {ds} has a test accuracy yet")
    pairs = [tuple(sorted(p, key=lambda f: -len(levels[f]))) for p in itertools.combinations(levels, 2)]
    pairs = pairs[:MAX_PAIRS]
    ncol = min(len(pairs), 3)
    nrow = -(-len(pairs) // ncol)
    forest_in = 0.9 + 0.24 * len(eff)
    with sns.axes_style("whitegrid"):
        fig = plt.figure(figsize=(4.3 * max(ncol, 2), height(3.6 * nrow + forest_in + 0.6)))
        grid = fig.add_gridspec(nrow + 1, ncol, height_ratios=[3.6] * nrow + [forest_in])
        for k, (a, b) in enumerate(pairs):
            ax = fig.add_subplot(grid[k // ncol, k % ncol])
            cells = interaction_cells(accs, design, a, b)
            at_ref = (cells["a_level"] == ref[a]) & (cells["b_level"] == ref[b])
            _interaction_panel(ax, cells, a, b, enc, float(cells.loc[at_ref, "acc_mean"].iloc[0]))
            ax.set_title(_interaction_title(cmp, a, b), fontsize=9)
        ax = fig.add_subplot(grid[nrow, :])
    labels = [_effect_label(r) for _, r in eff.iterrows()]
    _forest_panel(ax, labels, 100 * eff["delta_mean"].to_numpy(float), 100 * eff["ci_lo"].to_numpy(float),
                  100 * eff["ci_hi"].to_numpy(float), eff["resolved"].to_numpy(bool))
    ax.set_title(f"{ds}: main effects and interactions, each level against its factor's reference", fontsize=9)
    ax.set_xlabel("Effect on test accuracy (pp), 95 % CI")
    fig.tight_layout()
    _legend_resolved(fig, "p < 0.05, per contrast")
    return save(fig, out, f"interaction_{ds}")


def paper_rows(found: tuple[list[str], list[list[str]]], paper_rows_: list, cmp: pd.DataFrame,
               labels: dict[str, str]) -> pd.DataFrame:
    """Our paired difference in test error beside the paper's, per row of the paper comparison table.

    The paper's reference is its NiN (GAP with dropout): the first non-augmented GAP row with dropout; ours is
    the variant the table matched to that row. Differences are in test error (the paper reports errors), so
    ours is minus the accuracy difference of `compare_run`'s pair row, its CI flipped.

    Args:
        found: `paper.paper_table`'s (header, rows).
        paper_rows_: `paper.PAPER`.
        cmp: `comparisons.compare_run`.
        labels: variant -> label.

    Returns:
        Rows setting, variant, label, paper_delta_pp, delta_mean, ci_lo, ci_hi (fractions of error), resolved;
        the reference row and augmented rows (no paper difference) left out.
    """
    header, rows = found
    col = {h: i for i, h in enumerate(header)}
    by_setting = {p.setting: p for p in paper_rows_}
    ref_row = next(p for p in paper_rows_ if p.head == "gap" and p.dropout and not p.augment)
    ours = [(by_setting.get(r[col["Paper setting"]]), r[col["Our variant"]]) for r in rows]
    ref_v = next((v for p, v in ours if p is not None and p.setting == ref_row.setting), None)
    pw = cmp[(cmp["kind"] == "pair") & (cmp["dataset"] == "cifar10")] if len(cmp) else pd.DataFrame()
    out = []
    for p, v in ours:
        if p is None or p.augment or ref_v is None or v == ref_v or pw.empty:
            continue
        d = _oriented(pw, v, ref_v)
        if d is None:
            continue
        out.append({"setting": p.setting, "variant": v, "label": labels.get(v, v),
                    "paper_delta_pp": p.error_pct - ref_row.error_pct, "delta_mean": -d["delta_mean"],
                    "ci_lo": -d["ci_hi"], "ci_hi": -d["ci_lo"], "resolved": d["resolved"]})
    return pd.DataFrame(out)


def paper_figure(rows: pd.DataFrame, out: ResultsDir) -> Path | None:
    """Paper Δ (black diamond) and ours (point with its paired CI) per paper row, against the NiN with dropout.

    Args:
        rows: `paper_rows`.
        out: the results folder.

    Returns:
        PNG path, or None without rows.
    """
    if rows.empty:
        return None
    labels = [f"{r['setting']}\n(ours: {r['label']})" for _, r in rows.iterrows()]
    with sns.axes_style("whitegrid"):
        fig, ax = plt.subplots(figsize=(9.5, height(1.2 + 0.55 * len(rows))))
    _forest_panel(ax, labels, 100 * rows["delta_mean"].to_numpy(float), 100 * rows["ci_lo"].to_numpy(float),
                  100 * rows["ci_hi"].to_numpy(float), rows["resolved"].to_numpy(bool))
    y = np.arange(len(rows))[::-1]
    ax.plot(rows["paper_delta_pp"], y, ls="", marker="D", ms=7, color="black", zorder=3)
    ax.set_xlabel("Test error − the NiN with dropout's (GAP) (pp); > 0: worse")
    ax.set_title("Our difference (95 % CI, paired by seed) beside the paper's", fontsize=10)
    fig.tight_layout()
    fig.legend(handles=[plt.Line2D([], [], ls="", marker="D", color="black", label="paper"),
                        plt.Line2D([], [], color=RESOLVED, marker="o", lw=2.2, label="ours, resolved (Holm)"),
                        plt.Line2D([], [], color=OPEN, marker="o", fillstyle="none", lw=1.6,
                                   label="ours, not resolved")],
               loc="upper center", ncol=3, bbox_to_anchor=(0.5, 0.0), frameon=False)
    return save(fig, out, "paper_deltas")
