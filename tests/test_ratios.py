"""Speed ratios with CIs from paired timing rounds, the timing self-check, and both in the report (pinned numbers)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from synthetic_run import ROUND_FACTORS, common, full_records, timing_recs, vid, write_run

from nin_bench.report import build_report
from nin_bench.report.load import load_run
from nin_bench.report.ratios import PAIRED, Ratio, paired_ratio, ratio_text, welch_ratio
from nin_bench.report.stats import welch_delta
from nin_bench.report.timing_check import DIFFERS, EQUAL, NO_INTERVAL, check_pairs, same_computation_pairs

ROOT = Path(__file__).parents[1]


def test_paired_ratio_of_five_known_rounds() -> None:
    # per-round ratios 2.0, 2.2, 2.1, 2.4, 1.9: exp(mean log ± t(0.975, 4) · sd(log) / √5), computed by hand
    r = paired_ratio([10, 11, 10.5, 12, 9.5], [5, 5, 5, 5, 5])
    assert (r.value, r.lo, r.hi, r.n, r.method) == (pytest.approx(2.1131355811955634, rel=1e-12),
                                                    pytest.approx(1.8903705830816921, rel=1e-12),
                                                    pytest.approx(2.3621516460731673, rel=1e-12), 5, PAIRED)
    assert r.resolved and ratio_text(r) == "2.11× [1.89, 2.36]"
    inv = r.inverse()
    assert (inv.value, inv.lo, inv.hi) == (pytest.approx(1 / r.value), pytest.approx(1 / r.hi), pytest.approx(1 / r.lo))


def test_unresolved_and_bare_ratios_say_so() -> None:
    r = paired_ratio([10, 10.2, 9.9, 10.1], [10, 10, 10, 10])
    assert r.has_ci and not r.resolved and ratio_text(r).endswith(", not resolved")
    assert ratio_text(Ratio(1.0634)) == "1.06× (no rounds: no interval)" and not Ratio(1.0634).resolved
    assert ratio_text(paired_ratio([10], [5])) == "2.00× (1 round: no interval)"
    assert ratio_text(None) == "–"


def test_welch_ratio_pinned() -> None:
    r = welch_ratio([10, 11, 10.5, 12, 9.5], [15, 16.5, 15.2, 18, 14.0, 15.5])  # Welch df 8.517
    assert (r.value, r.lo, r.hi, r.n) == (pytest.approx(1.4812480941927118, rel=1e-12),
                                          pytest.approx(1.311062611185602, rel=1e-12),
                                          pytest.approx(1.6735248933423599, rel=1e-12), 5)
    same = welch_ratio([10, 11, 10.5], [10, 11, 10.5])
    assert same.value == pytest.approx(1.0) and not same.resolved
    assert not welch_ratio([10], [11, 12]).has_ci


def test_welch_delta_matches_scipy() -> None:
    a, b = [0.80, 0.82, 0.79], [0.83, 0.85, 0.84, 0.86]
    ci = stats.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    e = welch_delta(b, a)
    assert (e.mean, e.lo, e.hi, e.n) == (pytest.approx(np.mean(b) - np.mean(a)), pytest.approx(ci.low, rel=1e-12),
                                         pytest.approx(ci.high, rel=1e-12), 3)


def twin(factor: float, jitter: list[float]) -> list[dict]:
    """A dropout-0 twin of cifar10 n_1x1=0 (same computation in eval), its round times × factor × jitter."""
    out = []
    for r in timing_recs("cifar10", 0):
        r = r | {"variant": vid("cifar10", 0).replace("do0.5", "do0"), "dropout": 0.0}
        if r["stage"] == "timing_round":
            r["ms_median"] *= factor * jitter[r["round"]]
        else:
            r["ms_median"] *= factor
        out.append(r)
    return out


def expected_speed(ref_ms: list[float], other_ms: list[float]) -> tuple[float, float, float]:
    """Independent paired CI: exp of the t-interval of log(ref / other)."""
    d = np.log(np.array(ref_ms) / np.array(other_ms))
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return math.exp(d.mean()), math.exp(d.mean() - half), math.exp(d.mean() + half)


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing: these tests are about text and tables (figures are tested in test_report)."""
    monkeypatch.setattr("nin_bench.report.render._figures", lambda *args: {})
    for name in ("share_figure", "roofline_figure"):
        monkeypatch.setattr(f"nin_bench.report.layers.{name}", lambda *args: None)


