"""Speed ratios with 95 % confidence intervals, from the timing stage's per-round medians.

A run times the variants that share a setting in interleaved rounds (`timing_round` records): the rows of one
(setting, round) were measured back to back in one process, so a ratio between two variants is taken per round
and the rounds are the sample. The point estimate is the geometric mean of the per-round ratios; the interval is
a t-interval on their logarithms, mapped back (exp). Rows from two folders do not pair: their ratio is the ratio
of geometric means with a Welch t-interval on the log per-round medians. A ratio is resolved only when its interval
excludes 1; folders written before rounds existed give a bare ratio with no interval.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from nin_bench.report.stats import LEVEL, t_estimate
from nin_bench.store.schema import ROUND_KEY, SETTING_KEYS

PAIRED = "paired t on log per-round ratios"
WELCH = "Welch t on log per-round medians"
NO_ROUNDS = "none (no rounds)"
Setting = tuple  # (mode, batch_size, dtype, channels_last, compile), normalised by `setting_of`


@dataclass(frozen=True)
class Ratio:
    """A ratio of times or speeds with its confidence interval.

    Attributes:
        value: point estimate (geometric mean of the per-round ratios, or the bare ratio of medians).
        lo: lower CI bound (NaN without an interval).
        hi: upper CI bound (NaN without an interval).
        n: rounds behind it (pairs for a paired ratio, the smaller side for Welch; 0: no rounds).
        method: `PAIRED`, `WELCH` or `NO_ROUNDS`.
    """

    value: float
    lo: float = math.nan
    hi: float = math.nan
    n: int = 0
    method: str = NO_ROUNDS

    @property
    def has_ci(self) -> bool:
        """Whether there is an interval (two rounds or more)."""
        return not (math.isnan(self.lo) or math.isnan(self.hi))

    @property
    def resolved(self) -> bool:
        """Whether the interval excludes 1 (never without an interval)."""
        return self.has_ci and (self.lo > 1 or self.hi < 1)

    def inverse(self) -> Ratio:
        """The reciprocal ratio (a speed ratio from a time ratio and back); the interval flips."""
        return Ratio(1 / self.value, 1 / self.hi, 1 / self.lo, self.n, self.method)


def paired_ratio(num_ms: Sequence[float], den_ms: Sequence[float], level: float = LEVEL) -> Ratio:
    """Geometric mean of num_r / den_r over paired rounds, with the t-interval of the mean log ratio.

    Args:
        num_ms: per-round medians of the numerator, aligned with `den_ms` (same round, same process).
        den_ms: per-round medians of the denominator.
        level: confidence level.

    Returns:
        A `PAIRED` Ratio (no interval with one round).
    """
    logs = np.log(np.asarray(num_ms, dtype=float)) - np.log(np.asarray(den_ms, dtype=float))
    est = t_estimate(logs, level)
    return Ratio(math.exp(est.mean), math.exp(est.lo), math.exp(est.hi), est.n, PAIRED)


def welch_ratio(a_ms: Sequence[float], b_ms: Sequence[float], level: float = LEVEL) -> Ratio:
    """B ÷ A as the ratio of the geometric means of two unpaired samples, with a Welch t-interval on the logs.

    Args:
        a_ms: per-round medians of A.
        b_ms: per-round medians of B.
        level: confidence level.

    Returns:
        A `WELCH` Ratio; no interval unless each side has two rounds or more.
    """
    la, lb = np.log(np.asarray(a_ms, dtype=float)), np.log(np.asarray(b_ms, dtype=float))
    value = math.exp(lb.mean() - la.mean())
    n = min(len(la), len(lb))
    if n < 2:
        return Ratio(value, n=n, method=WELCH)
    va, vb = la.var(ddof=1) / len(la), lb.var(ddof=1) / len(lb)
    se = math.sqrt(va + vb)
    if se == 0:  # both samples constant: the ratio is exact
        return Ratio(value, value, value, n, WELCH)
    df = (va + vb) ** 2 / (va ** 2 / (len(la) - 1) + vb ** 2 / (len(lb) - 1))
    half = float(sps.t.ppf((1 + level) / 2, df)) * se
    return Ratio(value, value * math.exp(-half), value * math.exp(half), n, WELCH)


def ratio_text(r: Ratio | None, digits: int = 2) -> str:
    """"2.22× [2.15, 2.30]", "1.02× [0.97, 1.08], not resolved", "1.06× (no rounds: no interval)"; "–" for None."""
    if r is None or math.isnan(r.value):
        return "–"
    point = f"{r.value:.{digits}f}×"
    if r.has_ci:
        text = f"{point} [{r.lo:.{digits}f}, {r.hi:.{digits}f}]"
        return text if r.resolved else text + ", not resolved"
    if r.n == 1:
        return f"{point} (1 round: no interval)"
    return f"{point} (no rounds: no interval)"


def stored_ratio(row: dict[str, Any] | pd.Series, prefix: str) -> Ratio | None:
    """The Ratio a table row stores as `<prefix>`, `<prefix>_lo`, `<prefix>_hi`, `<prefix>_rounds` (None if absent)."""
    value = row.get(prefix)
    if value is None or pd.isna(value):
        return None
    n = row.get(f"{prefix}_rounds")
    return Ratio(float(value), float(row.get(f"{prefix}_lo", math.nan)), float(row.get(f"{prefix}_hi", math.nan)),
                 0 if n is None or pd.isna(n) else int(n))


def setting_of(row: dict[str, Any] | pd.Series) -> Setting:
    """The normalised (mode, batch_size, dtype, channels_last, compile) of a timing or timing-round row."""
    mode, bs, dtype, cl, comp = (row.get(k) for k in SETTING_KEYS)
    return (str(mode), int(bs), str(dtype), bool(cl), bool(comp))


def _ok(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The successful rows of a stage's frame, as dicts."""
    if df.empty or "ms_median" not in df:
        return []
    rows = df[df["ms_median"].notna()]
    if "status" in rows:
        rows = rows[rows["status"] == "ok"]
    return rows.to_dict("records")


