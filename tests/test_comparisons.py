"""What the seeds resolve, end to end on synthetic folders: factorial effects against hand-computed per-seed
contrasts, a tie that must not name a winner, the per-image McNemar test from stored predictions, and the answer
text built from them."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from synthetic_run import (
    ACC,
    HEAD_ACC,
    full_records,
    head_vid,
    make_head_grid,
    write_preds,
    write_run,
)

from nin_bench.errors import ConfigError
from nin_bench.report import build_report
from nin_bench.report.comparisons import compare_run
from nin_bench.report.load import load_run
from nin_bench.suite.config import validate

T975_DF2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # Student's t quantile, 2 degrees of freedom, closed form


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Text and tables only."""
    monkeypatch.setattr("nin_bench.report.render._figures", lambda *args: {})


def hand_ci(d: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t-interval of three per-seed contrasts."""
    x = np.array(d)
    half = T975_DF2 * x.std(ddof=1) / math.sqrt(3)
    return x.mean(), x.mean() - half, x.mean() + half


def acc(head: str, dropout: float) -> np.ndarray:
    return np.array(HEAD_ACC[(head, dropout)])


def answer_of(md: str) -> str:
    return md.split("## Answer")[1].split("## What was run")[0]


def test_factorial_effects_by_hand(tmp_path: Path) -> None:
    c = compare_run(load_run(make_head_grid(tmp_path)))
    f = c[c["kind"] != "pair"].set_index(["kind", "contrast", "at"])
    gap_fc_05, gap_fc_0 = acc("gap", 0.5) - acc("fc", 0.5), acc("gap", 0.0) - acc("fc", 0.0)  # 8,6,8 / 1,0,2 pp
    expected = {
        ("main", "head: gap − fc", "mean over dropout"): (gap_fc_05 + gap_fc_0) / 2,
        ("main", "dropout: 0.5 − 0.0", "mean over head"): (acc("gap", 0.5) - acc("gap", 0.0)
                                                           + acc("fc", 0.5) - acc("fc", 0.0)) / 2,
        ("interaction", "head: gap − fc; dropout: 0.5 − 0.0", ""): gap_fc_05 - gap_fc_0,
        ("simple", "head: gap − fc", "dropout=0.5"): gap_fc_05,
        ("simple", "head: gap − fc", "dropout=0.0"): gap_fc_0,
        ("simple", "dropout: 0.5 − 0.0", "head=fc"): acc("fc", 0.5) - acc("fc", 0.0),
    }
    assert len(f) == 7  # 2 main, 1 interaction, 4 simple
    for key, d in expected.items():
        mean, lo, hi = hand_ci(list(d))
        row = f.loc[key]
        assert (row["n"], row["delta_mean"]) == (3, pytest.approx(mean, rel=1e-9))
        assert (row["ci_lo"], row["ci_hi"]) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    inter = f.loc[("interaction", "head: gap − fc; dropout: 0.5 − 0.0", "")]
    assert inter["delta_mean"] == pytest.approx(0.19 / 3, rel=1e-9) and bool(inter["resolved"])


def test_head_grid_answer_states_interaction_and_no_unresolved_winner(tmp_path: Path, no_figures: None) -> None:
    md = build_report(make_head_grid(tmp_path)).read_text()
    answer = answer_of(md)
    _, lo, hi = hand_ci(list(acc("gap", 0.5) - acc("fc", 0.5) - acc("gap", 0.0) + acc("fc", 0.0)))
    assert f"Interaction head × dropout (head: gap − fc; dropout: 0.5 − 0.0): +6.33 pp [{lo * 100:+.2f}, " \
           f"{hi * 100:+.2f}] pp: head gap − fc is 6.33 pp larger at dropout=0.5 than at dropout=0.0" in answer
    # GAP and FC without dropout differ by 1, 0, 2 pp: not resolved, so neither is named best
    assert "no single best variant: head=gap, dropout=0.0 and head=fc, dropout=0.0 cannot be told apart" in answer
    assert "has the best" not in answer and "paired seeds would resolve the difference" in answer
    assert "## What the seeds resolve" in md and "no predictions stored" in md
    pairs = pd.read_csv(tmp_path / "comparisons.csv").query("kind == 'pair'")
    assert len(pairs) == 6 and (pairs["delta_mean"] >= 0).all()


def test_a_declared_interaction_equals_the_factorial_one_and_is_stated(tmp_path: Path, no_figures: None) -> None:
    """(gap 0.5 − gap 0.0) − (fc 0.5 − fc 0.0) is the head × dropout interaction by another route: declared in
    `report.interactions` it must give the factorial row's numbers, and the answer states it."""
    root = make_head_grid(tmp_path)
    config = yaml.safe_load((root / "config.resolved.yaml").read_text())
    config["report"]["interactions"] = [{
        "name": "dropout's gain, GAP minus FC",
        "a": [{"model.head": "gap", "model.dropout": 0.5}, {"model.head": "gap", "model.dropout": 0.0}],
        "b": [{"model.head": "fc", "model.dropout": 0.5}, {"model.head": "fc", "model.dropout": 0.0}]}]
    validate({"name": "t", "grid": {"model.n_1x1": [0]}, "report": config["report"]})  # the schema takes it
    (root / "config.resolved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    c = compare_run(load_run(root))
    dec = c[c["kind"] == "declared"].iloc[0]
    fac = c[c["kind"] == "interaction"].iloc[0]
    mean, lo, hi = hand_ci(list(acc("gap", 0.5) - acc("gap", 0.0) - acc("fc", 0.5) + acc("fc", 0.0)))
    assert (dec["n"], dec["delta_mean"], dec["ci_lo"], dec["ci_hi"]) == (
        3, pytest.approx(mean, rel=1e-9), pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert [dec[k] for k in ("delta_mean", "ci_lo", "ci_hi", "p")] == pytest.approx(
        [fac[k] for k in ("delta_mean", "ci_lo", "ci_hi", "p")], rel=1e-9)
    assert dec["contrast"] == ("(head=gap, dropout=0.5 − head=gap, dropout=0.0) − "
                               "(head=fc, dropout=0.5 − head=fc, dropout=0.0)")
    answer = answer_of(build_report(root).read_text())
    assert (f"**cifar10, declared interaction (`report.interactions`; a difference of two paired differences, "
            f"paired by seed, 95 % CI):** dropout's gain, GAP minus FC: {dec['contrast']} = +6.33 pp "
            f"[{lo * 100:+.2f}, {hi * 100:+.2f}] pp (resolved).") in answer


def test_a_declared_interaction_takes_two_pairs_of_variants() -> None:
    pair = [{"model.head": "gap"}, {"model.head": "fc"}]
    grid = {"model.head": ["gap", "fc"]}
    validate({"name": "t", "grid": grid, "report": {"interactions": [{"name": "x", "a": pair, "b": pair}]}})
    with pytest.raises(ConfigError, match="interactions"):
        validate({"name": "t", "grid": grid,
                  "report": {"interactions": [{"name": "x", "a": pair + pair[:1], "b": pair}]}})


def doctored(tmp_path: Path, n2_cifar: list[float]) -> str:
    """The synthetic run's training records with cifar10 n_1x1=2's accuracies replaced; the report's answer."""
    recs = [r for r in full_records() if r["stage"] == "train"]
    for r in recs:
        if r["variant"] == "nin_cifar-n1x1_2-gap-do0.5-cifar10":
            r["test_acc"] = n2_cifar[r["seed"]]
    return answer_of(build_report(write_run(tmp_path, recs, {"stages": ["train"]})).read_text())


def test_a_tie_names_no_winner(tmp_path: Path, no_figures: None) -> None:
    tied = doctored(tmp_path / "exact", list(ACC[("cifar10", 1)]))  # n_1x1=2 a copy of n_1x1=1
    cifar = tied.split("**fashion_mnist:**")[0]
    assert "has the best" not in cifar
    assert "no single best variant: n_1x1=1 and n_1x1=2 cannot be told apart" in cifar
    assert "n_1x1=1 − n_1x1=2: +0.00 pp" in cifar and "equivalent within ±1 pp" in cifar
    assert "Both beat n_1x1=0" in cifar
    a = ACC[("cifar10", 1)]
    shuffled = doctored(tmp_path / "means", [a[1], a[2], a[0]]).split("**fashion_mnist:**")[0]  # same mean
    assert "has the best" not in shuffled and "cannot be told apart" in shuffled


def test_per_image_mcnemar_from_stored_predictions(tmp_path: Path, no_figures: None) -> None:
    root = make_head_grid(tmp_path)
    recs = [json.loads(line) for line in (root / "records.jsonl").read_text().splitlines()]
    b_s, c_s = [6, 5, 7], [2, 3, 1]  # gap right & fc wrong, the reverse, per seed, on 100 images
    for r in recs:
        if r["dropout"] != 0.0:
            continue
        b, c = b_s[r["seed"]], c_s[r["seed"]]
        right = np.zeros(100, bool)
        right[b + c: b + c + 60] = True  # both right on 60 images, both wrong on the rest
        right[:b] = r["head"] == "gap"
        right[b:b + c] = r["head"] == "fc"
        if r["head"] == "fc":  # scored on 50 more test images (a larger train.test_subset): not paired
            right = np.concatenate([right, np.zeros(50, bool)])
        r["preds_file"] = write_preds(root, r["variant"], r["seed"], right)
    write_run(root, recs, {"grid": {"model.head": ["gap", "fc"], "model.dropout": [0.5, 0.0]},
                           "stages": ["train"], "report": {"baseline": {"model.head": "fc", "model.dropout": 0.0}}})
    c = compare_run(load_run(root))
    row = c[(c["a"] == head_vid("gap", 0.0)) & (c["b"] == head_vid("fc", 0.0))].iloc[0]
    tail = sum(math.comb(24, k) for k in range(7)) / 2 ** 24  # P(X <= 6), X ~ Bin(24, 1/2)
    assert (row["img_seeds"], row["img_b"], row["img_c"]) == (3, 18, 6)
    assert row["img_p_exact"] == pytest.approx(2 * tail, rel=1e-9)
    assert row["img_p_mid"] == pytest.approx(2 * tail - math.comb(24, 6) / 2 ** 24, rel=1e-9)
    assert row["img_delta"] == pytest.approx(0.04, rel=1e-12)
    other = c[(c["kind"] == "pair") & (c["a"] == head_vid("gap", 0.5))].iloc[0]
    assert other["img_note"] == "no predictions stored" and math.isnan(other["img_p_mid"])
    md = build_report(root).read_text()
    assert f"McNemar mid-p {2 * tail - math.comb(24, 6) / 2 ** 24:.3f}" in answer_of(md)
    assert "3 seed pairs, 300 image pairs" in md and "Per image, test set" in md


def test_equivalence_margin_is_validated() -> None:
    base = {"name": "x", "grid": {"model.n_1x1": [0, 1]}}
    assert validate(base).report.equivalence_margin_pp == 1.0
    with pytest.raises(ConfigError, match="report.equivalence_margin_pp"):
        validate(base | {"report": {"equivalence_margin_pp": 0}})
