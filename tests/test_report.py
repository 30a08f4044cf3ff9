"""The report: table numbers equal an independent aggregation of the records; figures exist and are real images;
partial and failing runs degrade gracefully; the report runs with torch blocked from import."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy import stats

from nin_bench.report import build_report

SEEDS = [0, 1, 2]
DATASETS = ["cifar10", "fashion_mnist"]
N1X1 = [0, 1, 2]
# Known test accuracies per (dataset, n_1x1) and seed: n_1x1=2 is best on cifar10, n_1x1=1 on fashion_mnist.
ACC = {
    ("cifar10", 0): [0.801, 0.812, 0.795],
    ("cifar10", 1): [0.823, 0.830, 0.821],
    ("cifar10", 2): [0.842, 0.851, 0.839],
    ("fashion_mnist", 0): [0.901, 0.905, 0.899],
    ("fashion_mnist", 1): [0.915, 0.921, 0.912],
    ("fashion_mnist", 2): [0.911, 0.913, 0.910],
}
PARAMS = {0: 700_000, 1: 850_000, 2: 966_986}
MACS = {0: 150_000_000, 1: 190_000_000, 2: 222_486_528}
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FIGURES = ["accuracy_vs_cost", "throughput_vs_batch", "learning_curves", "size_by_block", "gap_maps_cifar10",
           "gap_maps_fashion_mnist"]


def vid(ds: str, n: int) -> str:
    """The runner's variant id."""
    return f"nin_cifar-n1x1_{n}-gap-do0.5-{ds}"


def common(ds: str, n: int, stage: str) -> dict:
    """Keys every record carries."""
    return {"variant": vid(ds, n), "stage": stage, "status": "ok", "error": None, "protocol": "cpu",
            "device": "cpu", "device_name": "test cpu", "time_utc": "2025-01-01T00:00:00Z", "preset": "nin_cifar",
            "n_1x1": n, "head": "gap", "dropout": 0.5, "width": 1.0, "batchnorm": False, "dataset": ds,
            "in_channels": 3 if ds == "cifar10" else 1, "input_size": 32 if ds == "cifar10" else 28,
            "num_classes": 10}


def profile_rec(ds: str, n: int) -> dict:
    """A profile record with per-block groups summing to the totals."""
    p, m = PARAMS[n], MACS[n]
    r = common(ds, n, "profile") | {"params": p, "params_trainable": p, "macs": m, "flops_fwd": 2 * m,
                                     "flops_fwd_bwd": 6 * m, "counts_agree": True}
    for g, frac in (("block1", 0.3), ("block2", 0.5), ("block3", 0.2)):
        r[f"params_{g}"], r[f"macs_{g}"] = p * frac, m * frac
    r["params_head"], r["macs_head"] = 0, 0
    return r


def timing_recs(ds: str, n: int) -> list[dict]:
    """Forward and train-step rows at batch sizes 1, 32, 128."""
    out = []
    for mode, speed in (("forward", 3000.0), ("train_step", 1000.0)):
        for bs in (1, 32, 128):
            ips = speed * bs / (bs + 8) / (1 + n / 10)
            out.append(common(ds, n, "timing") | {"mode": mode, "batch_size": bs, "dtype": "fp32",
                                                   "channels_last": False, "compile": False, "img_per_s": ips,
                                                   "ms_median": 1000 * bs / ips, "mfu": ips * 1e-5})
    return out


def train_recs(ds: str, n: int) -> list[dict]:
    """Per-seed train and train_epoch rows; seed 0 of the n=2 and n=1 variants saved maps."""
    out = []
    for i, seed in enumerate(SEEDS):
        acc = ACC[(ds, n)][i]
        for ep in range(1, 4):
            out.append(common(ds, n, "train_epoch") | {"seed": seed, "epoch": ep, "val_acc": acc - 0.1 / ep,
                                                        "train_loss": 1.5 / ep + 0.01 * seed})
        maps = f"maps/{vid(ds, n)}-seed{seed}.npz" if seed == 0 and n in (1, 2) else None
        out.append(common(ds, n, "train") | {"seed": seed, "epochs": 3, "batch_size": 128, "test_acc": acc,
                                              "train_time_s": 100.0 + n + seed, "loop_efficiency": 0.9,
                                              "maps_file": maps})
    return out


def write_maps(path: Path, channels: int) -> None:
    """A maps .npz in the contract's layout; the true class's map is the bright one."""
    rng = np.random.default_rng(0)
    maps = rng.random((10, 10, 8, 8), dtype=np.float32) * 0.3
    for k in range(10):
        maps[k, k] += np.outer(np.hanning(8), np.hanning(8)).astype(np.float32) * 2
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, maps=maps, images=rng.integers(0, 256, (10, channels, 32, 32), dtype=np.uint8),
             labels=np.arange(10), preds=np.array([0, 1, 2, 5, 4, 5, 6, 7, 8, 9]), classes=np.array(CLASSES))


