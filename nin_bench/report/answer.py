"""The answer a report gives, from what the seeds resolve (`comparisons.compare_run`): a variant is called best
only when every pairwise comparison with it is resolved (Holm-adjusted); otherwise the answer names the variants
that cannot be told apart, says whether they are equivalent within the declared margin (TOST) and how many seeds
would settle it. Also the factorial paragraph of a grid of two or more axes and the "What the seeds resolve"
section (tables of every comparison and effect)."""
from __future__ import annotations

import pandas as pd

from nin_bench.report import fmt, tables
from nin_bench.report.comparisons import NO_PREDS
from nin_bench.report.document import Doc
from nin_bench.report.inference import MAX_SEEDS
from nin_bench.report.stats import NORMAL_DIFF

MAX_LISTED = 3  # unresolved pairs spelled out in an answer; the rest are in the section's table
MAX_PAIR_ROWS = 15  # pairs shown per data set (6 variants); a larger grid shows those of the highest mean
FACTORIAL_KINDS = ("main", "interaction", "simple")  # comparisons.factorial; "declared": report.interactions


def _p(x: float) -> str:
    """A p-value: "0.034", "< 0.001"."""
    return fmt.NA if fmt.missing(x) else ("< 0.001" if x < 0.001 else f"{x:.3f}")


def _pp(margin: float) -> str:
    """The margin in pp, as declared: 0.01 -> "1"."""
    return f"{margin * 100:g}"


def _ci(r: pd.Series) -> str:
    """"95 % CI [-1.01, +3.79] pp over 3 paired seeds"."""
    return f"95 % CI {fmt.interval(r['ci_lo'], r['ci_hi'], signed=True, unit='pp')} over {int(r['n'])} paired seeds"


def _img(r: pd.Series) -> str:
    """The per-image test beside the seed-level CI ("" without stored predictions)."""
    if r.get("img_note", NO_PREDS) == NO_PREDS or fmt.missing(r.get("img_delta")):
        return ""
    return (f"; per image on the shared test set ({r['img_note']}): {fmt.delta(r['img_delta'])}, "
            f"{fmt.interval(r['img_ci_lo'], r['img_ci_hi'], signed=True, unit='pp')}, McNemar mid-p "
            f"{_p(r['img_p_mid'])}")


def seeds_phrase(r: pd.Series, margin: float, family: int) -> str:
    """How many seeds would settle an unresolved comparison at 80 % power, at the observed paired SD (a difference
    at the Bonferroni level of a family of `family` pairs, as `comparisons.pairwise` computes it)."""
    sd = r["delta_sd"]
    if fmt.missing(sd) or sd == 0 or r["resolved"] or r["equivalent"]:
        return ""
    level = "" if family < 2 else f" at the level 5 %/{family} of the {family} pairs"
    options = [(r["seeds_needed"], f"resolve the difference{level}"),
               (r.get("seeds_for_equivalence", float("nan")), f"show equivalence within ±{_pp(margin)} pp")]
    options = [(n, what) for n, what in options if not fmt.missing(n)]
    if not options:
        return f"; at the observed paired SD ({sd * 100:.2f} pp) more than {MAX_SEEDS:,} seeds would be needed"
    n, what = min(options, key=lambda o: o[0])
    return f"; with 80 % power, about {int(n)} paired seeds would {what} (observed paired SD {sd * 100:.2f} pp)"


def equivalence_phrase(r: pd.Series, margin: float) -> str:
    """Whether TOST supports |difference| < margin, with the 90 % CI it rests on."""
    ci = fmt.interval(r["tost_lo90"], r["tost_hi90"], signed=True, unit="pp")
    if r["equivalent"]:
        return f"equivalent within ±{_pp(margin)} pp (TOST at 5 %: the 90 % CI {ci} lies inside)"
    return f"equivalence within ±{_pp(margin)} pp is not resolved either (90 % CI {ci})"


def _pair(r: pd.Series, margin: float, family: int) -> str:
    """One unresolved comparison spelled out."""
    return (f"{r['a_label']} − {r['b_label']}: {fmt.delta(r['delta_mean'])} ({_ci(r)}, Holm p {_p(r['p_holm'])}"
            f"{_img(r)}); {equivalence_phrase(r, margin)}{seeds_phrase(r, margin, family)}.")