def test_equal_pair_passes_with_its_interval(tmp_path: Path, no_figures: None) -> None:
    jitter = [1.00, 1.01, 0.99, 1.02, 1.00]
    run = load_run(write_run(tmp_path, full_records() + twin(1.0, jitter)))
    assert same_computation_pairs(run.stage("timing"), run.config) == [
        (vid("cifar10", 0).replace("do0.5", "do0"), vid("cifar10", 0))]
    checks = check_pairs(run.stage("timing"), run.stage("timing_round"), run.config)
    assert [c.setting[1] for c in checks] == [1, 32, 128] and {c.verdict for c in checks} == {EQUAL}
    f0 = np.array(ROUND_FACTORS[0])
    value, lo, hi = expected_speed(f0 * np.array(jitter), f0)  # speed of do0.5 ÷ do0 = time do0 ÷ time do0.5
    assert (checks[2].ratio.value, checks[2].ratio.lo, checks[2].ratio.hi) == (
        pytest.approx(value, rel=1e-12), pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    md = build_report(tmp_path).read_text()
    assert "**Warning: the timing" not in md and "Every pair times within 7 %" in md
    assert f"{value:.3f}× [{lo:.3f}, {hi:.3f}]" in md.split("## Timing self-check")[1]


def test_differing_pair_warns_at_the_top(tmp_path: Path, no_figures: None) -> None:
    md = build_report(write_run(tmp_path, full_records() + twin(1.2, [1.0] * 5))).read_text()
    top = md.split("## Answer")[0]
    assert "**Warning: the timing of this run cannot be trusted.** 3 of 3 forward timings" in top
    assert md.count(f"**{DIFFERS}**") == 3 and "1.200× [1.200, 1.200]" in md


def test_suite_without_pairs_says_so_in_one_line(tmp_path: Path, no_figures: None) -> None:
    md = build_report(write_run(tmp_path, full_records())).read_text()
    section = md.split("## Timing self-check")[1].split("##")[0].strip()
    assert section.startswith("No two variants of this suite run the same eval forward") and "\n" not in section


def test_a_folder_timed_before_rounds_checks_without_intervals(tmp_path: Path) -> None:
    """results/head as committed at 2833f20, timed one variant after another before rounds existed (its
    records, config and manifest kept in tests/fixtures/head_before_rounds): bare ratios, and the sequential
    timing's 16-29 % gaps flagged."""
    root = shutil.copytree(Path(__file__).parent / "fixtures" / "head_before_rounds", tmp_path / "head")
    run = load_run(root)
    checks = check_pairs(run.stage("timing"), run.stage("timing_round"), run.config)
    assert len(checks) == 6 and all(not c.ratio.has_ci for c in checks)
    assert sum(c.verdict == DIFFERS for c in checks) == 4 and {c.verdict for c in checks} == {DIFFERS, NO_INTERVAL}
    t = run.stage("timing").set_index(["variant", "mode", "batch_size"])["ms_median"]
    gap = next(c for c in checks if "gap" in c.ref and c.setting[1] == 128)
    assert gap.ratio.value == pytest.approx(t[(gap.ref, "forward", 128)] / t[(gap.other, "forward", 128)])


def _round_ms(n: int) -> list[float]:
    """Per-round times of variant n_1x1=n up to a common factor (time ∝ 1 + n/10)."""
    return [(1 + n / 10) * f for f in ROUND_FACTORS[n]]


def test_report_speed_columns_and_answer_use_paired_rounds(tmp_path: Path, no_figures: None) -> None:
    md = build_report(write_run(tmp_path, full_records())).read_text()
    t = pd.read_csv(tmp_path / "tables.csv").set_index("variant")
    for n in (1, 2):
        value, lo, hi = expected_speed(_round_ms(0), _round_ms(n))
        row = t.loc[vid("cifar10", n)]
        assert (row["train_speedup"], row["train_speedup_lo"], row["train_speedup_hi"], row["train_speedup_rounds"]) \
            == (pytest.approx(value, rel=1e-12), pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12), 5)
        assert row["fwd_speedup"] == pytest.approx(value, rel=1e-12)
    assert np.isnan(t.loc[vid("cifar10", 0), "fwd_speedup"])
    value, lo, hi = expected_speed([1.0 * f for f in ROUND_FACTORS[0]], [1.2 * f for f in ROUND_FACTORS[2]])
    answer = md.split("## Answer")[1].split("## What was run")[0]
    assert f"({value:.2f}× [{lo:.2f}, {hi:.2f}] the baseline's train-step speed)" in answer
    tv, tlo, thi = expected_speed([1.2 * f for f in ROUND_FACTORS[2]], [1.0 * f for f in ROUND_FACTORS[0]])
    assert f"forward takes {tv:.2f}× [{tlo:.2f}, {thi:.2f}]" in md and "(95 % CIs over paired timing rounds)" in md


def test_old_folder_report_gives_bare_ratios(tmp_path: Path, no_figures: None) -> None:
    recs = [r for r in full_records() if r["stage"] not in ("timing", "timing_round")]
    recs += [r for ds in ("cifar10", "fashion_mnist") for n in (0, 1, 2) for r in timing_recs(ds, n, rounds=False)]
    md = build_report(write_run(tmp_path, recs)).read_text()
    assert "(no rounds: no interval) the baseline's train-step speed" in md and "| 0.83× (no rounds) |" in md
    assert "round" not in common("cifar10", 0, "timing")
