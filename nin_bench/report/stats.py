"""Accuracy statistics over seeds: mean, std, t-distribution 95 % CI, and paired deltas against a baseline.

With a single seed there is no seed-to-seed spread; when the test-set size is stored, the interval falls back to
test-set sampling only (Wilson score interval; normal interval for a difference of two proportions)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

LEVEL = 0.95
# ci_method / delta_ci_method values in tables.csv
T_SEEDS = "t (seeds)"
T_PAIRED = "t (paired seeds)"
WILSON = "wilson (test set)"
NORMAL_DIFF = "normal, unpaired (test set)"
NO_CI = "none"


@dataclass(frozen=True)
class Estimate:
    """Mean of a sample with its spread and a two-sided t confidence interval.

    Attributes:
        mean: sample mean (NaN if n = 0).
        std: sample standard deviation, ddof = 1 (NaN if n < 2).
        n: sample size.
        lo: lower CI bound (NaN if n < 2: one seed has no spread to build an interval from).
        hi: upper CI bound.
    """

    mean: float
    std: float
    n: int
    lo: float
    hi: float


def t_estimate(values: np.ndarray | list[float], level: float = LEVEL) -> Estimate:
    """Mean, std and the t-interval mean ± t_{(1+level)/2, n-1} · std / sqrt(n).

    Args:
        values: the sample (NaNs dropped).
        level: confidence level.

    Returns:
        An `Estimate`.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(sps.t.ppf((1 + level) / 2, n - 1)) * std / math.sqrt(n)
    return Estimate(mean, std, n, mean - half, mean + half)


def seed_accuracies(train: pd.DataFrame) -> dict[str, pd.Series]:
    """Per variant, the successful test accuracies indexed by seed.

    Args:
        train: records of the "train" stage.

    Returns:
        variant -> Series(seed -> test_acc). Failed or diverged seeds are left out.
    """
    if train.empty or "test_acc" not in train:
        return {}
    ok = train[(train["status"] == "ok") & train["test_acc"].notna()]
    return {str(v): g.groupby("seed")["test_acc"].mean().astype(float) for v, g in ok.groupby("variant", sort=False)}


def paired_delta(variant: pd.Series, baseline: pd.Series, level: float = LEVEL) -> Estimate:
    """Paired difference variant − baseline over the seeds both have.

    Pairing by seed removes the seed-to-seed variation both variants share (same data order and split).

    Args:
        variant: seed -> accuracy of the variant.
        baseline: seed -> accuracy of the baseline.
        level: confidence level.

    Returns:
        `t_estimate` of the per-seed differences (n = number of shared seeds).
    """
    shared = variant.index.intersection(baseline.index)
    return t_estimate((variant[shared] - baseline[shared]).to_numpy(), level)


def welch_delta(b: np.ndarray | list[float], a: np.ndarray | list[float], level: float = LEVEL) -> Estimate:
    """Unpaired difference mean(b) − mean(a) with a Welch t-interval (unequal variances).

    Args:
        b: one sample (NaNs dropped).
        a: the other.
        level: confidence level.

    Returns:
        An `Estimate`: `std` is the standard error of the difference, `n` the smaller sample; no interval unless
        both samples have two values or more.
    """
    xb, xa = (np.asarray(v, dtype=float) for v in (b, a))
    xb, xa = xb[~np.isnan(xb)], xa[~np.isnan(xa)]
    n = min(len(xa), len(xb))
    if n == 0:
        return Estimate(math.nan, math.nan, 0, math.nan, math.nan)
    diff = float(xb.mean() - xa.mean())
    if n < 2:
        return Estimate(diff, math.nan, n, math.nan, math.nan)
    vb, va = xb.var(ddof=1) / len(xb), xa.var(ddof=1) / len(xa)
    se = math.sqrt(vb + va)
    if se == 0:
        return Estimate(diff, 0.0, n, diff, diff)
    df = (vb + va) ** 2 / (vb ** 2 / (len(xb) - 1) + va ** 2 / (len(xa) - 1))
    half = float(sps.t.ppf((1 + level) / 2, df)) * se
    return Estimate(diff, se, n, diff - half, diff + half)


