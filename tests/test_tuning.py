"""A suite that sweeps a training setting (the lr pilot): the value is chosen per group on the last epoch's
validation accuracy, never on test accuracy; resolved only when the interval of best − runner-up excludes 0;
values not yet trained make the choice provisional."""
from __future__ import annotations

from pathlib import Path

import pytest
from synthetic_run import write_run

from nin_bench.report import build_report
from nin_bench.report.load import load_run
from nin_bench.report.stats import proportion_diff
from nin_bench.report.tuning import choice_text, groups

GRID = {"train.lr": [0.1, 0.2, 0.4]}
VARIANTS = [{"model.head": "gap", "model.dropout": 0.0}, {"model.head": "fc", "model.dropout": 0.5}]


def _recs(head: str, lr: float, seeds: dict[int, tuple[float, float, float]]) -> list[dict]:
    """Two epochs per seed; seed -> (last val_acc, last train_eval_acc, test_acc). The test accuracy is set to
    point the other way from validation, so a choice made on it would differ."""
    v = f"nin_cifar-n1x1_2-{head}-do{0 if head == 'gap' else 0.5}-cifar10-lr{lr}"
    base = {"variant": v, "status": "ok", "error": None, "protocol": "cpu", "device": "cpu", "device_name": "test cpu",
            "preset": "nin_cifar", "n_1x1": 2, "head": head, "dropout": 0.0 if head == "gap" else 0.5,
            "head_dropout": 0.0, "width": 0.25, "batchnorm": True, "dataset": "cifar10", "in_channels": 3,
            "input_size": 32, "num_classes": 10}
    out = []
    for seed, (val, train_eval, test) in seeds.items():
        out += [base | {"stage": "train_epoch", "seed": seed, "epoch": e, "lr": 0.05, "val_acc": val - 0.1 * (2 - e),
                        "train_eval_acc": train_eval - 0.1 * (2 - e), "train_loss": 1.0} for e in (1, 2)]
        out.append(base | {"stage": "train", "seed": seed, "lr": lr, "epochs": 2, "test_acc": test,
                           "val_size": 5000, "test_size": 10000})
    return out


def _folder(tmp_path: Path, name: str, records: list[dict]) -> Path:
    return write_run(tmp_path / name, records, {"name": name, "grid": GRID, "variants": VARIANTS,
                                                 "stages": ["train"]})


def test_one_seed_choice_reads_validation_and_says_what_is_missing(tmp_path, no_figures):
    recs = (_recs("gap", 0.1, {0: (0.811, 0.894, 0.85)}) + _recs("gap", 0.2, {0: (0.830, 0.900, 0.80)})
            + _recs("fc", 0.1, {0: (0.797, 0.987, 0.79)}))
    root = _folder(tmp_path, "one", recs)
    found = groups(load_run(root))
    assert list(found) == [("cifar10", "head=gap, dropout=0.0"), ("cifar10", "head=fc, dropout=0.5")]
    gap = found[("cifar10", "head=gap, dropout=0.0")]
    assert [(s.label, len(s.val)) for s in gap] == [("lr=0.1", 1), ("lr=0.2", 1), ("lr=0.4", 0)]
    assert gap[0].gap == pytest.approx(0.894 - 0.811) and gap[1].mean == pytest.approx(0.830)
    lo, hi = proportion_diff(0.830, 5000, 0.811, 5000)
    assert lo > 0  # 1.9 pp over 5,000 images each is resolved from validation-set sampling
    text = choice_text("head=gap, dropout=0.0", gap)
    assert text == (f"**head=gap, dropout=0.0:** lr=0.2 (validation 83.00 %, n = 1); next lr=0.1 at -1.90 pp "
                    f"([{-hi * 100:+.2f}, {-lo * 100:+.2f}] pp, 5,000 validation images, unpaired: validation-set "
                    "sampling only): resolved. Provisional: lr=0.4 not trained yet.")
    fc = choice_text("head=fc, dropout=0.5", found[("cifar10", "head=fc, dropout=0.5")])
    assert fc == ("**head=fc, dropout=0.5:** lr=0.1 (validation 79.70 %, n = 1). Provisional: lr=0.2, lr=0.4 not "
                  "trained yet.")
    md = build_report(root).read_text()
    assert "## Training-setting choice (on validation accuracy)" in md and "- cifar10: " + text in md
    assert "| cifar10 | head=gap, dropout=0.0 | lr=0.1 | 81.10 % | +8.30 pp | 1 |" in md
    assert "| cifar10 | head=gap, dropout=0.0 | lr=0.4 | not trained yet | – | 0 |" in md
    assert "**Grid:** `train.lr` ∈ [0.1, 0.2, 0.4]; 6 variants (3 with records so far)." in md


def test_seeds_pair_and_a_tie_is_not_resolved(tmp_path, no_figures):
    a = {0: (0.820, 0.9, 0.8), 1: (0.826, 0.9, 0.8), 2: (0.818, 0.9, 0.8)}
    b = {0: (0.822, 0.9, 0.8), 1: (0.821, 0.9, 0.8), 2: (0.819, 0.9, 0.8)}
    recs = _recs("gap", 0.1, a) + _recs("gap", 0.2, b) + _recs("gap", 0.4, {0: (0.5, 0.5, 0.9)})
    found = groups(load_run(_folder(tmp_path, "tie", recs)))
    text = choice_text("g", found[("cifar10", "head=gap, dropout=0.0")])
    diffs = [a[s][0] - b[s][0] for s in a]  # lr 0.1 − lr 0.2: +0.0007 mean
    assert sum(diffs) / 3 == pytest.approx(0.0006666, abs=1e-6)
    assert text.startswith("**g:** lr=0.1 (validation 82.13 %, n = 3); next lr=0.2 at -0.07 pp (")
    assert "paired over 3 seeds): not resolved, so the choice is a point estimate" in text
    assert "Provisional" not in text


def test_a_suite_sweeping_no_training_setting_has_no_choice_section(tmp_path, no_figures):
    recs = _recs("gap", 0.1, {0: (0.8, 0.9, 0.8)})
    root = write_run(tmp_path / "plain", recs, {"name": "plain", "grid": {"model.head": ["gap"]}, "stages": ["train"]})
    assert "Training-setting choice" not in build_report(root).read_text()
