"""Which figures a report has, their captions, and why any is not drawn.

Each function draws the figures of one report section and returns `Figure`s: drawn (a PNG and its caption, maybe
a table that carries what the figure leaves out) or not drawn (the reason, which the report prints). A figure
whose records do not exist at all (no training, no layer timing) is simply absent.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from nin_bench.report import comparisons, curves, effects, layers, maps, paper, plots
from nin_bench.report.encoding import Encoding, key_variants
from nin_bench.report.load import Run, baselines
from nin_bench.report.sections import head_share
from nin_bench.report.stats import seed_accuracies
from nin_bench.store.folder import ResultsDir

Table = tuple[list[str], list[list[str]]]
HONEST_AXES = ("Accuracy axes of absolute values run from 0 to 100 % (never zoomed); differences are drawn on "
               "their own axis, with a zero line, in the forest plot.")


@dataclass(frozen=True)
class Figure:
    """One figure of the report.

    Attributes:
        name: file stem in figures/ (also when not drawn).
        png: the PNG, or None when not drawn.
        text: the caption, or why it was not drawn.
        table: rows that carry what the figure leaves out (every variant where it shows a few), or None.
    """

    name: str
    png: Path | None
    text: str
    table: Table | None = None


def _figure(name: str, result: Path | plots.Skip | None, caption: str, table: Table | None = None) -> Figure | None:
    """A `Figure` from a figure function's result (None stays None: no data, no mention)."""
    if result is None:
        return None
    if isinstance(result, plots.Skip):
        return Figure(name, None, result.reason)
    return Figure(name, result, caption, table)


def encoding_words(enc: Encoding) -> str:
    """"Colour: n_1x1; marker: head; line style (points: fill): dropout." for a caption."""
    words = {"color": "colour", "marker": "marker", "dash": "line style (points: fill)"}
    return "; ".join(f"{words[c]}: {a}" for a, c in enc.channel.items()).capitalize() + "."


def marked(labels: dict[str, str], bases: dict[str, str | None]) -> dict[str, str]:
    """Labels with " (baseline)" after each data set's baseline, for panel titles."""
    return {v: lab + (" (baseline)" if v in bases.values() else "") for v, lab in labels.items()}


def answer_figures(run: Run, table: pd.DataFrame, cmp: pd.DataFrame, enc: Encoding, out: ResultsDir) -> list[Figure]:
    """The forest plot of paired differences (the main accuracy figure) and each data set's interaction figure.

    Args:
        run: the loaded results folder.
        table: `tables.results_table`.
        cmp: `comparisons.compare_run`.
        enc: the grid's encoding.
        out: the results folder.

    Returns:
        Figures, drawn or not.
    """
    rows = effects.forest_rows(cmp, table)
    pairs = cmp[cmp["kind"] == "pair"].groupby("dataset").size() if len(cmp) else pd.Series(dtype=int)
    m = ", ".join(f"{n} on {ds}" for ds, n in pairs.items()) if len(pairs) > 1 else f"{pairs.sum()} pairs"
    figs = [_figure("accuracy_forest", effects.forest_figure(rows, out), (
        "Main accuracy figure: each variant's test accuracy minus its data set's baseline's, paired by seed: "
        "the point is the mean per-seed difference, the bar its 95 % t-interval (unadjusted), both written at "
        "the right in pp (the numbers of comparisons.csv). Filled dark blue: resolved after Holm's adjustment "
        f"over the data set's pairwise comparisons ({m}); open grey: not resolved, which a bar clear of zero can "
        "still be after the adjustment. The zero line is the baseline. " + HONEST_AXES))]
    accs = seed_accuracies(run.stage("train"))
    bases = baselines(run.summary, run.config)
    for ds, group in run.summary.groupby("dataset", sort=False):
        design = comparisons.design(group, run.config, bases.get(str(ds)))
        if len(design[1]) < 2 or not accs:
            continue
        c = cmp[cmp["dataset"] == str(ds)] if len(cmp) else cmp
        result = effects.interaction_figure(str(ds), c, accs, design, enc, out)
        if result is None:
            result = plots.Skip(f"the variants of {ds} are not a full grid of {' × '.join(design[1])}, so no "
                                "interaction can be estimated")
        ref = ", ".join(f"{a} = {lv}" for a, lv in design[2].items())
        figs.append(_figure(f"interaction_{ds}", result, (
            f"Interactions on {ds}. Upper panels, one per pair of factors: each cell's test accuracy minus the "
            f"reference cell's ({ref}), paired by "
            "seed and averaged over any other factor, with 95 % t-intervals; the reference cell sits at 0. "
            "Parallel lines: no interaction; the panel title gives the interaction (the difference of "
            "differences) with its CI. The right axis reads the same points as test accuracy (a zoomed "
            "relabelling: compare on the left, difference, axis). Lower panel: every main effect and interaction "
            "of the factorial analysis, as in its table (filled: p < 0.05, per contrast, unadjusted).")))
    return [f for f in figs if f is not None]


