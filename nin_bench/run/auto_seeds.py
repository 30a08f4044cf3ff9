"""`seeds: auto`: how many seeds a suite trains, decided from its records alone.

Training runs seed-major: seeds 0..min-1 of every variant first, then, while a comparison the suite declares
(`AutoSeeds.target`) is unresolved, one more seed of every variant, up to `max`. A comparison is resolved when
the seeds say something either way: for target "baseline", the paired 95 % CI of variant − baseline excludes 0
or TOST shows |Δ| < `report.equivalence_margin_pp`; for "pairs", what the report's pairwise table calls resolved
(Holm-adjusted p < 0.05) or equivalent (TOST).

Every decision is recomputed from the stored records (`seed_level`), never from state a killed run left behind:
the decision to go from n to n + 1 seeds reads only the test accuracies of seeds 0..n-1, so a run killed at any
instant and started again with the same command replays the same decisions and continues where it stopped.
Adding seeds until a test rejects is optional stopping: the report's CIs are not adjusted for it (README).
"""
from __future__ import annotations

import itertools
from typing import Any

import pandas as pd

from nin_bench.report.comparisons import margin_of, pairwise
from nin_bench.report.inference import paired_test, tost
from nin_bench.report.load import baselines
from nin_bench.report.stats import seed_accuracies
from nin_bench.store.records import completed, latest_per_key
from nin_bench.suite.config import AutoSeeds, SuiteConfig
from nin_bench.suite.variants import Variant

# Why a run stopped adding seeds (the manifest's `seeds_auto.stopped`).
RESOLVED, MAX_REACHED, BUDGET, MISSING = "all resolved", "max reached", "budget", "units missing"


def _value_at(cfg: SuiteConfig, dotted: str) -> Any:
    """The value of a dotted key (e.g. "model.dropout") in a variant's config."""
    node: Any = cfg.model_dump(mode="json")
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _by_dataset(variants: list[Variant]) -> dict[str, list[str]]:
    """Variant ids per data set, in grid order (comparisons never cross data sets)."""
    out: dict[str, list[str]] = {}
    for v in variants:
        out.setdefault(v.config.data.dataset, []).append(v.id)
    return out


def declared(variants: list[Variant], cfg: SuiteConfig) -> list[tuple[str, str]]:
    """The comparisons (a, b) the suite's `seeds: auto` must resolve, as variant ids, a − b.

    "baseline": every variant against its data set's baseline, chosen by the report's own rule
    (`report.load.baselines`: the first variant matching `report.baseline`, else the data set's first); "pairs":
    every pair within a data set, in grid order.
    """
    spec = cfg.report.baseline
    frame = pd.DataFrame([{"variant": v.id, "dataset": v.config.data.dataset,
                           **{k.split(".")[-1]: _value_at(v.config, k) for k in spec}} for v in variants])
    pairs = []
    for ds, ids in _by_dataset(variants).items():
        if cfg.auto_seeds is not None and cfg.auto_seeds.target == "pairs":
            pairs += list(itertools.combinations(ids, 2))
            continue
        base = baselines(frame[frame["dataset"] == ds], {"report": {"baseline": spec}}).get(ds)
        pairs += [(v, base) for v in ids if base is not None and v != base]
    return pairs


def accuracies(records: list[dict[str, Any]], n: int) -> dict[str, pd.Series]:
    """Per variant, the test accuracy of each successful training seed below `n` (seed -> test_acc)."""
    final = [r for r in latest_per_key(records) if r.get("stage") == "train" and r.get("seed") is not None
             and r["seed"] < n]
    return seed_accuracies(pd.DataFrame(final)) if final else {}


def unresolved(records: list[dict[str, Any]], variants: list[Variant], cfg: SuiteConfig,
               n: int) -> list[tuple[str, str]]:
    """The declared comparisons that seeds 0..n-1 leave unresolved (neither a difference nor equivalence).

    Args:
        records: every record of the folder.
        variants: the expanded grid.
        cfg: the resolved config (`seeds: auto`, `report`).
        n: how many seeds (0..n-1) the decision may read.
    """
    accs, margin = accuracies(records, n), margin_of(cfg.model_dump(mode="json"))
    empty = pd.Series(dtype=float)
    pairs = declared(variants, cfg)
    if cfg.auto_seeds is not None and cfg.auto_seeds.target == "pairs":
        open_ = []
        for ids in _by_dataset(variants).values():
            pw = pairwise({v: accs.get(v, empty) for v in ids}, ids, margin)
            settled = {frozenset(p) for p, ok in zip(zip(pw["a"], pw["b"]), pw["resolved"] | pw["equivalent"])
                       if ok}
            open_ += [p for p in pairs if p[0] in ids and frozenset(p) not in settled]
        return open_
    out = []
    for a, b in pairs:
        x, y = accs.get(a, empty), accs.get(b, empty)
        shared = x.index.intersection(y.index)
        d = (x[shared] - y[shared]).to_numpy(dtype=float)
        t = paired_test(d)
        if not (t.lo > 0 or t.hi < 0 or tost(d, margin).equivalent):  # NaN bounds (n < 2): unresolved
            out.append((a, b))
    return out


def seed_level(records: list[dict[str, Any]], variants: list[Variant], cfg: SuiteConfig,
               attempted: set[tuple] = frozenset()) -> int:
    """How many seeds (0..n-1) the suite wants now, replaying every decision from the records.

    Start at `min`; go to n + 1 while n < max, every variant's seeds below n are done, and either a declared
    comparison is unresolved at n seeds or seed n is already recorded for some variant (an earlier run decided
    on it: the seed is completed for every variant so the answers stay paired).

    Args:
        records: every record of the folder.
        variants: the expanded grid.
        cfg: the resolved config with `seeds: auto`.
        attempted: unit keys this run already tried (a failed unit counts as done here, so one run does not try it
            again and again; the next run retries it, as for any failed unit).
    """
    auto: AutoSeeds = cfg.auto_seeds
    done = completed(records) | set(attempted)
    recorded = completed(records)
    n = auto.min
    while n < auto.max:
        if any((v.id, "train", s) not in done for v in variants for s in range(n)):
            break
        if not any((v.id, "train", n) in recorded for v in variants) and not unresolved(records, variants, cfg, n):
            break
        n += 1
    return n


def outcome(records: list[dict[str, Any]], variants: list[Variant], cfg: SuiteConfig, n: int,
            cut: bool) -> dict[str, Any]:
    """The manifest's account of a `seeds: auto` run (`seeds_auto`).

    Args:
        records: every record of the folder.
        variants: the expanded grid.
        cfg: the resolved config with `seeds: auto`.
        n: the seed level reached (`seed_level`).
        cut: the run stopped for its time budget (a deadline, or units skipped as too long).

    Returns:
        min, max, target, seeds (n), stopped ("all resolved" | "max reached" | "budget", or "units missing"
        when a unit of seeds 0..n-1 is not recorded for another reason) and unresolved ("a − b" of each declared
        comparison seeds 0..n-1 leave open).
    """
    a = cfg.auto_seeds
    open_ = unresolved(records, variants, cfg, n)
    stopped = BUDGET if cut else RESOLVED if not open_ else MAX_REACHED if n >= a.max else MISSING
    return {"min": a.min, "max": a.max, "target": a.target, "seeds": n, "stopped": stopped,
            "unresolved": [f"{x} − {y}" for x, y in open_]}
