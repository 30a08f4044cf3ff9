"""The report stage: tables, figures and text from a results folder's stored records (never imports torch).

`build_report(results_dir)` writes report.md, a self-contained report.html, tables.csv (full precision),
tables.tex (booktabs) and figures/ (PNG 150 dpi + SVG).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from nin_bench.store.folder import ResultsDir

__all__ = ["build_report", "rebuild"]


def __getattr__(name: str) -> Any:
    """`build_report` is loaded when first used: importing a light part of the report (`comparisons`, which a
    run's `seeds: auto` reads) does not import matplotlib and seaborn."""
    if name == "build_report":
        from nin_bench.report.render import build_report

        return build_report
    raise AttributeError(f"module 'nin_bench.report' has no attribute {name!r}")


def rebuild(results_dir: Path | ResultsDir, figures: bool = True) -> Path:
    """Rewrite summary.csv and the report of a results folder from its stored records (what `run` ends with and
    what `report` does).

    Args:
        results_dir: a results folder (path or `ResultsDir`).
        figures: draw the figures (False: the report's text and tables only, saying the figures were not drawn).

    Returns:
        Path of report.md.
    """
    from nin_bench.report.render import build_report
    from nin_bench.report.summary import (
        write_summary,  # summary imports nothing of the report: no cycle either way
    )

    write_summary(results_dir)
    return build_report(results_dir, figures=figures)