def paper_figure(run: Run, found: Table, cmp: pd.DataFrame, labels: dict[str, str], out: ResultsDir) -> Figure | None:
    """Our Δ beside the paper's, for the paper comparison's rows.

    Args:
        run: the loaded results folder.
        found: `paper.paper_table`.
        cmp: `comparisons.compare_run`.
        labels: variant -> label.
        out: the results folder.

    Returns:
        The figure, or None when no row has both differences.
    """
    rows = effects.paper_rows(found, paper.PAPER, cmp, labels)
    form = paper.is_paper_form(paper.paper_variants(run.summary))
    return _figure("paper_deltas", effects.paper_figure(rows, out), (
        "Difference in CIFAR-10 test error from the NiN with dropout (GAP), per paper row: the paper's (black "
        "diamond) beside ours (point: mean per-seed difference from our variant standing for that NiN, bar: 95 % "
        "t-interval, filled when resolved after Holm's adjustment). Above 0: worse than that NiN. "
        + ("" if form else "Our models are not the paper's (narrower, BatchNorm, trained shorter): what compares "
           "is the sign and size of each difference, not the errors.")))


def layer_figures(run: Run, table: pd.DataFrame, rows: pd.DataFrame, labels: dict[str, str],
                  out: ResultsDir) -> list[Figure]:
    """The per-layer share figure (with every variant's shares as a table when it shows a few) and the roofline.

    Args:
        run: the loaded results folder.
        table: `tables.results_table` (MACs, grid order).
        rows: `layers.reference_rows`.
        labels: variant -> label (with the data set where there are several).
        out: the results folder.

    Returns:
        Figures.
    """
    bases = baselines(run.summary, run.config)
    keys, labels = key_variants(table, "macs", bases), marked(labels, bases)
    few = set(keys) < set(rows["variant"])
    shown = ("Shown: the baseline and the variants with the fewest and the most MACs of each data set; every "
             "variant's shares are in the table below. " if few else "")
    figs = [_figure("layer_time_vs_macs", layers.share_figure(rows, labels, out, keys if few else None), (
        "Share of MACs (grey) against share of the forward time (orange) and of the train-step time (green, "
        "forward in train mode + backward), per layer kind (left) and per block (right), each variant at its "
        "reference setting. A bar of time far longer than its bar of MACs is a layer whose cost is memory "
        "traffic, not arithmetic. " + shown).strip(), layers.share_table(rows, labels) if few else None),
        _figure("roofline", layers.roofline_figure(rows, labels, out, keys if few else None), (
            "Roofline of the forward pass: each point a layer (colour: kind; marker: variant"
            + (", the baseline and the extremes in MACs" if few else "") + "), its FLOPs per byte moved (input + "
            "weights + output at the dtype) against the FLOP/s it attained. Under the sloped part a layer is bound "
            "by memory bandwidth (a measured large copy), under the flat part by the measured GEMM peak. The slope "
            "is main-memory bandwidth: element-wise layers whose maps fit in the CPU's caches can sit above it."))]
    return [f for f in figs if f is not None]