def write_run(root: Path, records: list[dict], config_extra: dict | None = None) -> Path:
    """Write records.jsonl, config.resolved.yaml and manifest.json into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = {"name": "synthetic", "description": "Does adding 1x1 convs help?", "protocol": "cpu",
              "device": "cpu", "seeds": SEEDS, "stages": ["profile", "timing", "train"],
              "grid": {"model.n_1x1": N1X1, "data.dataset": DATASETS},
              "timing": {"batch_sizes": [1, 32, 128], "reference_batch_size": 128, "dtype": ["fp32"]},
              "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "schedule": "cosine", "augment": True},
              "report": {"baseline": {"model.n_1x1": 0}}} | (config_extra or {})
    (root / "config.resolved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    manifest = {"nin_bench_version": "0.1.0", "python_version": "3.11", "torch_version": "2.14.1",
                "device": "cpu", "device_name": "test cpu", "cpu_model": "Test CPU", "threads": 2,
                "git_commit": "abc123", "git_dirty": False, "date_utc": "2025-01-01T00:00:00Z", "protocol": "cpu",
                "peak_tflops": {"fp32": 0.2},
                "data": {ds: {"source": f"{ds} test copy", "sha256": "f" * 64} for ds in DATASETS}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def full_records() -> list[dict]:
    """Every stage for 3 variants x 2 data sets x 3 seeds."""
    out = []
    for ds in DATASETS:
        for n in N1X1:
            out += [profile_rec(ds, n), *timing_recs(ds, n), *train_recs(ds, n)]
    return out


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete synthetic results folder with its report built."""
    root = write_run(tmp_path_factory.mktemp("full"), full_records())
    for ds, ch in (("cifar10", 3), ("fashion_mnist", 1)):
        for n in (1, 2):
            write_maps(root / f"maps/{vid(ds, n)}-seed0.npz", ch)
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
    assert f"**cifar10:** n_1x1=2 has the best test accuracy" in answer
    assert f"{d.mean() * 100:+.2f} pp" in answer and f"[{lo * 100:+.2f}, {hi * 100:+.2f}] pp" in answer
    assert "**fashion_mnist:** n_1x1=1 has the best" in answer and "excludes 0" in answer
    assert "| n_1x1=2 | 967k | 222.5M | 445.0M |" in md and "n_1x1=0 (baseline)" in md
    assert "Comparison with the NiN paper" in md and "10.41 %" in md and "8.81 %" in md
    tex = (full_run / "tables.tex").read_text()
    assert tex.count(r"\toprule") == 2 and r"$\pm$" in tex


def test_every_figure_written_and_non_trivial(full_run: Path) -> None:
    md = (full_run / "report.md").read_text()
    for name in FIGURES:
        png = full_run / "figures" / f"{name}.png"
        assert png.stat().st_size > 5000, name
        assert (full_run / "figures" / f"{name}.svg").stat().st_size > 5000, name
        with Image.open(png) as im:
            rgb = np.asarray(im.convert("RGB"))
            assert im.format == "PNG" and (rgb != rgb[0, 0]).any(axis=-1).mean() > 0.01  # > 1 colour, not blank
        assert f"](figures/{name}.png)" in md
    assert md.count("\n*") >= len(FIGURES)  # a caption line under every figure
    html = (full_run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES) and 'src="figures/' not in html


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
    monkeypatch.setattr("nin_bench.report.render._figures", lambda *args: None)


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


def test_paper_comparison_matches_head_and_dropout(tmp_path: Path, no_figures: None) -> None:
    recs = []
    for i, (head, do) in enumerate((("fc", 0.0), ("fc", 0.5), ("gap", 0.5), ("gap", 0.0))):
        for r in [profile_rec("cifar10", 2), *train_recs("cifar10", 2)]:
            if r["stage"] == "train":
                r["test_acc"] -= 0.01 * i
            recs.append(r | {"variant": f"nin_cifar-n1x1_2-{head}-do{do}-cifar10", "head": head, "dropout": do})
    grid = {"grid": {"model.head": ["fc", "gap"], "model.dropout": [0.0, 0.5]},
            "train": {"epochs": 3, "batch_size": 128, "augment": False}, "report": {"baseline": {"model.head": "gap"}}}
    md = build_report(write_run(tmp_path, recs, grid)).read_text()
    section = md.split("## Comparison with the NiN paper")[1].split("\n## ")[0]
    for paper_err, variant, i in (("11.59", "fc-do0.0", 0), ("10.88", "fc-do0.5", 1), ("10.41", "gap-do0.5", 2),
                                  ("14.51", "gap-do0.0", 3)):
        err = 1 - np.array(ACC[("cifar10", 2)]) + 0.01 * i
        assert f"{paper_err} % | nin_cifar-n1x1_2-{variant}-cifar10 | {err.mean() * 100:.2f} ± " in section
    assert "8.81" not in section.split("Ours (")[0] and "augmentation off" in section
    assert "head=gap, dropout=0.5 (baseline)" in md


BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, Block())
    from pathlib import Path
    from nin_bench.report import build_report
    build_report(Path(sys.argv[1]))
    assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules)
""")


def test_report_runs_with_torch_blocked(full_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(full_run, copy)
    for f in ("report.md", "tables.csv", "tables.tex"):
        (copy / f).unlink()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", BLOCK_TORCH, str(copy)], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stderr
    for f in ("tables.csv", "tables.tex", "report.md"):
        assert (copy / f).read_text() == (full_run / f).read_text(), f