class TimingIndex:
    """The timing rows and per-round medians of one folder, by (variant, setting)."""

    def __init__(self, timing: pd.DataFrame, rounds: pd.DataFrame) -> None:
        """Args:
            timing: records of the "timing" stage.
            rounds: records of the "timing_round" stage (empty for folders written before rounds).
        """
        self.rows = {(str(r["variant"]), setting_of(r)): r for r in _ok(timing)}
        per: dict[tuple, dict[int, float]] = {}
        for r in _ok(rounds):
            per.setdefault((str(r["variant"]), setting_of(r)), {})[int(r[ROUND_KEY])] = float(r["ms_median"])
        self.rounds = {k: pd.Series(v).sort_index() for k, v in per.items()}

    def ms(self, variant: str, setting: Setting) -> float | None:
        """The timing row's `ms_median` (None without a successful row)."""
        row = self.rows.get((variant, setting))
        return None if row is None else float(row["ms_median"])

    def round_ms(self, variant: str, setting: Setting) -> pd.Series:
        """round -> that round's median (empty without rounds)."""
        return self.rounds.get((variant, setting), pd.Series(dtype=float))

    def time_ratio(self, num: str, den: str, setting: Setting) -> Ratio | None:
        """Time of `num` ÷ time of `den` in one setting: paired over the rounds both have, else the bare ratio of
        their medians; None when either has no successful row."""
        a, b = self.round_ms(num, setting), self.round_ms(den, setting)
        shared = a.index.intersection(b.index)
        if len(shared):
            return paired_ratio(a[shared].to_numpy(), b[shared].to_numpy())
        ma, mb = self.ms(num, setting), self.ms(den, setting)
        return None if ma is None or mb is None or mb == 0 else Ratio(ma / mb)

    def speed_ratio(self, variant: str, base: str, setting: Setting) -> Ratio | None:
        """Speed of `variant` ÷ speed of `base` (> 1: the variant is faster), per round base_ms / variant_ms."""
        return self.time_ratio(base, variant, setting)
