"""Accuracy statistics over seeds: mean, std, t-distribution 95 % CI, and paired deltas against a baseline."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as sps

LEVEL = 0.95


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


def accuracy_stats(train: pd.DataFrame, baselines: dict[str, str | None],
                   dataset_of: dict[str, str]) -> pd.DataFrame:
    """Accuracy estimate and paired delta for every trained variant.

    Args:
        train: records of the "train" stage.
        baselines: dataset -> baseline variant id.
        dataset_of: variant id -> dataset.

    Returns:
        DataFrame indexed by variant with columns test_acc_mean, test_acc_std, n, ci_lo, ci_hi, delta_mean,
        delta_std, delta_n, delta_ci_lo, delta_ci_hi (NaN where undefined; delta NaN for the baseline itself).
    """
    accs = seed_accuracies(train)
    rows = {}
    for variant, acc in accs.items():
        est = t_estimate(acc.to_numpy())
        row = {"test_acc_mean": est.mean, "test_acc_std": est.std, "n": est.n, "ci_lo": est.lo, "ci_hi": est.hi}
        base = baselines.get(dataset_of.get(variant, ""))
        d = Estimate(math.nan, math.nan, 0, math.nan, math.nan)
        if base is not None and base != variant and base in accs:
            d = paired_delta(acc, accs[base])
        row.update({"delta_mean": d.mean, "delta_std": d.std, "delta_n": d.n, "delta_ci_lo": d.lo,
                    "delta_ci_hi": d.hi})
        rows[variant] = row
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
