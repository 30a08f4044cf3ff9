"""What the seeds resolve: every pairwise comparison of a data set's variants (paired by seed, Holm-adjusted, with
TOST equivalence and the seeds that would settle it), a per-image McNemar test where predictions are stored, and
the factorial effects of a grid of two or more axes.

All differences are of test accuracy (fractions), paired by seed: for each seed both variants have, take the
difference, then a t test / CI over those per-seed differences. Contrast definitions (factorial):

- each factor has a reference level, the baseline's (else the first grid value); a contrast compares another
  level L with it, "L − ref";
- main effect of factor A at level L: per seed, the mean over every combination of the other factors' levels of
  y(A = L) − y(A = ref);
- interaction of factors A × B (levels L_A, L_B): per seed, the mean over the other factors of
  [y(L_A, L_B) − y(ref_A, L_B)] − [y(L_A, ref_B) − y(ref_A, ref_B)] (A's effect at L_B minus A's effect at ref_B);
  higher orders take the same alternating sum over the 2^k corner cells;
- simple effect of A at fixed levels of every other factor: y(A = L) − y(A = ref) there.

Factorial CIs and p-values are per contrast (unadjusted, planned contrasts); the pairwise family is Holm-adjusted
within each data set.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nin_bench.report import inference
from nin_bench.report.load import Run, baselines, grid_axes, matching_variant, variant_label
from nin_bench.report.stats import seed_accuracies

DEFAULT_MARGIN_PP = 1.0
NO_PREDS = "no predictions stored"


def margin_of(config: dict[str, Any]) -> float:
    """The equivalence margin as a fraction (`report.equivalence_margin_pp` / 100)."""
    pp = (config.get("report") or {}).get("equivalence_margin_pp", DEFAULT_MARGIN_PP)
    return float(pp) / 100


def _diffs(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Per-seed a − b over the seeds both have."""
    shared = a.index.intersection(b.index)
    return (a[shared] - b[shared]).to_numpy(dtype=float)


def _pair_row(a: str, b: str, d: np.ndarray, margin: float) -> dict[str, Any]:
    """The seed-level columns of one comparison a − b."""
    t, eq = inference.paired_test(d), inference.tost(d, margin)
    return {"a": a, "b": b, "n": t.n, "delta_mean": t.mean, "delta_sd": t.sd, "ci_lo": t.lo, "ci_hi": t.hi,
            "p": t.p, "tost_p": eq.p, "tost_lo90": eq.lo, "tost_hi90": eq.hi, "equivalent": eq.equivalent,
            "seeds_needed": math.nan, "seeds_for_equivalence": inference.seeds_for_equivalence(t.mean, t.sd, margin)}


def pairwise(accs: dict[str, pd.Series], order: list[str], margin: float) -> pd.DataFrame:
    """Every pair of variants, oriented so that a has the higher mean paired difference (a − b ≥ 0).

    Args:
        accs: variant -> Series(seed -> test accuracy).
        order: the variants to compare, in grid order (ties keep it).
        margin: equivalence margin (fraction).

    Returns:
        One row per pair: a, b, n, delta_mean, delta_sd, ci_lo, ci_hi, p, p_holm, resolved (p_holm < 0.05),
        tost_p, tost_lo90, tost_hi90, equivalent (TOST at 5 % within ±margin), seeds_needed (80 % power at the
        family's Bonferroni level 5 %/m, which covers Holm at any rank) and seeds_for_equivalence (TOST, 80 %),
        both NaN where the pair is resolved or shown equivalent. Empty with those columns for < 2 variants.
    """
    rows = []
    for x, y in itertools.combinations([v for v in order if v in accs], 2):
        d = _diffs(accs[x], accs[y])
        a, b = (y, x) if len(d) and d.mean() < 0 else (x, y)
        rows.append(_pair_row(a, b, -d if a == y else d, margin))
    cols = ["a", "b", "n", "delta_mean", "delta_sd", "ci_lo", "ci_hi", "p", "tost_p", "tost_lo90", "tost_hi90",
            "equivalent", "seeds_needed", "seeds_for_equivalence"]
    out = pd.DataFrame(rows, columns=cols)
    out.insert(8, "p_holm", inference.holm(out["p"].to_numpy()) if len(out) else [])
    out.insert(9, "resolved", out["p_holm"] < inference.ALPHA)
    # the family's Bonferroni level, which Holm applies to its first comparison: enough seeds at any rank
    out["seeds_needed"] = [inference.seeds_needed(m, sd, alpha=inference.ALPHA / max(len(out), 1))
                           for m, sd in zip(out["delta_mean"], out["delta_sd"])]
    out.loc[out["resolved"] | out["equivalent"], ["seeds_needed", "seeds_for_equivalence"]] = math.nan
    return out