def wilson(p: float, n: float, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion.

    Args:
        p: observed proportion (e.g. test accuracy).
        n: number of trials (test images).
        level: confidence level.

    Returns:
        (lo, hi).
    """
    z = float(sps.norm.ppf((1 + level) / 2))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def proportion_diff(p1: float, n1: float, p2: float, n2: float, level: float = LEVEL) -> tuple[float, float]:
    """Normal interval of p1 − p2 for two independent proportions.

    Both models are scored on the same test images, so a paired interval would be narrower: this one is
    conservative (the per-image outcomes needed for pairing are not stored).

    Args:
        p1: first proportion, over n1 trials.
        n1: its trials.
        p2: second proportion, over n2 trials.
        n2: its trials.
        level: confidence level.

    Returns:
        (lo, hi).
    """
    z = float(sps.norm.ppf((1 + level) / 2))
    half = z * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return p1 - p2 - half, p1 - p2 + half


def n_test_images(train: pd.DataFrame) -> dict[str, float]:
    """Per variant, the number of test images its successful train records name (older records lack it).

    Args:
        train: records of the "train" stage.

    Returns:
        variant -> test-set size; variants without a stored size are absent.
    """
    if train.empty or "test_size" not in train:
        return {}
    ok = train[(train["status"] == "ok") & train["test_size"].notna()]
    return {str(v): float(g["test_size"].min()) for v, g in ok.groupby("variant", sort=False)}


def _acc_row(acc: pd.Series, size: float) -> dict[str, float | str]:
    """Accuracy columns of one variant: t-CI over seeds, or the Wilson test-set interval for one seed."""
    est = t_estimate(acc.to_numpy())
    lo, hi, method = est.lo, est.hi, T_SEEDS if est.n >= 2 else NO_CI
    if est.n == 1 and size > 0:
        (lo, hi), method = wilson(est.mean, size), WILSON
    return {"test_acc_mean": est.mean, "test_acc_std": est.std, "n": est.n, "ci_lo": lo, "ci_hi": hi,
            "ci_method": method, "test_size": size}


def _delta_row(acc: pd.Series, base: pd.Series | None, size: float, base_size: float) -> dict[str, float | str]:
    """Delta columns of one variant: paired t-CI over seeds, or the test-set interval for one shared seed."""
    d = Estimate(math.nan, math.nan, 0, math.nan, math.nan) if base is None else paired_delta(acc, base)
    lo, hi, method = d.lo, d.hi, T_PAIRED if d.n >= 2 else NO_CI
    if d.n == 1 and size > 0 and base_size > 0:
        seed = acc.index.intersection(base.index)[0]
        (lo, hi), method = proportion_diff(acc[seed], size, base[seed], base_size), NORMAL_DIFF
    return {"delta_mean": d.mean, "delta_std": d.std, "delta_n": d.n, "delta_ci_lo": lo, "delta_ci_hi": hi,
            "delta_ci_method": method}


def accuracy_stats(train: pd.DataFrame, baselines: dict[str, str | None],
                   dataset_of: dict[str, str]) -> pd.DataFrame:
    """Accuracy estimate and paired delta for every trained variant.

    Args:
        train: records of the "train" stage.
        baselines: dataset -> baseline variant id.
        dataset_of: variant id -> dataset.

    Returns:
        DataFrame indexed by variant with columns test_acc_mean, test_acc_std, n, ci_lo, ci_hi, ci_method,
        test_size, delta_mean, delta_std, delta_n, delta_ci_lo, delta_ci_hi, delta_ci_method (NaN where
        undefined; delta NaN for the baseline itself). CIs are t over seeds when n >= 2; with one seed and a
        stored test-set size, test-set sampling intervals (`WILSON`, `NORMAL_DIFF`); otherwise NaN (`NO_CI`).
    """
    accs, sizes = seed_accuracies(train), n_test_images(train)
    rows = {}
    for variant, acc in accs.items():
        size = sizes.get(variant, math.nan)
        base = baselines.get(dataset_of.get(variant, ""))
        paired = base is not None and base != variant and base in accs
        rows[variant] = _acc_row(acc, size) | _delta_row(acc, accs[base] if paired else None, size,
                                                         sizes.get(base, math.nan) if paired else math.nan)
    return pd.DataFrame.from_dict(rows, orient="index")


def pareto_front(cost: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (lower or equal cost and higher accuracy), by rising cost.

    Args:
        cost: cost per point (params or MACs).
        acc: accuracy per point.

    Returns:
        Indices into the inputs, sorted by cost.
    """
    order = np.lexsort((-acc, cost))  # by cost, then best accuracy first among equal costs
    front, best = [], -np.inf
    for i in order:
        if acc[i] > best:
            front.append(int(i))
            best = acc[i]
    return np.array(front, dtype=int)
