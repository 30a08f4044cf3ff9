"""Assemble the report of a results folder: report.md, report.html, tables.csv, tables.tex, figures/."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from nin_bench.report import (
    answer,
    comparisons,
    layers,
    maps,
    paper,
    plots,
    protocol,
    sections,
    tables,
    timing_check,
)
from nin_bench.report.document import Doc, to_html, to_markdown
from nin_bench.report.load import Run, baselines, grid_axes, load_run, variant_label
from nin_bench.report.ratios import TimingIndex
from nin_bench.store.folder import ResultsDir


def _labels(run: Run, with_dataset: bool = False) -> dict[str, str]:
    """variant id -> short label; with_dataset appends the data set (for a figure that mixes data sets)."""
    axes = grid_axes(run.config, run.summary)
    many = with_dataset and run.summary["dataset"].nunique() > 1
    return {r["variant"]: variant_label(r, axes) + (f" · {r['dataset']}" if many else "")
            for _, r in run.summary.iterrows()}


def _result_tables(doc: Doc, run: Run, table: pd.DataFrame) -> str:
    """Add one table per data set to the document; return the LaTeX of all of them."""
    ref = run.reference_batch_size
    dtype = run.summary["dtype"].dropna().iloc[0] if run.summary["dtype"].notna().any() else "?"
    tex = []
    doc.h(2, "Results per data set")
    for ds, t in table.groupby("dataset", sort=False):
        header, rows = tables.display_table(t, ref)
        doc.h(3, str(ds))
        doc.table(header, rows)
        doc.p(sections.table_note(t, ref, dtype))
        tex.append(tables.latex(header, rows, f"NiN variants on {ds}", f"tab:{ds}"))
    return "\n".join(tex)


def _figures(doc: Doc, run: Run, table: pd.DataFrame, out: ResultsDir) -> None:
    """Draw every figure the data allow and add each with its caption line."""
    labels = _labels(run)
    ref = run.reference_batch_size
    figs = [
        (plots.accuracy_vs_cost(table, out),
         "Test accuracy (%) vs parameters and vs MACs per image (log x). Error bars: ±1 std over seeds; dashed "
         "step line and open circles: Pareto frontier (no other variant is both cheaper and more accurate)."),
        (plots.throughput_vs_batch(run.stage("timing"), labels, out),
         f"Throughput (img/s, log) vs batch size (log) for the forward pass (eval, inference mode) and the full "
         f"train step (forward, loss, backward, SGD step); medians of timed iterations (of the per-round medians "
         f"where the run timed in rounds; error bars: slowest to fastest round). Tables use batch {ref}."),
        (plots.learning_curves(run.stage("train_epoch"), labels, out),
         "Learning curves: validation accuracy (%) and train loss (cross-entropy) per epoch; line = mean over "
         "seeds, band = ±1 std over seeds."),
        (plots.size_by_block(run.stage("profile"), _labels(run, with_dataset=True), out),
         "Where the parameters and MACs live: stacked per mlpconv block and the head (millions). "
         + sections.head_share(run.stage("profile"), run.summary)),
    ]
    bases = baselines(run.summary, run.config)
    gap = maps.gap_map_figures(run.stage("train"), run.summary, bases, out)
    if any(png is not None for png, _ in figs) or gap:
        doc.h(2, "Figures")
    for png, caption in figs:
        if png is not None:
            doc.fig(png, caption)
    for ds, variant, png in gap:
        doc.fig(png, f"GAP class-confidence maps, {ds}, variant {variant}: one test image per class (rows) and "
                     "the last block's map for each class (columns), each row scaled to its own maximum; the true "
                     "class is framed green (a wrong prediction's map dashed cyan), the prediction named at left. "
                     "Bright = high confidence for that class "
                     "at that position.")


def _paper_section(doc: Doc, run: Run) -> None:
    """Add the NiN paper comparison when our variants cover one of its CIFAR-10 settings."""
    augment = protocol.augmentation(run.stage("train"), run.config, ["cifar10"]).get("cifar10")
    found = paper.paper_table(run.summary, augment)
    if found is None:
        return
    doc.h(2, "Comparison with the NiN paper (CIFAR-10 test error)")
    if not paper.is_paper_form(paper.paper_variants(run.summary)):
        doc.p("**Not the paper's model.** These variants differ from the paper's NiN (see the protocol: narrower, "
              "with BatchNorm, trained far shorter), so their errors are far above the paper's; what compares is "
              "the direction and size of the differences between rows (the last two columns, each against GAP + "
              "dropout, the paper's model), not the errors themselves.")
    doc.table(*found)
    doc.p(paper.our_protocol(run.config, run.manifest, augment) + " " + paper.PAPER_PROTOCOL)


def _layer_section(doc: Doc, run: Run, out: ResultsDir) -> None:
    """"Where the time goes": per-layer time against MACs, the roofline, and the finding in one sentence."""
    rows = layers.reference_rows(run.stage("layer_timing"), run.reference_batch_size)
    if rows.empty:
        return
    labels = _labels(run, with_dataset=True)
    doc.h(2, "Where the time goes")
    text = layers.finding(rows, labels, TimingIndex(run.stage("timing"), run.stage("timing_round")))
    if text:
        doc.p(f"**Finding.** {text}")
    doc.p("Per-layer times are measured with torch.profiler, attributed to each leaf module (forward: eval mode "
          "under inference mode, as the timing stage's forward; backward: autograd's backward nodes mapped to the "
          "forward op that made them), medians over profiled iterations. The layers' forward times should sum to "
          "the timing stage's end-to-end forward median at the same setting; what no layer holds (framework and "
          "Python between modules; in the train step also the loss, gradient accumulation and the SGD step) is "
          "the rest.")
    doc.table(["variant", "batch, dtype", "layers fwd (ms)", "end-to-end fwd (ms)", "layers ÷ end-to-end",
               "rest of the profiled forward"], layers.coverage_table(rows, run.stage("timing"), labels))
    for png, caption in (
            (layers.share_figure(rows, labels, out),
             "Share of MACs (grey) against share of the forward time (orange) and of the train-step time (green, "
             "forward in train mode + backward), per layer kind (left) and per block (right), each variant at its "
             "reference setting. A bar of time far longer than its bar of MACs is a layer whose cost is memory "
             "traffic, not arithmetic."),
            (layers.roofline_figure(rows, labels, out),
             "Roofline of the forward pass: each point a layer (colour: kind; marker: variant), its FLOPs per "
             "byte moved (input + weights + output at the dtype) against the FLOP/s it attained. Under the sloped "
             "part a layer is bound by memory bandwidth (a measured large copy), under the flat part by the "
             "measured GEMM peak. The slope is main-memory bandwidth: element-wise layers whose maps fit in the "
             "CPU's caches can sit above it.")):
        if png is not None:
            doc.fig(png, caption)


def _timing_check_section(doc: Doc, run: Run, checks: list[timing_check.PairCheck]) -> None:
    """"Timing self-check": identical-computation pairs' forward speed ratios, or one line without such pairs."""
    if run.stage("timing").empty:
        return
    doc.h(2, "Timing self-check")
    if not checks:
        doc.p("No two variants of this suite run the same eval forward (none differ only in dropout), so the "
              "timing has no self-check here.")
        return
    doc.p("Variants that differ only in dropout run the same computation in eval mode (dropout is the identity), "
          "so their forward passes must time equal. Each row: the second's forward speed ÷ the first's at one "
          "setting, the geometric mean over paired timing rounds with its 95 % t-interval (a bare ratio of "
          "medians for rows timed before rounds). A pair more than 7 % apart means the timing of this run cannot "
          "be trusted; an interval reaching past ±7 % leaves it unconfirmed.")
    doc.table(*timing_check.table(checks, _labels(run, with_dataset=True)))
    loud = timing_check.warning(checks)
    doc.p(loud or "Every pair times within 7 %: the timing passes its self-check.")