def prediction_files(train: pd.DataFrame, root: Path) -> dict[tuple[str, int], Path]:
    """(variant, seed) -> stored test-set predictions (`preds_file`, relative to the results folder).

    Args:
        train: "train" records.
        root: the results folder.

    Returns:
        Only successful records whose file exists.
    """
    if train.empty or "preds_file" not in train:
        return {}
    ok = train[(train["status"] == "ok") & train["preds_file"].notna()]
    files = {(str(r["variant"]), int(r["seed"])): root / str(r["preds_file"]) for _, r in ok.iterrows()}
    return {k: p for k, p in files.items() if p.is_file()}


def _correct(path: Path) -> np.ndarray:
    """Per test image, whether the stored prediction is right."""
    with np.load(path) as z:
        return z["pred"] == z["label"]


def per_image(a: str, b: str, files: dict[tuple[str, int], Path]) -> dict[str, Any]:
    """McNemar over the shared test set for a − b, pooled over the seeds both stored predictions for.

    Pooling: per seed, b_s = images a gets right and b wrong, c_s the reverse. Under H0 (no difference on any
    image) each b_s given b_s + c_s is Binomial(b_s + c_s, ½), independently over seeds, so Σ b_s given
    Σ (b_s + c_s) is Binomial too: the exact test of the summed counts is a stratified McNemar. The interval is
    the mean over seeds of (b_s − c_s)/n_s (`inference.paired_proportion_ci`); both treat the trained networks as
    fixed and answer whether the test set resolves them, which the seed-level CI does not ask.

    Args:
        a: variant (first).
        b: variant (second).
        files: `prediction_files`.

    Returns:
        img_seeds, img_b, img_c, img_delta, img_ci_lo, img_ci_hi, img_p_exact, img_p_mid (NaN without
        predictions for a shared seed) and img_note.
    """
    seeds = sorted({s for v, s in files if v == a} & {s for v, s in files if v == b})
    if not seeds:
        nan = math.nan
        return {"img_seeds": 0, "img_b": nan, "img_c": nan, "img_delta": nan, "img_ci_lo": nan,
                "img_ci_hi": nan, "img_p_exact": nan, "img_p_mid": nan, "img_note": NO_PREDS}
    bs, cs, ns = [], [], []
    for s in seeds:
        ra, rb = _correct(files[(a, s)]), _correct(files[(b, s)])
        ra, rb = ra[:len(rb)], rb[:len(ra)]  # `train.test_subset` cuts are prefixes: the images both scored
        bs.append(int((ra & ~rb).sum()))
        cs.append(int((~ra & rb).sum()))
        ns.append(len(ra))
    mc = inference.mcnemar(sum(bs), sum(cs))
    mean, lo, hi = inference.paired_proportion_ci(np.array(bs), np.array(cs), np.array(ns))
    return {"img_seeds": len(seeds), "img_b": mc.b, "img_c": mc.c, "img_delta": mean, "img_ci_lo": lo,
            "img_ci_hi": hi, "img_p_exact": mc.p_exact, "img_p_mid": mc.p_mid,
            "img_note": f"{len(seeds)} seed pair{'s' if len(seeds) > 1 else ''}, {sum(ns):,} image pairs"}


def _key(v: Any) -> str:
    """A level's identity: 0.5, "0.5" and 0.50 alike (YAML vs JSON types); booleans and words as written."""
    if isinstance(v, bool):
        return str(v)
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return str(v)


