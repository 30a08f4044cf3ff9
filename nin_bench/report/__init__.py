"""The report stage: tables, figures and text from a results folder's stored records (never imports torch).

`build_report(results_dir)` writes report.md, a self-contained report.html, tables.csv (full precision),
tables.tex (booktabs) and figures/ (PNG 150 dpi + SVG).
"""
from __future__ import annotations

from nin_bench.report.render import build_report

__all__ = ["build_report"]