def build_document(run: Run, out: ResultsDir, cmp: pd.DataFrame | None = None) -> tuple[Doc, pd.DataFrame, str]:
    """Build the report's content.

    Args:
        run: the loaded results folder.
        out: the results folder (figures go to its figures/).
        cmp: `comparisons.compare_run(run)` (computed when not given).

    Returns:
        (document, full-precision table, LaTeX tables).
    """
    table = tables.results_table(run)
    cmp = comparisons.compare_run(run) if cmp is None else cmp
    margin = comparisons.margin_of(run.config)
    doc = Doc(f"{run.config.get('name', run.results_dir.name)}: NiN benchmark report")
    doc.p(f"**Question.** {run.config.get('description', '(no description in the config)')}")
    checks = timing_check.check_pairs(run.stage("timing"), run.stage("timing_round"), run.config)
    loud = timing_check.warning(checks)
    if loud:
        doc.p(loud)
    doc.h(2, "Answer")
    if table["test_acc_mean"].notna().any():
        for ds, t in table.groupby("dataset", sort=False):
            doc.p(sections.answer_for(str(ds), t, cmp, margin))
            factorial = answer.factorial_text(str(ds), cmp)
            if factorial:
                doc.p(factorial)
    else:
        doc.p(sections.size_answer(table))
    doc.h(2, "What was run")
    items = sections.what_was_run(run)
    doc.ul(items[:1])
    note = protocol.protocol_note(run.config, sections.run_protocol(run))
    if note:
        doc.p(note)
    doc.ul(items[1:])
    tex = _result_tables(doc, run, table) if not table.empty else ""
    tex += answer.add_section(doc, cmp, margin)
    _paper_section(doc, run)
    _timing_check_section(doc, run, checks)
    _layer_section(doc, run, out)
    _figures(doc, run, table, out)
    doc.h(2, "Failed or diverged runs")
    fails = sections.failures(run.summary)
    if fails:
        doc.ul(fails)
    else:
        doc.p("None: every recorded stage finished with status ok.")
    doc.p("Files: `summary.csv` (one row per variant), `tables.csv` (these tables at full precision), "
          "`comparisons.csv` (every pairwise comparison and factorial effect at full precision), "
          "`tables.tex` (LaTeX, booktabs), `figures/` (PNG 150 dpi + SVG), `records.jsonl` (every measurement).")
    return doc, table, tex


def build_report(results_dir: Path | ResultsDir) -> Path:
    """Write report.md, report.html, tables.csv, comparisons.csv, tables.tex and figures/ for a results folder.

    Reads only the stored records (never torch, never re-measures), so it can be re-run anywhere.

    Args:
        results_dir: a results folder (records.jsonl, config.resolved.yaml, manifest.json, maps/).

    Returns:
        Path of report.md.
    """
    out = results_dir if isinstance(results_dir, ResultsDir) else ResultsDir(results_dir)
    run = load_run(out)
    cmp = comparisons.compare_run(run)
    doc, table, tex = build_document(run, out, cmp)
    out.write(out.tables_csv, table.to_csv(index=False))
    out.write(out.comparisons_csv, cmp.to_csv(index=False))
    out.write(out.tables_tex, "% \\usepackage{booktabs}\n" + tex)
    out.write(out.report_html, to_html(doc))
    out.write(out.report_md, to_markdown(doc, out.root))
    return out.report_md