def design(group: pd.DataFrame, config: dict[str, Any], base: str | None) -> tuple[pd.DataFrame, dict, dict]:
    """The factors of one data set's variants, their levels in grid order and their reference levels.

    Args:
        group: the data set's summary rows.
        config: resolved config (grid order).
        base: the baseline variant (its levels are the references), or None.

    Returns:
        (variant x factor table of levels, factor -> [levels], factor -> reference level), levels as the records
        write them; factors are the grid axes other than the data set that take two or more values here.
    """
    grid = {str(k).split(".")[-1]: vals for k, vals in (config.get("grid") or {}).items()}
    axes = [a for a in grid_axes(config, group) if a != "dataset" and group[a].map(_key).nunique() > 1]
    table = pd.DataFrame(index=group["variant"].astype(str))
    levels = {}
    for a in axes:  # a level is named as the records write it (0.0, not the grid's 0), in the grid's order
        shown = {_key(v): str(v) for v in reversed(list(group[a]))}
        table[a] = [shown[_key(v)] for v in group[a]]
        levels[a] = [shown[k] for k in dict.fromkeys(map(_key, grid.get(a, []))) if k in shown]
    for a in axes:
        levels[a] += [v for v in dict.fromkeys(table[a]) if v not in levels[a]]
    ref = {a: (table.loc[base, a] if base in table.index else levels[a][0]) for a in axes}
    return table, levels, ref


def _contrast(cells: dict[tuple, str], accs: dict[str, pd.Series], weights: dict[tuple, float]) -> np.ndarray:
    """Per seed, Σ weight · accuracy over the cells, on the seeds every weighted cell has (NaN cells: empty)."""
    series = [accs.get(cells.get(c, ""), None) for c in weights]
    if any(s is None for s in series):
        return np.array([])
    seeds = series[0].index
    for s in series[1:]:
        seeds = seeds.intersection(s.index)
    return sum(w * s[seeds].to_numpy(dtype=float) for w, s in zip(weights.values(), series))


def _weights(levels: dict, ref: dict, chosen: dict, fixed: dict) -> dict[tuple, float]:
    """Cell weights of the alternating sum over `chosen` factors (level vs reference), averaged over the free
    factors; `fixed` factors stay at their given level."""
    free = [a for a in levels if a not in chosen and a not in fixed]
    share = 1.0 / math.prod(len(levels[a]) for a in free) if free else 1.0
    out: dict[tuple, float] = {}
    for corner in itertools.product(*[(1, -1)] * len(chosen)):
        for combo in itertools.product(*[levels[a] for a in free]):
            at = dict(zip(free, combo)) | dict(fixed)
            at |= {a: (lv if sign == 1 else ref[a]) for (a, lv), sign in zip(chosen.items(), corner)}
            out[tuple(at[a] for a in levels)] = share * math.prod(corner)
    return out


def _effect_stats(d: np.ndarray) -> dict[str, Any]:
    """The paired t statistics of an effect's per-seed contrasts (the columns every effect row shares)."""
    t = inference.paired_test(d)
    return {"n": t.n, "delta_mean": t.mean, "delta_sd": t.sd, "ci_lo": t.lo, "ci_hi": t.hi, "p": t.p,
            "resolved": t.p < inference.ALPHA,
            "seeds_needed": math.nan if t.p < inference.ALPHA else inference.seeds_needed(t.mean, t.sd)}


def _effect_row(kind: str, chosen: dict, ref: dict, fixed: dict, free: list[str], d: np.ndarray) -> dict[str, Any]:
    """One factorial row: what it contrasts, where (fixed levels, or the factors it averages over) and its paired
    t statistics."""
    at = ", ".join(f"{a}={v}" for a, v in fixed.items()) or (f"mean over {', '.join(free)}" if free else "")
    return {"kind": kind, "factors": " × ".join(chosen),
            "contrast": "; ".join(f"{a}: {lv} − {ref[a]}" for a, lv in chosen.items()), "at": at,
            **_effect_stats(d)}


