"""Per-data-set result tables: full precision (CSV) and rounded for reading (Markdown/HTML, LaTeX booktabs)."""
from __future__ import annotations

from typing import Any

import pandas as pd

from nin_bench.report import fmt
from nin_bench.report.load import Run, baselines, grid_axes, variant_label
from nin_bench.report.ratios import TimingIndex, ratio_text, stored_ratio
from nin_bench.report.stats import NORMAL_DIFF, WILSON, accuracy_stats

SIZE_COLS = ["params", "macs", "flops_fwd"]
TIMING_COLS = ["fwd_batch_size", "fwd_img_per_s", "mfu_fwd", "train_batch_size", "train_img_per_s", "mfu_train"]
ACC_COLS = ["test_acc_mean", "test_acc_std", "n", "ci_lo", "ci_hi", "ci_method", "test_size", "delta_mean",
            "delta_std", "delta_n", "delta_ci_lo", "delta_ci_hi", "delta_ci_method"]
# Speed vs the baseline at the row's own timing setting (> 1: faster), `nin_bench.report.ratios`.
SPEED_COLS = [f"{p}_speedup{s}" for p in ("fwd", "train") for s in ("", "_lo", "_hi", "_rounds")]
TEST_SET = " (test set)"  # marks a single-seed interval that covers test-set sampling only


def results_table(run: Run) -> pd.DataFrame:
    """The full-precision table behind every per-data-set table (one row per variant).

    Args:
        run: the loaded results folder.

    Returns:
        DataFrame with dataset, variant, label, is_baseline, the size, timing and accuracy columns, and status.
    """
    s = run.summary
    if s.empty:
        return pd.DataFrame(columns=["dataset", "variant", "label", "is_baseline", *SIZE_COLS, *TIMING_COLS,
                                     *SPEED_COLS, *ACC_COLS, "status"])
    base = baselines(s, run.config)
    acc = accuracy_stats(run.stage("train"), base, dict(zip(s["variant"], s["dataset"].astype(str))))
    axes = grid_axes(run.config, s)
    out = s[["dataset", "variant", *SIZE_COLS, *TIMING_COLS, "status"]].copy()
    out.insert(2, "label", [variant_label(r, axes) for _, r in s.iterrows()])
    out.insert(3, "is_baseline", [base.get(str(d)) == v for d, v in zip(s["dataset"], s["variant"])])
    acc = acc.reindex(list(s["variant"])) if not acc.empty else pd.DataFrame(index=list(s["variant"]))
    for col in ACC_COLS:
        out[col] = acc[col].to_numpy() if col in acc else float("nan")
    speed = _speedups(run, base)
    for col in SPEED_COLS:
        out[col] = [row.get(col, float("nan")) for row in speed]
    return out[["dataset", "variant", "label", "is_baseline", *SIZE_COLS, *TIMING_COLS, *SPEED_COLS, *ACC_COLS,
                "status"]]


def _speedups(run: Run, base: dict[str, str | None]) -> list[dict[str, float]]:
    """Per summary row, its forward and train-step speed ÷ its data set's baseline's at the row's setting."""
    idx = TimingIndex(run.stage("timing"), run.stage("timing_round"))
    out = []
    for _, r in run.summary.iterrows():
        b, cols = base.get(str(r["dataset"])), {}
        for pre, mode in (("fwd", "forward"), ("train", "train_step")):
            if b is None or b == r["variant"] or fmt.missing(r[f"{pre}_batch_size"]):
                continue
            setting = (mode, int(r[f"{pre}_batch_size"]), str(r["dtype"]), bool(r["channels_last"]),
                       bool(r["compile"]))
            ratio = idx.speed_ratio(str(r["variant"]), b, setting)
            if ratio is not None:
                cols |= {f"{pre}_speedup": ratio.value, f"{pre}_speedup_lo": ratio.lo,
                         f"{pre}_speedup_hi": ratio.hi, f"{pre}_speedup_rounds": ratio.n}
        out.append(cols)
    return out


def _speed_cell(r: pd.Series, pre: str) -> str:
    """"1.10× [1.05, 1.15]", "… (not resolved)", "1.06× (no rounds)"; "baseline" on the baseline's row."""
    if r["is_baseline"]:
        return "baseline"
    ratio = stored_ratio(r, f"{pre}_speedup")
    if ratio is None:
        return fmt.NA
    return ratio_text(ratio).replace(", not resolved", " (not resolved)").replace(": no interval", "")


