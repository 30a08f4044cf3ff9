"""Tests behind the report's answers: a paired t test over seeds, Holm's step-down adjustment, TOST equivalence,
the seeds a paired t test needs for 80 % power, and McNemar's test over the images of the shared test set.

Every function takes plain numbers (accuracies as fractions) and returns plain numbers, so each is checked against
hand-computed values (tests/test_inference.py)."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

ALPHA = 0.05
POWER = 0.8
MAX_SEEDS = 10_000  # the power search stops here: an effect needing more seeds is "more than 10,000"


@dataclass(frozen=True)
class PairedTest:
    """A two-sided one-sample t test of per-seed differences against 0, with its confidence interval.

    Attributes:
        mean: mean difference.
        sd: standard deviation of the differences (ddof = 1; NaN for n < 2).
        n: number of paired seeds.
        lo: lower bound of the (1 − alpha) CI.
        hi: upper bound.
        p: two-sided p-value (NaN for n < 2; 1 or 0 when every difference is the same: sd = 0).
    """

    mean: float
    sd: float
    n: int
    lo: float
    hi: float
    p: float


def paired_test(diffs: np.ndarray | list[float], alpha: float = ALPHA) -> PairedTest:
    """t test and CI mean ± t_{1−alpha/2, n−1}·sd/√n of per-seed differences.

    Args:
        diffs: per-seed differences (NaNs dropped).
        alpha: two-sided level (0.05: a 95 % CI).

    Returns:
        A `PairedTest`. With sd = 0 (every seed gives the same difference) the CI is that difference and p is 1 if
        it is 0, else 0: the seeds agree exactly.
    """
    x = np.asarray(diffs, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return PairedTest(math.nan, math.nan, 0, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return PairedTest(mean, math.nan, 1, math.nan, math.nan, math.nan)
    sd = float(x.std(ddof=1))
    if sd == 0:
        return PairedTest(mean, 0.0, n, mean, mean, 1.0 if mean == 0 else 0.0)
    se = sd / math.sqrt(n)
    half = float(sps.t.ppf(1 - alpha / 2, n - 1)) * se
    p = float(2 * sps.t.sf(abs(mean) / se, n - 1))
    return PairedTest(mean, sd, n, mean - half, mean + half, p)


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes max_{j ≤ i} min(1, (m − j + 1)·p_(j)).

    Controls the family-wise error rate over the m comparisons without assuming they are independent.

    Args:
        pvalues: the family's p-values; NaN (an untestable comparison) stays NaN and does not count in m.

    Returns:
        Adjusted p-values in the input order.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m, running = len(order), 0.0
    for i, k in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[k]))
        out[k] = running
    return out


@dataclass(frozen=True)
class Tost:
    """Two one-sided t tests (TOST) of |mean difference| < margin.

    Attributes:
        p: the larger of the two one-sided p-values (NaN for n < 2).
        lo: lower bound of the (1 − 2·alpha) CI (90 % at alpha 0.05).
        hi: upper bound.
        equivalent: True when both one-sided tests reject, i.e. the 90 % CI lies inside (−margin, +margin).
    """

    p: float
    lo: float
    hi: float
    equivalent: bool


def tost(diffs: np.ndarray | list[float], margin: float, alpha: float = ALPHA) -> Tost:
    """Equivalence test of per-seed differences against ±margin (Schuirmann's TOST, each side at `alpha`).

    H0: mean ≤ −margin or mean ≥ +margin. Rejecting both one-sided nulls supports "the difference is smaller than
    the margin"; failing to reject is "equivalence not resolved", never "different".

    Args:
        diffs: per-seed differences.
        margin: equivalence margin (> 0, same units as diffs).
        alpha: level of each one-sided test.

    Returns:
        A `Tost`.
    """
    x = np.asarray(diffs, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n < 2:
        return Tost(math.nan, math.nan, math.nan, False)
    mean, sd = float(x.mean()), float(x.std(ddof=1))
    if sd == 0:
        inside = abs(mean) < margin
        return Tost(0.0 if inside else 1.0, mean, mean, inside)
    se = sd / math.sqrt(n)
    p_low = float(sps.t.sf((mean + margin) / se, n - 1))  # H0: mean <= -margin
    p_high = float(sps.t.cdf((mean - margin) / se, n - 1))  # H0: mean >= +margin
    half = float(sps.t.ppf(1 - alpha, n - 1)) * se
    p = max(p_low, p_high)
    return Tost(p, mean - half, mean + half, p < alpha)


def _powers(effect: float, sd: float, n: np.ndarray, alpha: float) -> np.ndarray:
    """Power of the two-sided paired t test with n pairs at true mean difference `effect` (noncentral t)."""
    df, ncp = n - 1, abs(effect) / sd * np.sqrt(n)
    crit = sps.t.ppf(1 - alpha / 2, df)
    return sps.nct.sf(crit, df, ncp) + sps.nct.cdf(-crit, df, ncp)


def _tost_powers(effect: float, sd: float, margin: float, n: np.ndarray, alpha: float) -> np.ndarray:
    """A lower bound on TOST's power, P(both reject) ≥ P(lower rejects) + P(upper rejects) − 1 (noncentral t)."""
    df, se = n - 1, sd / np.sqrt(n)
    crit = sps.t.ppf(1 - alpha, df)
    low = sps.nct.sf(crit, df, (effect + margin) / se)
    high = sps.nct.cdf(-crit, df, (effect - margin) / se)
    return low + high - 1


def _smallest_n(power_at: Callable[[np.ndarray], np.ndarray], power: float) -> float:
    """The smallest n in 2..MAX_SEEDS with power_at(n) ≥ power (power rises with n): n = 2..64 at once, then
    bisection, so a tiny effect costs a few dozen evaluations, not ten thousand."""
    n = np.arange(2, 65)
    hit = np.flatnonzero(power_at(n) >= power)
    if len(hit):
        return float(n[hit[0]])
    lo, hi = 64, MAX_SEEDS  # power(lo) < target
    if power_at(np.array([hi]))[0] < power:
        return math.nan
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power_at(np.array([mid]))[0] >= power else (mid, hi)
    return float(hi)


def seeds_needed(effect: float, sd: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """The number of paired seeds a two-sided paired t test at `alpha` needs to detect `effect` with `power`,
    taking the observed effect and paired SD as the truth (iterating n = 2, 3, ... on the noncentral t).

    Args:
        effect: mean paired difference.
        sd: standard deviation of the paired differences.
        power: target power.
        alpha: two-sided level.

    Returns:
        n (≥ 2), or NaN when the effect is 0, the SD is missing or 0, or more than MAX_SEEDS would be needed.
    """
    if not sd > 0 or not abs(effect) > 0 or math.isnan(effect):
        return math.nan
    return _smallest_n(lambda n: _powers(effect, sd, n, alpha), power)


def seeds_for_equivalence(effect: float, sd: float, margin: float, power: float = POWER,
                          alpha: float = ALPHA) -> float:
    """The number of paired seeds TOST at `alpha` needs to show |difference| < margin with `power` (at least: the
    power used is a lower bound), taking the observed effect and paired SD as the truth.

    Args:
        effect: mean paired difference (|effect| must be below the margin for equivalence to be reachable).
        sd: standard deviation of the paired differences.
        margin: equivalence margin.
        power: target power.
        alpha: level of each one-sided test.

    Returns:
        n (≥ 2), or NaN when |effect| ≥ margin, the SD is missing or 0, or more than MAX_SEEDS would be needed.
    """
    if not sd > 0 or math.isnan(effect) or abs(effect) >= margin:
        return math.nan
    return _smallest_n(lambda n: _tost_powers(effect, sd, margin, n, alpha), power)


@dataclass(frozen=True)
class McNemar:
    """McNemar's test on the discordant images of two classifiers scored on the same images.

    Attributes:
        b: images the first classifier gets right and the second wrong.
        c: images the second gets right and the first wrong.
        p_exact: exact two-sided p-value, min(1, 2·P(X ≤ min(b, c))) with X ~ Binomial(b + c, ½).
        p_mid: mid-p value, p_exact − P(X = min(b, c)) (less conservative, close to nominal size).
    """

    b: int
    c: int
    p_exact: float
    p_mid: float


def mcnemar(b: int, c: int) -> McNemar:
    """Exact and mid-p McNemar test of b against c discordant pairs.

    Args:
        b: first right, second wrong.
        c: first wrong, second right.

    Returns:
        A `McNemar` (p-values 1 when there are no discordant pairs).
    """
    n, k = b + c, min(b, c)
    if n == 0:
        return McNemar(b, c, 1.0, 1.0)
    tail = float(sps.binom.cdf(k, n, 0.5))
    point = float(sps.binom.pmf(k, n, 0.5))
    return McNemar(b, c, min(1.0, 2 * tail), min(1.0, 2 * tail - point))


def paired_proportion_ci(b: np.ndarray, c: np.ndarray, n: np.ndarray,
                         alpha: float = ALPHA) -> tuple[float, float, float]:
    """Normal CI of the mean over seed pairs of (b − c)/n, the accuracy difference on the shared test set.

    Each image contributes d ∈ {−1, 0, +1}; per seed pair the difference's sampling variance is
    ((b + c)/n − Δ²)/n, and seed pairs add as independent: var = Σ var_s / k². The trained networks are held
    fixed, so this covers test-set sampling only.

    Args:
        b: per seed pair, first right and second wrong.
        c: per seed pair, first wrong and second right.
        n: per seed pair, test images.
        alpha: two-sided level.

    Returns:
        (mean difference, lo, hi).
    """
    b, c, n = (np.asarray(a, dtype=float) for a in (b, c, n))
    d = (b - c) / n
    var = ((b + c) / n - d * d) / n
    mean, se = float(d.mean()), float(math.sqrt(var.sum()) / len(d))
    z = float(sps.norm.ppf(1 - alpha / 2))
    return mean, mean - z * se, mean + z * se