def factorial(accs: dict[str, pd.Series], table: pd.DataFrame, levels: dict, ref: dict) -> pd.DataFrame:
    """Main effects, every interaction and the simple effects of a full grid of two or more factors.

    Args:
        accs: variant -> Series(seed -> accuracy).
        table: variant x factor level keys (`design`).
        levels: factor -> level keys.
        ref: factor -> reference level.

    Returns:
        Rows kind ("main", "interaction", "simple"), factors, contrast, at, n, delta_mean, delta_sd, ci_lo,
        ci_hi, p, resolved, seeds_needed; empty when there are fewer than two factors or the grid is incomplete.
    """
    factors = list(levels)
    cells = {tuple(r[a] for a in factors): v for v, r in table.iterrows()}
    if len(factors) < 2 or len(cells) != math.prod(len(v) for v in levels.values()):
        return pd.DataFrame()
    rows = []
    for k in range(1, len(factors) + 1):
        for subset in itertools.combinations(factors, k):
            for lv in itertools.product(*[[x for x in levels[a] if x != ref[a]] for a in subset]):
                chosen = dict(zip(subset, lv))
                d = _contrast(cells, accs, _weights(levels, ref, chosen, {}))
                free = [a for a in factors if a not in chosen]
                rows.append(_effect_row("main" if k == 1 else "interaction", chosen, ref, {}, free, d))
    for a in factors:
        others = [f for f in factors if f != a]
        for lv in (x for x in levels[a] if x != ref[a]):
            for combo in itertools.product(*[levels[f] for f in others]):
                fixed = dict(zip(others, combo))
                d = _contrast(cells, accs, _weights(levels, ref, {a: lv}, fixed))
                rows.append(_effect_row("simple", {a: lv}, ref, fixed, [], d))
    return pd.DataFrame(rows)


def declared(accs: dict[str, pd.Series], group: pd.DataFrame, config: dict[str, Any],
             labels: dict[str, str]) -> pd.DataFrame:
    """The declared interactions (`report.interactions`) of one data set: per seed every four variants have,
    (a[0] − a[1]) − (b[0] − b[1]); the paired t statistics over those seeds.

    Args:
        accs: variant -> Series(seed -> accuracy).
        group: the data set's summary rows.
        config: resolved config.
        labels: variant -> short label.

    Returns:
        Rows of kind "declared" (factors "declared", contrast in labels, at = the interaction's name, and the
        columns of the factorial rows); none for an interaction whose variants are not all in this data set.
    """
    rows = []
    for spec in (config.get("report") or {}).get("interactions") or []:
        ids = [matching_variant(group, s) for s in (*spec["a"], *spec["b"])]
        if any(v is None for v in ids):
            continue
        cells = {(i,): v for i, v in enumerate(ids)}
        d = _contrast(cells, accs, {(0,): 1.0, (1,): -1.0, (2,): -1.0, (3,): 1.0})
        a0, a1, b0, b1 = (labels.get(v, v) for v in ids)
        rows.append({"kind": "declared", "factors": "declared", "contrast": f"({a0} − {a1}) − ({b0} − {b1})",
                     "at": spec["name"], **_effect_stats(d)})
    return pd.DataFrame(rows)


def compare_run(run: Run) -> pd.DataFrame:
    """Pairwise comparisons (with the per-image test) and factorial effects of every data set of a run.

    Args:
        run: the loaded results folder.

    Returns:
        One table: `pairwise` rows (kind "pair", with a_label, b_label and the img_* columns of `per_image`),
        `factorial` rows and `declared` interactions, each with its dataset; empty when nothing was trained.
    """
    s = run.summary
    accs = seed_accuracies(run.stage("train"))
    if s.empty or not accs:
        return pd.DataFrame()
    margin, bases = margin_of(run.config), baselines(s, run.config)
    files = prediction_files(run.stage("train"), run.results_dir)
    axes = grid_axes(run.config, s)
    labels = {r["variant"]: variant_label(r, axes) for _, r in s.iterrows()}
    parts = []
    for ds, group in s.groupby("dataset", sort=False):
        pw = pairwise(accs, list(group["variant"]), margin)
        if len(pw):
            img = pd.DataFrame([per_image(a, b, files) for a, b in zip(pw["a"], pw["b"])], index=pw.index)
            pw = pd.concat([pw, img], axis=1)
            pw.insert(0, "kind", "pair")
            pw.insert(3, "a_label", pw["a"].map(labels))
            pw.insert(4, "b_label", pw["b"].map(labels))
        fac = factorial(accs, *design(group, run.config, bases.get(str(ds))))
        dec = declared(accs, group, run.config, labels)
        parts += [p.assign(dataset=str(ds)) for p in (pw, fac, dec) if len(p)]
    if not parts:
        return pd.DataFrame()
    out = pd.concat(parts, ignore_index=True)
    return out[["dataset", *[c for c in out.columns if c != "dataset"]]]
