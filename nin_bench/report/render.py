"""Assemble the report of a results folder: report.md, report.html, tables.csv, tables.tex, figures/."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from nin_bench.report import (
    answer,
    comparisons,
    figures,
    layers,
    paper,
    protocol,
    sections,
    tables,
    timing_check,
    tuning,
)
from nin_bench.report.document import Doc, to_html, to_markdown
from nin_bench.report.encoding import encode
from nin_bench.report.load import Run, grid_axes, load_run, variant_label
from nin_bench.report.ratios import TimingIndex
from nin_bench.store.folder import ResultsDir

NO_FIGURES = ("**Figures not drawn** (`--no-figures`): this report has its text and tables only; "
              "`python -m nin_bench report <folder>` draws them.")


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


def _paper_found(run: Run) -> tuple[str | None, tuple[list[str], list[list[str]]] | None]:
    """Our CIFAR-10 augmentation and the paper comparison table (None when no variant covers a paper row)."""
    augment = protocol.augmentation(run.stage("train"), run.config, ["cifar10"]).get("cifar10")
    return augment, paper.paper_table(run.summary, augment)


def _figures(run: Run, table: pd.DataFrame, cmp: pd.DataFrame, out: ResultsDir) -> dict[str, list[figures.Figure]]:
    """Draw every figure the data allow, by the report section that shows it ("answer", "paper", "layers",
    "other"); tests about text alone replace this with a function returning {}."""
    enc = encode(run.summary, grid_axes(run.config, run.summary))
    drawn: dict[str, list[figures.Figure]] = {}
    if table["test_acc_mean"].notna().any():
        drawn["answer"] = figures.answer_figures(run, table, cmp, enc, out)
    found = _paper_found(run)[1]
    fig = figures.paper_figure(run, found, cmp, _labels(run), out) if found is not None else None
    drawn["paper"] = [fig] if fig is not None else []
    rows = layers.reference_rows(run.stage("layer_timing"), run.reference_batch_size)
    if not rows.empty:
        drawn["layers"] = figures.layer_figures(run, table, rows, _labels(run, with_dataset=True), out)
    drawn["other"] = figures.other_figures(run, table, enc, _labels(run, with_dataset=True), out)
    return drawn


def _add(doc: Doc, figs: list[figures.Figure]) -> None:
    """Add the drawn figures with their captions (and the table under a figure that carries the rest)."""
    for f in figs:
        if f.png is not None:
            doc.fig(f.png, f.text)
            if f.table is not None:
                doc.table(*f.table)


def _paper_section(doc: Doc, run: Run, figs: list[figures.Figure]) -> None:
    """Add the NiN paper comparison when our variants cover one of its CIFAR-10 settings, with its figure."""
    augment, found = _paper_found(run)
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
    _add(doc, figs)


def _layer_section(doc: Doc, run: Run, figs: list[figures.Figure]) -> None:
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
    _add(doc, figs)


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


def build_document(run: Run, out: ResultsDir, cmp: pd.DataFrame | None = None,
                   figures_drawn: bool = True) -> tuple[Doc, pd.DataFrame, str]:
    """Build the report's content.

    Args:
        run: the loaded results folder.
        out: the results folder (figures go to its figures/).
        cmp: `comparisons.compare_run(run)` (computed when not given).
        figures_drawn: draw the figures (False: none drawn, and the report says so).

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
    drawn = _figures(run, table, cmp, out) if figures_drawn else {}
    if table["test_acc_mean"].notna().any():
        for ds, t in table.groupby("dataset", sort=False):
            doc.p(sections.answer_for(str(ds), t, cmp, margin))
            for text in (answer.factorial_text(str(ds), cmp), answer.declared_text(str(ds), cmp)):
                if text:
                    doc.p(text)
        _add(doc, drawn.get("answer", []))
        if tuning.swept_axes(run):
            doc.p("This suite sweeps a training setting: the test accuracies above choose nothing; the choice is "
                  "made on validation accuracy in the next section.")
            tuning.add_section(doc, run)
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
    _paper_section(doc, run, drawn.get("paper", []))
    _timing_check_section(doc, run, checks)
    _layer_section(doc, run, drawn.get("layers", []))
    rest = drawn.get("other", [])
    if any(f.png is not None for f in rest):
        doc.h(2, "Figures")
    _add(doc, rest)
    skipped = figures.not_drawn([f for figs in drawn.values() for f in figs])
    if skipped:
        doc.p(skipped)
    if not figures_drawn:
        doc.p(NO_FIGURES)
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


def build_report(results_dir: Path | ResultsDir, figures: bool = True) -> Path:
    """Write report.md, report.html, tables.csv, comparisons.csv, tables.tex and figures/ for a results folder.

    Reads only the stored records (never torch, never re-measures), so it can be re-run anywhere.

    Args:
        results_dir: a results folder (records.jsonl, config.resolved.yaml, manifest.json, maps/).
        figures: draw the figures into figures/ (False: text and tables only; figures/ is left as it is).

    Returns:
        Path of report.md.
    """
    out = results_dir if isinstance(results_dir, ResultsDir) else ResultsDir(results_dir)
    run = load_run(out)
    cmp = comparisons.compare_run(run)
    doc, table, tex = build_document(run, out, cmp, figures_drawn=figures)
    out.write(out.tables_csv, table.to_csv(index=False))
    out.write(out.comparisons_csv, cmp.to_csv(index=False))
    out.write(out.tables_tex, "% \\usepackage{booktabs}\n" + tex)
    out.write(out.report_html, to_html(doc))
    out.write(out.report_md, to_markdown(doc, out.root))
    return out.report_md
