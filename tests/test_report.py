"""The report: table numbers equal an independent aggregation of the records; figures exist and are real images;
partial and failing runs degrade gracefully; the report runs with torch blocked from import."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from synthetic_run import (
    ACC,
    DATASETS,
    FIGURES,
    MACS,
    N1X1,
    PARAMS,
    full_records,
    make_full_run,
    profile_rec,
    train_recs,
    vid,
    write_run,
)

from nin_bench.report import build_report, plots


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete synthetic results folder with its report built: every figure as PNG only (the SVG of a figure
    is the same drawing saved again, a third of the report's cost: tests/test_cli.py's light commands check that
    a report writes one beside every PNG)."""
    root = make_full_run(tmp_path_factory.mktemp("full"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "SVG", False)
        build_report(root)
    return root


def t_ci(x: np.ndarray) -> tuple[float, float]:
    """Independent t-interval."""
    half = stats.t.ppf(0.975, len(x) - 1) * np.std(x, ddof=1) / np.sqrt(len(x))
    return np.mean(x) - half, np.mean(x) + half


def test_table_numbers_equal_independent_aggregation(full_run: Path) -> None:
    t = pd.read_csv(full_run / "tables.csv").set_index("variant")
    assert len(t) == 6
    for (ds, n), accs in ACC.items():
        row, x = t.loc[vid(ds, n)], np.array(accs)
        lo, hi = t_ci(x)
        assert row["test_acc_mean"] == pytest.approx(np.mean(x), abs=1e-15)
        assert row["test_acc_std"] == pytest.approx(np.std(x, ddof=1), rel=1e-12)
        assert (row["n"], row["ci_lo"], row["ci_hi"]) == (3, pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
        assert row["ci_method"] == "t (seeds)"
        assert row["params"] == PARAMS[n] and row["macs"] == MACS[n] and row["flops_fwd"] == 2 * MACS[n]
        if n == 0:
            assert bool(row["is_baseline"]) and np.isnan(row["delta_mean"])
            continue
        d = x - np.array(ACC[(ds, 0)])
        dlo, dhi = t_ci(d)
        assert row["delta_mean"] == pytest.approx(d.mean(), rel=1e-12)
        assert (row["delta_n"], row["delta_ci_lo"], row["delta_ci_hi"]) == (
            3, pytest.approx(dlo, rel=1e-12), pytest.approx(dhi, rel=1e-12))
        assert row["train_img_per_s"] == pytest.approx(1000.0 * 128 / 136 / (1 + n / 10), rel=1e-15)


def test_markdown_rounds_and_answers(full_run: Path) -> None:
    md = (full_run / "report.md").read_text()
    x, d = np.array(ACC[("cifar10", 2)]), np.array(ACC[("cifar10", 2)]) - np.array(ACC[("cifar10", 0)])
    lo, hi = t_ci(d)
    assert "Does adding 1x1 convs help?" in md and "fp32 0.2 TFLOP/s" in md and "f" * 64 in md
    assert f"{x.mean() * 100:.2f} ± {x.std(ddof=1) * 100:.2f} %" in md
    answer = md.split("## Answer")[1].split("## What was run")[0]
    assert "**cifar10:** n_1x1=2 has the best test accuracy" in answer
    assert f"{d.mean() * 100:+.2f} pp" in answer and f"[{lo * 100:+.2f}, {hi * 100:+.2f}] pp" in answer
    # fashion_mnist: n_1x1=1 is ahead of n_1x1=2 by 0.4, 0.8, 0.2 pp, which three seeds do not resolve
    assert "**fashion_mnist:** no single best variant: n_1x1=1 and n_1x1=2 cannot be told apart" in answer
    assert "Both beat n_1x1=0" in answer and "fashion_mnist:** n_1x1=1 has the best" not in answer
    assert "| n_1x1=2 | 967k | 222.5M | 445.0M |" in md and "n_1x1=0 (baseline)" in md
    assert "Comparison with the NiN paper" in md and "10.41 %" in md and "8.81 %" in md
    tex = (full_run / "tables.tex").read_text()
    assert tex.count(r"\toprule") == 4 and r"$\pm$" in tex  # per data set: results, pairwise comparisons
    assert r"\caption{Pairwise comparisons on cifar10" in tex and r"n\_1x1=2 $-$ n\_1x1=1" in tex


def test_every_figure_written_and_non_trivial(full_run: Path) -> None:
    md = (full_run / "report.md").read_text()
    for name in FIGURES:
        png = full_run / "figures" / f"{name}.png"
        assert png.stat().st_size > 5000, name
        with Image.open(png) as im:
            rgb = np.asarray(im.convert("RGB"))
            assert im.format == "PNG" and (rgb != rgb[0, 0]).any(axis=-1).mean() > 0.01  # > 1 colour, not blank
        assert f"](figures/{name}.png)" in md
    assert md.count("\n*") >= len(FIGURES)  # a caption line under every figure
    html = (full_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES) and 'src="figures/' not in html
    # records from before `train_eval_acc`: the train-vs-validation figure is not drawn, and the report says why
    assert "**Not drawn:** `train_vs_val` (the epoch records predate `train_eval_acc`" in md


def test_profile_only_run_says_training_has_not_run(tmp_path: Path) -> None:
    recs = [profile_rec(ds, n) for ds in DATASETS for n in N1X1]
    root = write_run(tmp_path, recs, {"stages": ["profile"]})
    md = build_report(root).read_text()
    assert "Training has not run" in md and "| n_1x1=1 | 850k | 190.0M | 380.0M |" in md
    assert "Test acc" not in md and "Comparison with the NiN paper" not in md
    assert (root / "figures/size_by_block.png").exists()
    assert not (root / "figures/accuracy_vs_cost.png").exists()
    assert pd.read_csv(root / "tables.csv")["test_acc_mean"].isna().all()


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip drawing in tests about text and tables only (figures are tested on the full run)."""
    monkeypatch.setattr("nin_bench.report.render._figures", lambda *args: {})


def test_failed_and_diverged_variants_are_listed(tmp_path: Path, no_figures: None) -> None:
    recs = full_records()
    for r in recs:
        if r["variant"] == vid("cifar10", 1) and r["stage"] == "train" and r["seed"] == 2:
            r.update(status="diverged", error="loss is nan", diverged_epoch=2, test_acc=None)
        if r["variant"] == vid("fashion_mnist", 2) and r["stage"] == "profile":
            r.update(status="error", error="RuntimeError: boom")
    md = build_report(write_run(tmp_path, recs)).read_text()
    fails = md.split("## Failed or diverged runs")[1]
    assert f"`{vid('cifar10', 1)}`: diverged (train seed 2 epoch 2): loss is nan" in fails
    assert f"`{vid('fashion_mnist', 2)}`: error (profile): RuntimeError: boom" in fails
    t = pd.read_csv(tmp_path / "tables.csv").set_index("variant")
    assert t.loc[vid("cifar10", 1), "n"] == 2  # the diverged seed is out of the mean and of the pairing
    assert t.loc[vid("cifar10", 1), "test_acc_mean"] == pytest.approx(np.mean(ACC[("cifar10", 1)][:2]), rel=1e-12)
    assert t.loc[vid("cifar10", 1), "delta_n"] == 2


def test_single_seed_ci_is_na(tmp_path: Path, no_figures: None) -> None:
    recs = [r for r in full_records() if r.get("seed") in (None, 0)]
    md = build_report(write_run(tmp_path, recs, {"seeds": [0]})).read_text()
    assert "n/a (n=1)" in md and "single seed" in md and "no confidence interval" in md


def paired_seed0(ds: str, n: int) -> tuple[float, float]:
    """Seed-0 accuracies of a variant and of its data set's baseline (n_1x1=0)."""
    return ACC[(ds, n)][0], ACC[(ds, 0)][0]


def test_single_seed_shows_test_set_intervals(tmp_path: Path, no_figures: None) -> None:
    sizes = {"cifar10": 10_000, "fashion_mnist": 1_000}  # fashion_mnist small enough that its Δ interval spans 0
    recs = [r | ({"test_size": sizes[r["dataset"]]} if r["stage"] == "train" else {})
            for r in full_records() if r.get("seed") in (None, 0)]
    md = build_report(write_run(tmp_path, recs, {"seeds": [0]})).read_text()
    t = pd.read_csv(tmp_path / "tables.csv").set_index("variant")
    z = stats.norm.ppf(0.975)
    for (ds, n) in ACC:
        row, (p, pb), m = t.loc[vid(ds, n)], paired_seed0(ds, n), sizes[ds]
        wilson = stats.binomtest(round(p * m), m).proportion_ci(0.95, method="wilson")
        assert (row["ci_method"], row["test_size"]) == ("wilson (test set)", m)
        assert (row["ci_lo"], row["ci_hi"]) == (pytest.approx(wilson.low, rel=1e-12),
                                                pytest.approx(wilson.high, rel=1e-12))
        assert f"[{wilson.low * 100:.2f}, {wilson.high * 100:.2f}] % (test set)" in md
        if n == 0:
            assert row["delta_ci_method"] == "none" and np.isnan(row["delta_ci_lo"])
            continue
        half = z * np.sqrt(p * (1 - p) / m + pb * (1 - pb) / m)
        assert row["delta_ci_method"] == "normal, unpaired (test set)"
        assert (row["delta_ci_lo"], row["delta_ci_hi"]) == (pytest.approx(p - pb - half, rel=1e-9),
                                                            pytest.approx(p - pb + half, rel=1e-9))
        assert f"[{(p - pb - half) * 100:+.2f}, {(p - pb + half) * 100:+.2f}] pp (test set)" in md
    answer = md.split("## Answer")[1].split("## What was run")[0]
    cifar, fashion = answer.split("**fashion_mnist:**")
    assert "test-set sampling only, not seed-to-seed variation; it excludes 0" in cifar
    assert "test-set sampling only, not seed-to-seed variation; it includes 0" in fashion
    assert "cover test-set sampling only (10,000 test images), not seed-to-seed variation" in md
    assert "n/a" not in md.split("## Results per data set")[1]


def test_augmentation_from_records_then_config(tmp_path: Path, no_figures: None) -> None:
    recs = full_records()
    md = build_report(write_run(tmp_path / "none", recs, {"train": {"epochs": 3, "augment": "none"}})).read_text()
    assert "augmentation off" in md and "augmentation on" not in md
    assert "| 8.81 % |" not in md and "Augmentation (paper / ours)" in md and "| no / no |" in md
    auto = build_report(write_run(tmp_path / "auto", recs, {"train": {"epochs": 3, "augment": "auto"}})).read_text()
    assert ("augmentation random crops (pad 4) + horizontal flips (cifar10), random crops (pad 4) (fashion_mnist)"
            in auto) and "| yes / yes |" in auto
    for r in recs:
        if r["stage"] == "train":
            r["augment"] = "none" if r["dataset"] == "cifar10" else "flip"
    rec = build_report(write_run(tmp_path / "rec", recs, {"train": {"epochs": 3, "augment": "auto"}})).read_text()
    assert "augmentation off (cifar10), horizontal flips (fashion_mnist)" in rec and "| 8.81 % |" not in rec
    assert "Ours (cpu protocol): 3 epochs, batch ?, augmentation off;" in rec


def test_protocol_line_names_model_settings_and_why(tmp_path: Path, no_figures: None) -> None:
    extra = {"model": {"preset": "nin_cifar", "width": 0.25, "batchnorm": True, "init": "kaiming"},
             "protocol_notes": {"cpu": "Two CPU cores: a narrow model, three epochs.", "gpu": "Paper scale."}}
    root = write_run(tmp_path, full_records(), extra)
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps(manifest | {"cpu_model": "test cpu"}))
    md = build_report(root).read_text()
    line = md.split("- **Protocol:** ")[1].split("\n")[0]
    assert line.startswith("cpu; stages profile, timing, train; model width 0.25, BatchNorm, init kaiming; training")
    assert md.index("**Protocol:**") < md.index("**Why this protocol:** Two CPU cores: a narrow model, three epochs.")
    assert md.index("**Why this protocol:**") < md.index("**Device:**") and "Paper scale" not in md
    assert "**Device:** cpu (test cpu); 2 threads." in md  # the CPU model named once
    plain = build_report(write_run(tmp_path / "plain", full_records(), {"protocol_notes": {"gpu": "x"}})).read_text()
    assert "**Timing:** batch_sizes [1, 32, 128], reference_batch_size 128, dtypes ['fp32'], channels_last" in plain
    plain_line = plain.split("**Protocol:**")[1].split("\n")[0]
    # the schema's defaults: full width, no BatchNorm, and our kaiming init (the paper's author used Caffe's)
    assert "Why this protocol" not in plain and "; model init kaiming; training" in plain_line
    assert "**Device:** cpu (test cpu); CPU Test CPU; 2 threads." in plain
    assert "test images" not in plain_line
    cut = write_run(tmp_path / "cut", full_records(), {"train": {"epochs": 3, "test_subset": 1000}})
    cut_line = build_report(cut).read_text().split("**Protocol:**")[1].split("\n")[0]
    assert cut_line.endswith(", test accuracy on the first 1,000 test images only.")


def test_paper_comparison_matches_head_and_dropout(tmp_path: Path, no_figures: None) -> None:
    recs = []
    for i, (head, do) in enumerate((("fc", 0.0), ("fc", 0.5), ("gap", 0.5), ("gap", 0.0))):
        for r in [profile_rec("cifar10", 2), *train_recs("cifar10", 2)]:
            if r["stage"] == "train":
                r["test_acc"] -= 0.01 * i
            recs.append(r | {"variant": f"nin_cifar-n1x1_2-{head}-do{do}-cifar10", "head": head, "dropout": do})
    grid = {"grid": {"model.head": ["fc", "gap"], "model.dropout": [0.0, 0.5]},
            "train": {"epochs": 3, "batch_size": 128, "augment": "none"}, "report": {"baseline": {"model.head": "gap"}}}
    md = build_report(write_run(tmp_path, recs, grid)).read_text()
    section = md.split("## Comparison with the NiN paper")[1].split("\n## ")[0]
    for paper_err, variant, i in (("11.59", "fc-do0.0", 0), ("10.88", "fc-do0.5", 1), ("10.41", "gap-do0.5", 2),
                                  ("14.51", "gap-do0.0", 3)):
        err = 1 - np.array(ACC[("cifar10", 2)]) + 0.01 * i
        assert f"{paper_err} % | nin_cifar-n1x1_2-{variant}-cifar10 | {err.mean() * 100:.2f} ± " in section
    assert "8.81" not in section.split("Ours (")[0] and "augmentation off" in section
    assert "head=gap, dropout=0.5 (baseline)" in md
    # records from before head_dropout: the FC row without dropout also lacks the paper's trunk dropout, and says so
    fc_row = next(line for line in section.splitlines() if "fc-do0.0" in line)
    assert fc_row.endswith("| only an FC variant without trunk dropout ran (the paper's row has it): its difference "
                           "mixes the head's effect with the trunk dropout's |")


def test_paper_comparison_of_table_5_as_the_paper_ran_it(tmp_path: Path, no_figures: None) -> None:
    """head.yaml's rows: FC and FC + dropout keep the trunk's dropout and differ in the head's; each paper row is
    matched exactly, and the GAP NiN with dropout stands once for Table 5's GAP row and section 4.2's."""
    rows = (("fc", 0.5, 0.0, "fc-do0.5-cifar10-hdo0"), ("fc", 0.5, 0.5, "fc-do0.5-cifar10"),
            ("gap", 0.5, 0.0, "gap-do0.5-cifar10"), ("gap", 0.0, 0.0, "gap-do0-cifar10"))
    recs = []
    for i, (head, do, hdo, variant) in enumerate(rows):
        for r in [profile_rec("cifar10", 2), *train_recs("cifar10", 2)]:
            if r["stage"] == "train":
                r["test_acc"] -= 0.01 * i
            recs.append(r | {"variant": f"nin_cifar-n1x1_2-{variant}", "head": head, "dropout": do, "head_dropout": hdo})
    config = {"grid": {}, "variants": [{"model.head": h, "model.dropout": d, "model.head_dropout": hd}
                                       for h, d, hd, _ in rows],
              "train": {"epochs": 3, "batch_size": 128, "augment": "none"},
              "report": {"baseline": {"model.head": "gap", "model.dropout": 0.5}}}
    md = build_report(write_run(tmp_path, recs, config)).read_text()
    table = [line for line in md.split("## Comparison with the NiN paper")[1].split("\n## ")[0].splitlines()
             if line.startswith(("| mlpconv", "| NIN"))]
    got = [(line.split(" | ")[2], line.split(" | ")[3]) for line in table]
    assert got == [("11.59 %", "nin_cifar-n1x1_2-fc-do0.5-cifar10-hdo0"), ("10.88 %", "nin_cifar-n1x1_2-fc-do0.5-cifar10"),
                   ("10.41 %", "nin_cifar-n1x1_2-gap-do0.5-cifar10"), ("14.51 %", "nin_cifar-n1x1_2-gap-do0-cifar10")]
    assert table[0].endswith("trunk dropout 0.5 (the paper's NiN: 0.5), none in the head |")
    assert table[1].endswith("dropout 0.5 in the head (after its hidden layer) |")
    assert "| no / no | +1.18 pp | -2.00 pp |" in table[0] and "| +0.47 pp | -1.00 pp |" in table[1]
    assert "head=gap, dropout=0.5, head_dropout=0.0 (baseline)" in md  # the variants' keys are the report's axes


def test_where_the_time_goes_from_layer_records(full_run: Path) -> None:
    root = full_run  # the module's full synthetic run holds layer-timing records too
    md = (root / "report.md").read_text()
    section = md.split("## Where the time goes")[1].split("\n## ")[0]
    # the variant with most 1x1 convs: n_1x1=2; per block 2 x 4M of 28M MACs = 28.6 %
    assert "In n_1x1=2 · cifar10 (batch 128, fp32) the layers without MACs" in section
    assert "the 1×1 convolutions hold 29 % of the MACs" in section
    # against n_1x1=0: 84M / 60M MACs; per block the two 1x1 convs add 2 x (2.75 + 5) ms of train step and their
    # ReLUs 2 x (1.65 + 1.5) ms: 46.5 of 65.4 ms (71 %) and 18.9 ms (29 %)
    assert "has 1.40× the MACs of n_1x1=0 · cifar10" in section
    assert "the 1×1 convolutions take 71 %, their ReLU passes 29 %" in section  # no BatchNorm layer here
    # layers' forward sum 48.61 ms against the timing stage's 54.4 ms at batch 128 (3000 img/s / 1.2 x 128/136)
    assert "| 48.6 | 54.4 | 0.89 | 10 % |" in section
    assert "**Memory bandwidth** (measured large copy, the roofline's slope): 10 GB/s." in md
    for fig in ("layer_time_vs_macs", "roofline"):
        assert (root / "figures" / f"{fig}.png").stat().st_size > 10_000


def test_paper_comparison_of_a_cpu_protocol_model_compares_differences(tmp_path: Path, no_figures: None) -> None:
    recs = []
    for i, (head, do) in enumerate((("fc", 0.0), ("fc", 0.5), ("gap", 0.5), ("gap", 0.0))):
        for r in [profile_rec("cifar10", 2), *train_recs("cifar10", 2)]:
            if r["stage"] == "train":
                r["test_acc"] -= 0.01 * i
            recs.append(r | {"variant": f"nin_cifar-n1x1_2-{head}-do{do}-cifar10-w0.25-bn", "head": head,
                             "dropout": do, "width": 0.25, "batchnorm": True})
    grid = {"grid": {"model.head": ["fc", "gap"], "model.dropout": [0.0, 0.5]},
            "train": {"epochs": 3, "batch_size": 128, "augment": "none"}, "report": {"baseline": {"model.head": "gap"}}}
    md = build_report(write_run(tmp_path, recs, grid)).read_text()
    section = md.split("## Comparison with the NiN paper")[1].split("\n## ")[0]
    assert "**Not the paper's model.**" in section
    # fc without dropout: paper 11.59 - 10.41 = +1.18 pp; ours 0 - 2 points of the planted offsets = -2.00 pp
    assert "| no / no | +1.18 pp | -2.00 pp |" in section
    assert "| no / no | +4.10 pp | +1.00 pp |" in section  # gap without dropout: 14.51 - 10.41; 3 - 2 points


def test_a_folder_measured_on_two_machines_says_which_measured_what(tmp_path: Path, no_figures: None) -> None:
    recs = full_records()
    one = build_report(write_run(tmp_path / "one", recs)).read_text()
    assert "**Machines:**" not in one
    trains = [r for r in recs if r["stage"] in ("train", "train_epoch")]
    for r in trains[: len(trains) // 2]:
        r["device_name"] = "AMD EPYC"
    md = build_report(write_run(tmp_path / "two", recs)).read_text()
    n_amd = sum(r["stage"] == "train" and r["device_name"] == "AMD EPYC" for r in recs)
    n_here = sum(r["stage"] == "train" for r in recs) - n_amd
    here = next(r["device_name"] for r in recs if r["stage"] == "timing")
    line = md.split("- **Machines:** ")[1].split("\n")[0]
    assert (n_amd, n_here) == (9, 9)  # the first half of the records: first in the folder, first named
    assert f"training runs on AMD EPYC ({n_amd}), {here} ({n_here}); timing on {here}; its last run ran on {here}." \
        in line


def test_a_manifest_without_ceilings_takes_them_from_the_timing_rows(tmp_path: Path, no_figures: None) -> None:
    """A run killed before its end, made before the manifest named its ceilings as soon as they were measured:
    the report reads the MFU ceiling (and what set it) from the timing rows, never prints it as missing."""
    recs = full_records()
    for r in recs:
        if r["stage"] == "timing":
            r.update(peak_tflops=0.25 if r["variant"] == vid("cifar10", 1) else 0.2, peak_source="conv_suite")
    root = write_run(tmp_path, recs)
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["peak_tflops"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    md = build_report(root).read_text()
    assert ("**MFU ceiling** (the best of large GEMMs, the suite's own convolutions and the ISA peak; no row "
            "exceeds it): fp32 0.25 TFLOP/s (the suite's own fastest convolution).") in md