def _names(items: list[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _acc(r: pd.Series) -> str:
    return f"{fmt.acc_pm(r['test_acc_mean'], r['test_acc_std'])} (n = {int(r['n'])})"


def _certainty(r: pd.Series) -> str:
    """How sure a single-seed paired delta is: its test-set interval and whether that excludes zero."""
    n = 0 if fmt.missing(r["delta_n"]) else int(r["delta_n"])
    ci = fmt.interval(r["delta_ci_lo"], r["delta_ci_hi"], signed=True, unit="pp")
    if n == 1 and r["delta_ci_method"] == NORMAL_DIFF:
        excludes = r["delta_ci_lo"] > 0 or r["delta_ci_hi"] < 0
        sure = "excludes 0" if excludes else "includes 0, so test-set sampling alone leaves the difference open"
        return (f"one seed, so its 95 % interval {ci} covers test-set sampling only, not seed-to-seed variation; "
                f"it {sure}")
    return f"paired over {n} seed{'s' if n != 1 else ''}, so no confidence interval"


def _one_seed(ds: str, trained: pd.DataFrame, t: pd.DataFrame) -> str:
    """Without two paired seeds nothing is resolved across seeds: the highest mean and its test-set interval."""
    top = trained.iloc[0]
    text = (f"**{ds}:** with one seed per variant no comparison is resolved across seeds; the highest test accuracy "
            f"is {top['label']}'s, {_acc(top)}.")
    bases = t[t["is_baseline"] & t["test_acc_mean"].notna()]
    if top["is_baseline"]:
        nxt = trained.iloc[1]
        return text + f" Next is {nxt['label']} at {fmt.delta(nxt['delta_mean'])} ({_certainty(nxt)})."
    if bases.empty:
        return text + " The baseline was not trained."
    return (text + f" Against the baseline {bases.iloc[0]['label']}: {fmt.delta(top['delta_mean'])} "
            f"({_certainty(top)}).")


def _winner_of(pw: pd.DataFrame, order: list[str]) -> str | None:
    """The variant resolved above every other (each of its pairs has it first and is resolved), if any."""
    for v in order:
        mine = pw[(pw["a"] == v) | (pw["b"] == v)]
        if len(mine) and (mine["a"] == v).all() and mine["resolved"].all():
            return v
    return None


def _winner(ds: str, top: pd.Series, pw: pd.DataFrame, t: pd.DataFrame) -> str:
    """The sentence for a variant resolved from every other, with its closest rival and the baseline."""
    mine = pw[pw["a"] == top["variant"]].sort_values("delta_mean")
    close = mine.iloc[0]
    text = (f"**{ds}:** {top['label']} has the best test accuracy, {_acc(top)}, resolved from every other variant "
            f"(Holm-adjusted over the {len(pw)} pairwise comparisons). The closest, {close['b_label']}, is "
            f"{fmt.delta(close['delta_mean'])} below it ({_ci(close)}, Holm p {_p(close['p_holm'])}{_img(close)}).")
    base = t[t["is_baseline"]]
    if not base.empty and base.iloc[0]["variant"] not in (top["variant"], close["b"]):
        r = mine[mine["b"] == base.iloc[0]["variant"]]
        if len(r):
            r = r.iloc[0]
            text += f" Over the baseline {r['b_label']}: {fmt.delta(r['delta_mean'])} ({_ci(r)})."
    return text


def _no_winner(ds: str, top: pd.Series, pw: pd.DataFrame, margin: float) -> str:
    """The sentence naming the variants that cannot be told apart from the highest mean, and whom they beat."""
    v = top["variant"]
    mine = pw[(pw["a"] == v) | (pw["b"] == v)]
    open_ = mine[~mine["resolved"]].sort_values("p_holm", ascending=False)
    others = [b if a == v else a for a, b in zip(open_["a"], open_["b"])]
    label = dict(zip(pw["a"], pw["a_label"])) | dict(zip(pw["b"], pw["b_label"]))
    if len(others) == 1:
        head = f"{top['label']} and {label[others[0]]} cannot be told apart"
    elif others:
        head = f"the highest mean, {top['label']}, cannot be told apart from {_names([label[o] for o in others])}"
    else:
        head = f"no variant is resolved from every other (the highest mean is {top['label']}'s)"
    text = f"**{ds}:** no single best variant: {head}."
    for _, r in open_.head(MAX_LISTED).iterrows():
        text += " " + _pair(r, margin, len(pw))
    if len(open_) > MAX_LISTED:
        text += f" {len(open_) - MAX_LISTED} more such comparisons are in the table below."
    group = [v, *others]
    inside = pw[pw["a"].isin(others) & pw["b"].isin(others) & pw["resolved"]]
    if len(inside):
        text += " Within that group, resolved: " + "; ".join(
            f"{r['a_label']} − {r['b_label']} {fmt.delta(r['delta_mean'])} ({_ci(r)}, Holm p {_p(r['p_holm'])})"
            for _, r in inside.iterrows()) + "."
    beaten = [w for w in label if w not in group and all(
        ((pw["a"] == g) & (pw["b"] == w) & pw["resolved"]).any() for g in group)]
    if beaten and len(group) > 1:
        who = "Both" if len(group) == 2 else f"All {len(group)}"
        text += f" {who} beat {_names([label[w] for w in beaten])} (each comparison resolved, Holm-adjusted)."
    return text


def verdict(ds: str, t: pd.DataFrame, cmp: pd.DataFrame, margin: float) -> tuple[str, str | None]:
    """The answer for one data set.

    Args:
        ds: data set name.
        t: its rows of `tables.results_table`.
        cmp: `comparisons.compare_run` of the run.
        margin: equivalence margin (fraction).

    Returns:
        (Markdown text, the variant resolved as best or None). No variant is named best unless every pairwise
        comparison with it is resolved.
    """
    trained = t[t["test_acc_mean"].notna()].sort_values("test_acc_mean", ascending=False, kind="stable")
    if trained.empty:
        return f"**{ds}:** no variant has a test accuracy yet.", None
    if len(trained) == 1:
        return f"**{ds}:** only {trained.iloc[0]['label']} has a test accuracy, {_acc(trained.iloc[0])}.", None
    pw = cmp[(cmp["kind"] == "pair") & (cmp["dataset"] == ds)] if len(cmp) else pd.DataFrame()
    if pw.empty or (pw["n"] < 2).all():
        return _one_seed(ds, trained, t), None
    best = _winner_of(pw, list(trained["variant"]))
    if best is not None:
        return _winner(ds, trained[trained["variant"] == best].iloc[0], pw, t), best
    return _no_winner(ds, trained.iloc[0], pw, margin), None


def _effect(r: pd.Series) -> str:
    """"+5.85 pp [+4.46, +7.23]" with "(not resolved; about N seeds)" when the CI includes 0."""
    text = f"{fmt.delta(r['delta_mean'])} {fmt.interval(r['ci_lo'], r['ci_hi'], signed=True, unit='pp')}"
    if r["resolved"] or fmt.missing(r["ci_lo"]):
        return text
    seeds = "" if fmt.missing(r["seeds_needed"]) else f"; about {int(r['seeds_needed'])} seeds would resolve it"
    return text + f" (not resolved{seeds})"


def _interaction_words(r: pd.Series) -> str:
    """A two-way interaction in words: "head gap − fc is 8.91 pp larger at dropout=0.5 than at dropout=0.0"."""
    parts = str(r["contrast"]).split("; ")
    if len(parts) != 2 or fmt.missing(r["delta_mean"]):
        return ""
    b_name, b_levels = parts[1].split(": ")
    b_lv, b_ref = b_levels.split(" − ")
    more = "larger" if r["delta_mean"] > 0 else "smaller"
    return (f": {parts[0].replace(':', '')} is {abs(r['delta_mean']) * 100:.2f} pp {more} at {b_name}={b_lv} "
            f"than at {b_name}={b_ref}")


def factorial_text(ds: str, cmp: pd.DataFrame) -> str | None:
    """The factorial paragraph of one data set (None for a grid of fewer than two factors).

    Args:
        ds: data set name.
        cmp: `comparisons.compare_run` of the run.

    Returns:
        Main effects, the simple effects of a two-factor grid, and the interactions (all of them when there are at
        most three, else the resolved ones), each with its paired 95 % CI.
    """
    f = cmp[(cmp["dataset"] == ds) & cmp["kind"].isin(FACTORIAL_KINDS)] if len(cmp) else pd.DataFrame()
    if f.empty:
        return None
    main, inter, simple = (f[f["kind"] == k] for k in ("main", "interaction", "simple"))
    text = (f"**{ds}, factorial ({' × '.join(dict.fromkeys(main['factors']))}; paired by seed, 95 % CIs):** main "
            "effects, each averaged over the other factors: "
            + "; ".join(f"{r['contrast'].replace(':', '')} {_effect(r)}" for _, r in main.iterrows()) + ".")
    if len(main["factors"].unique()) == 2 and len(simple) <= 8:
        text += " Simple effects: " + "; ".join(f"{r['contrast'].replace(':', '')} at {r['at']} {_effect(r)}"
                                                for _, r in simple.iterrows()) + "."
    shown = inter if len(inter) <= 3 else inter[inter["resolved"]]
    for _, r in shown.iterrows():
        text += (f" Interaction {r['factors']} ({r['contrast']}): {_effect(r)}{_interaction_words(r)}"
                 f"{' (resolved)' if r['resolved'] else ''}.")
    if len(shown) < len(inter):
        text += f" The other {len(inter) - len(shown)} interactions are not resolved (table below)."
    return text


def declared_text(ds: str, cmp: pd.DataFrame) -> str | None:
    """The declared interactions (`report.interactions`) of one data set in words, each with its paired 95 % CI
    (None when the suite declares none or their variants are not all trained here)."""
    f = cmp[(cmp["dataset"] == ds) & (cmp["kind"] == "declared")] if len(cmp) else pd.DataFrame()
    if f.empty:
        return None
    return (f"**{ds}, declared interaction{'s' if len(f) > 1 else ''} (`report.interactions`; a difference of two "
            "paired differences, paired by seed, 95 % CI):** "
            + " ".join(f"{r['at']}: {r['contrast']} = {_effect(r)}{' (resolved)' if r['resolved'] else ''}."
                       for _, r in f.iterrows()))


def _seeds_cell(r: pd.Series) -> str:
    """The seeds-to-settle cell: "–" when settled, "about 7" / "> 10,000" otherwise."""
    if r["resolved"] or r["equivalent"] or fmt.missing(r["delta_sd"]) or r["delta_sd"] == 0:
        return fmt.NA
    n = [x for x in (r["seeds_needed"], r["seeds_for_equivalence"]) if not fmt.missing(x)]
    return f"about {int(min(n))}" if n else f"> {MAX_SEEDS:,}"


def pair_rows(pw: pd.DataFrame, margin: float) -> tuple[list[str], list[list[str]]]:
    """Rounded cells of a data set's pairwise comparisons (the per-image column only where predictions exist).

    Args:
        pw: the data set's "pair" rows of `comparisons.compare_run`.
        margin: equivalence margin (fraction).

    Returns:
        (header, rows).
    """
    preds = (pw["img_note"] != NO_PREDS).any()
    header = ["Comparison (higher − lower)", "Δ", "95 % CI (n)", "Holm p", "Resolved",
              f"Equivalent within ±{_pp(margin)} pp (90 % CI)", "Seeds to settle (80 % power)"]
    header += ["Per image, test set: Δ, 95 % CI, McNemar mid-p"] if preds else []
    rows = []
    for _, r in pw.iterrows():
        ci = fmt.interval(r["ci_lo"], r["ci_hi"], signed=True, unit="pp") + f" ({int(r['n'])})"
        eq = fmt.interval(r["tost_lo90"], r["tost_hi90"], signed=True, unit="pp")
        cells = [f"{r['a_label']} − {r['b_label']}", fmt.delta(r["delta_mean"]), ci, _p(r["p_holm"]),
                 "yes" if r["resolved"] else "no", f"{'yes' if r['equivalent'] else 'no'} {eq}", _seeds_cell(r)]
        if preds:
            cells.append(NO_PREDS if fmt.missing(r["img_delta"]) else
                         f"{fmt.delta(r['img_delta'])}, "
                         f"{fmt.interval(r['img_ci_lo'], r['img_ci_hi'], signed=True, unit='pp')}, "
                         f"{_p(r['img_p_mid'])}")
        rows.append(cells)
    return header, rows


def effect_rows(f: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Rounded cells of a data set's factorial effects.

    Args:
        f: the data set's main, interaction and simple rows of `comparisons.compare_run`.

    Returns:
        (header, rows).
    """
    header = ["Effect", "Contrast", "At", "Δ", "95 % CI (n)", "p", "Resolved"]
    rows = [[r["kind"], r["contrast"], r["at"] or fmt.NA, fmt.delta(r["delta_mean"]),
             fmt.interval(r["ci_lo"], r["ci_hi"], signed=True, unit="pp") + f" ({int(r['n'])})", _p(r["p"]),
             "yes" if r["resolved"] else "no"] for _, r in f.iterrows()]
    return header, rows


SECTION_NOTE = (
    "Every difference is of test accuracy, paired by seed: per seed both variants have, the difference; then a t "
    "test and 95 % CI over those differences. The pairwise family of each data set is Holm-adjusted, and a variant "
    "is called best only when it is resolved from every other. Equivalence: two one-sided t tests at 5 % "
    "(TOST; the 90 % CI inside ±margin, `report.equivalence_margin_pp`). Seeds to settle: the number of paired "
    "seeds at which, taking the observed difference and paired SD as the truth, a two-sided paired t test at the "
    "family's Bonferroni level (5 % ÷ the number of pairs) resolves it, or TOST shows equivalence, with 80 % "
    "power (noncentral t), whichever needs fewer. Factorial effects compare each factor's levels with its "
    "reference level (the baseline's), per seed: a main effect averages the difference over the other factors' "
    "levels, an interaction is the difference of differences (A's effect at one level of B minus at B's "
    "reference), a simple effect holds the other factors fixed; their CIs are per effect, not adjusted. ")
PER_IMAGE_NOTE = (
    "Per image: McNemar's test on the images one variant gets right and the other wrong, summed over the seed "
    "pairs with stored predictions (a stratified McNemar; mid-p), and the mean over seed pairs of the accuracy "
    "difference on the shared test set with a normal 95 % CI. It holds the trained networks fixed, so it says "
    "whether the test set resolves them, not whether another seed would.")


def add_section(doc: Doc, cmp: pd.DataFrame, margin: float) -> str:
    """The "What the seeds resolve" section: per data set the pairwise table and the factorial table.

    Args:
        doc: the document to add to.
        cmp: `comparisons.compare_run` of the run (nothing is added when it is empty).
        margin: equivalence margin (fraction).

    Returns:
        LaTeX of the pairwise tables ("" when none).
    """
    pairs = cmp[cmp["kind"] == "pair"] if len(cmp) else cmp
    preds = len(pairs) and (pairs["img_note"] != NO_PREDS).any()
    if pairs.empty or not (preds or (pairs["n"] >= 2).any()):  # one seed and no predictions: nothing to test
        return ""
    doc.h(2, "What the seeds resolve")
    doc.p(SECTION_NOTE + (PER_IMAGE_NOTE if preds else "Per image: no predictions stored, so no per-image test."))
    tex = []
    for ds, c in cmp.groupby("dataset", sort=False):
        pw, f = c[c["kind"] == "pair"], c[c["kind"] != "pair"]
        doc.h(3, f"{ds}: pairwise comparisons")
        shown = pw
        if len(pw) > MAX_PAIR_ROWS:
            top = pw["a"].value_counts().idxmax()  # ahead in the most pairs: the highest mean
            shown = pw[(pw["a"] == top) | (pw["b"] == top)]
            doc.p(f"{len(pw)} pairs; shown: those of {shown.iloc[0]['a_label']} (all of them are in "
                  "comparisons.csv).")
        header, rows = pair_rows(shown, margin)
        doc.table(header, rows)
        tex.append(tables.latex(header, rows, f"Pairwise comparisons on {ds} (paired by seed, Holm-adjusted)",
                                f"tab:{ds}-pairs"))
        if len(f):
            doc.h(3, f"{ds}: factorial effects" if f["kind"].isin(FACTORIAL_KINDS).any() else
                  f"{ds}: declared interactions")
            keep = f if f["factors"].str.count("×").max() < 2 and len(f) <= 16 else f[f["kind"] != "simple"]
            doc.table(*effect_rows(keep))
    return "\n".join(tex)