def _rate_cell(ips: Any, mfu: Any, bs: Any, ref: int | None) -> str:
    """"12,345 (3.4 %)", naming the batch size when it is not the reference one (or there is none)."""
    if fmt.missing(ips):
        return fmt.NA
    cell = f"{fmt.rate(ips)} ({fmt.mfu(mfu)})"
    return cell if fmt.missing(bs) or (ref is not None and int(bs) == ref) else f"{cell} @bs {int(bs)}"


def display_table(table: pd.DataFrame, ref_bs: int | None) -> tuple[list[str], list[list[str]]]:
    """Rounded cells of one data set's table; timing / accuracy columns only when that stage has data.

    Args:
        table: the data set's rows of `results_table`.
        ref_bs: reference batch size of the timing columns.

    Returns:
        (header, rows) of strings.
    """
    at = f" @bs {ref_bs}" if ref_bs else ""
    header = ["Variant", "Params", "MACs", "FLOPs fwd"]
    has_timing = table[["fwd_img_per_s", "train_img_per_s"]].notna().any().any()
    has_acc = table["test_acc_mean"].notna().any()
    if has_timing:
        header += [f"Fwd img/s{at} (MFU)", f"Train img/s{at} (MFU)", "Fwd speed vs baseline (95 % CI)",
                   "Train speed vs baseline (95 % CI)"]
    if has_acc:
        header += ["Test acc (mean ± std)", "n", "95 % CI", "Δ vs baseline", "Δ 95 % CI (n)"]
    rows = []
    for _, r in table.iterrows():
        cells = [r["label"] + (" (baseline)" if r["is_baseline"] else ""), fmt.params(r["params"]),
                 fmt.macs(r["macs"]), fmt.macs(r["flops_fwd"])]
        if has_timing:
            cells += [_rate_cell(r["fwd_img_per_s"], r["mfu_fwd"], r["fwd_batch_size"], ref_bs),
                      _rate_cell(r["train_img_per_s"], r["mfu_train"], r["train_batch_size"], ref_bs),
                      _speed_cell(r, "fwd"), _speed_cell(r, "train")]
        if has_acc:
            cells += _acc_cells(r)
        rows.append(cells)
    return header, rows


def _ci_cell(lo: Any, hi: Any, n: int, test_set: bool, signed: bool = False) -> str:
    """A CI cell: the t-interval for n >= 2; for one seed the test-set interval, marked, or "n/a (n=1)"."""
    unit = "pp" if signed else "%"
    if n > 1:
        return fmt.interval(lo, hi, signed, unit) + (f" ({n})" if signed else "")
    if n == 1:
        return fmt.interval(lo, hi, signed, unit) + TEST_SET if test_set else "n/a (n=1)"
    return fmt.NA


def _acc_cells(r: pd.Series) -> list[str]:
    """Accuracy, n, CI, paired delta and its CI of one row, rounded."""
    n = 0 if fmt.missing(r["n"]) else int(r["n"])
    ci = _ci_cell(r["ci_lo"], r["ci_hi"], n, r["ci_method"] == WILSON)
    if r["is_baseline"]:
        d, dci = "baseline", fmt.NA
    elif fmt.missing(r["delta_mean"]):
        d, dci = fmt.NA, fmt.NA
    else:
        d = fmt.delta(r["delta_mean"])
        dci = _ci_cell(r["delta_ci_lo"], r["delta_ci_hi"], int(r["delta_n"]), r["delta_ci_method"] == NORMAL_DIFF,
                       signed=True)
    return [fmt.acc_pm(r["test_acc_mean"], r["test_acc_std"]), str(n) if n else fmt.NA, ci, d, dci]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub Markdown table (numbers right-aligned)."""
    esc = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(r) + " |" for r in [esc[0], align, *esc[1:]]]
    return "\n".join(lines)


def _tex(s: str) -> str:
    """Escape LaTeX specials and typeset ± / Δ / en dash / minus / × in math or text mode."""
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("–", "--"), ("−", "$-$"), ("×", r"$\times$")):
        s = s.replace(a, b)
    return s


def latex(header: list[str], rows: list[list[str]], caption: str, label: str) -> str:
    """A booktabs LaTeX table.

    Args:
        header: column names.
        rows: cells (already rounded).
        caption: table caption.
        label: LaTeX label.

    Returns:
        The `table` environment as text (needs \\usepackage{booktabs}).
    """
    spec = "l" + "r" * (len(header) - 1)
    body = [" & ".join(_tex(c) for c in r) + r" \\" for r in rows]
    return "\n".join([r"\begin{table}[t]", r"\centering", r"\small", f"\\caption{{{_tex(caption)}}}",
                      f"\\label{{{label}}}", f"\\begin{{tabular}}{{{spec}}}", r"\toprule",
                      " & ".join(_tex(h) for h in header) + r" \\", r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", r"\end{table}", ""])