def other_figures(run: Run, table: pd.DataFrame, enc: Encoding, labels: dict[str, str],
                  out: ResultsDir) -> list[Figure]:
    """The "Figures" section: accuracy vs cost, throughput, learning curves, train vs validation, size by block,
    GAP maps.

    Args:
        run: the loaded results folder.
        table: `tables.results_table`.
        enc: the grid's encoding.
        labels: variant -> label (with the data set where there are several).
        out: the results folder.

    Returns:
        Figures, drawn or not.
    """
    ref, styles = run.reference_batch_size, encoding_words(enc)
    bases = baselines(run.summary, run.config)
    figs = [_figure("accuracy_vs_cost", plots.accuracy_vs_cost(table, enc, out), (
        "Test accuracy (%) vs parameters and vs MACs per image (log x). Error bars: 95 % t-interval over seeds "
        "(unpaired; the paired differences are in the forest plot); dashed step line and open grey circles: Pareto "
        f"frontier (no other variant is both cheaper and more accurate). {styles} " + HONEST_AXES))]
    tp = plots.throughput_vs_batch(run.stage("timing"), enc, out)
    if tp is not None:
        left = f" Not drawn: {'; '.join(tp[1])} (at most {plots.MAX_SETTING_ROWS} rows)." if tp[1] else ""
        figs.append(Figure("throughput_vs_batch", tp[0], (
            f"Throughput (img/s, log) vs batch size (log) for the forward pass (eval, inference mode) and the full "
            f"train step (forward, loss, backward, SGD step), a row per data set and timing setting; medians of "
            f"timed iterations (of the per-round medians where the run timed in rounds; error bars: slowest to "
            f"fastest round). Tables use batch {ref}. {styles}{left}")))
    epochs = run.stage("train_epoch")
    figs.append(_figure("learning_curves", curves.learning_curves(epochs, enc, out), (
        "Learning curves: validation accuracy (0–100 %) and train loss (cross-entropy) per epoch; line = mean "
        f"over seeds, band = ±1 std over seeds (drawn when a data set has at most {curves.MAX_BANDS} variants). "
        + styles)))
    gaps = curves.final_gaps(epochs)
    keys = key_variants(gaps, "gap_mean", bases) if len(gaps) else []
    figs.append(_figure("train_vs_val", curves.train_vs_val(epochs, enc, marked(labels, bases), keys, out), (
        "Overfitting: eval-mode accuracy on a fixed sample of training images (solid) against validation accuracy "
        "(dashed) per epoch, mean over seeds, for the baseline and the variants with the smallest and the largest "
        "final gap (0–100 % axes; shaded: the gap). Last panel of a row: the gap (train − validation, pp) of "
        f"every variant, zero line drawn. {styles} The table gives every variant's gap at its last epoch with its "
        "95 % t-interval over seeds."), curves.gap_table(gaps, labels) if len(gaps) else None))
    figs.append(_figure("size_by_block", plots.size_by_block(run.stage("profile"), labels, out), (
        "Where the parameters and MACs live: stacked per mlpconv block and the head (millions). "
        + head_share(run.stage("profile"), run.summary))))
    for ds, variant, png in maps.gap_map_figures(run.stage("train"), run.summary, bases, out):
        figs.append(Figure(f"gap_maps_{ds}", png, (
            f"GAP class-confidence maps, {ds}, variant {variant}: one test image per class (rows) and the last "
            "block's map for each class (columns), each row scaled to its own maximum; the true class is framed "
            "green (a wrong prediction's map dashed cyan), the prediction named at left. Bright = high "
            "confidence for that class at that position.")))
    return [f for f in figs if f is not None]


def not_drawn(figs: list[Figure]) -> str | None:
    """"**Not drawn:** accuracy_vs_cost (why); ..." for the figures that were not drawn, or None."""
    skipped = [f"`{f.name}` ({f.text})" for f in figs if f.png is None]
    return ("**Not drawn:** " + "; ".join(skipped) + ".") if skipped else None
