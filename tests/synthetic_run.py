"""A synthetic results folder (records, resolved config, manifest, maps) with known numbers, for the report's
tests and its benchmark."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

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
FIGURES = ["accuracy_forest", "accuracy_vs_cost", "throughput_vs_batch", "learning_curves", "size_by_block",
           "gap_maps_cifar10", "gap_maps_fashion_mnist", "layer_time_vs_macs", "roofline"]


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


# Per-round factors on each variant's median time (rounds 0..4): the median of each list is exactly 1, so a row's
# `ms_median` (the median of its per-round medians) is the formula's; rounds pair across variants.
ROUND_FACTORS = {0: [0.98, 1.01, 1.00, 1.03, 0.99], 1: [0.97, 1.02, 1.00, 1.04, 0.99],
                 2: [0.99, 1.00, 1.01, 1.02, 0.98]}
ROUND_SEED = 1234


def timing_recs(ds: str, n: int, rounds: bool = True) -> list[dict]:
    """Forward and train-step rows at batch sizes 1, 32, 128, each with its five `timing_round` rows (none and
    no round keys when `rounds` is False: a folder written before rounds)."""
    out = []
    for mode, speed in (("forward", 3000.0), ("train_step", 1000.0)):
        for bs in (1, 32, 128):
            ips = speed * bs / (bs + 8) / (1 + n / 10)
            ms = 1000 * bs / ips
            setting = {"mode": mode, "batch_size": bs, "dtype": "fp32", "channels_last": False, "compile": False}
            row = common(ds, n, "timing") | setting | {"img_per_s": ips, "ms_median": ms, "mfu": ips * 1e-5}
            if not rounds:
                out.append(row)
                continue
            per_round = [ms * f for f in ROUND_FACTORS[n]]
            out.append(row | {"rounds": len(per_round), "round_seed": ROUND_SEED, "round_ms_min": min(per_round),
                              "round_ms_max": max(per_round),
                              "round_spread_pct": 100 * (max(per_round) - min(per_round)) / ms})
            out += [common(ds, n, "timing_round") | setting | {
                "round": r, "round_pos": (r + n) % len(N1X1), "round_seed": ROUND_SEED, "ms_median": m,
                "img_per_s": 1000 * bs / m, "repeats": 10, "threads": 2} for r, m in enumerate(per_round)]
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


def layer_recs(ds: str, n: int) -> list[dict]:
    """Per-layer rows (forward, train step) of a 3-block NiN at batch 128, fp32: 1x1 convs and ReLUs take more time
    than their MACs; a rest row holds 10 % of the forward time."""
    rows = []

    def add(layer: str, block: str, kind: str, macs: int, fwd: float, bwd: float, nbytes: int) -> None:
        flops = 2 * macs * 128 if macs else nbytes // 8
        rows.append(common(ds, n, "layer_timing") | {
            "layer": layer, "block": block, "kind": kind, "batch_size": 128, "dtype": "fp32", "channels_last": False,
            "fwd_ms": fwd, "fwd_train_ms": fwd * 1.1, "bwd_ms": bwd, "macs": macs, "flops": flops,
            "bytes": nbytes, "intensity": flops / nbytes, "peak_tflops": 0.3, "mem_gb_per_s": 10.0})

    for b in (1, 2, 3):
        add(f"features.block{b}.conv1", f"block{b}", "conv_kxk", 20_000_000, 6.0, 12.0, 4_000_000)
        add(f"features.block{b}.relu1", f"block{b}", "relu", 0, 1.5, 1.5, 8_000_000)
        for k in range(2, n + 2):
            add(f"features.block{b}.conv{k}", f"block{b}", "conv_1x1", 4_000_000, 2.5, 5.0, 8_000_000)
            add(f"features.block{b}.relu{k}", f"block{b}", "relu", 0, 1.5, 1.5, 8_000_000)
        if b < 3:
            add(f"features.pool{b}", f"pool{b}", "maxpool", 0, 1.0, 1.0, 5_000_000)
    add("head.gap", "head", "gap", 0, 0.1, 0.1, 100_000)
    add("head.flatten", "head", "flatten", 0, 0.01, 0.0, 10_000)
    total = sum(r["fwd_ms"] for r in rows)
    rows.append(common(ds, n, "layer_timing") | {
        "layer": "rest", "block": "rest", "kind": "rest", "batch_size": 128, "dtype": "fp32", "channels_last": False,
        "fwd_ms": total / 9, "fwd_train_ms": 0.0, "bwd_ms": 3.0, "macs": 0, "flops": 0, "bytes": 0,
        "intensity": None, "note": "framework between layers"})
    e2e_fwd = sum(r["fwd_ms"] for r in rows)
    e2e_step = sum(r["fwd_train_ms"] + r["bwd_ms"] for r in rows)
    return [r | {"e2e_fwd_ms": e2e_fwd, "e2e_train_step_ms": e2e_step} for r in rows]


def write_maps(path: Path, channels: int) -> None:
    """A maps .npz in the contract's layout; the true class's map is the bright one."""
    rng = np.random.default_rng(0)
    maps = rng.random((10, 10, 8, 8), dtype=np.float32) * 0.3
    for k in range(10):
        maps[k, k] += np.outer(np.hanning(8), np.hanning(8)).astype(np.float32) * 2
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, maps=maps, images=rng.integers(0, 256, (10, channels, 32, 32), dtype=np.uint8),
             labels=np.arange(10), preds=np.array([0, 1, 2, 5, 4, 5, 6, 7, 8, 9]), classes=np.array(CLASSES))


def synthetic_config() -> dict:
    """The resolved config of the synthetic run, built through the real schema (as the runner writes it), so the
    report's tests read the keys a real run has (a test may still replace whole sections to test gaps)."""
    from nin_bench.suite.config import resolve_protocol, validate

    raw = {"name": "synthetic", "description": "Does adding 1x1 convs help?", "seeds": SEEDS,
           "stages": ["profile", "timing", "train"], "grid": {"model.n_1x1": N1X1, "data.dataset": DATASETS},
           "timing": {"batch_sizes": [1, 32, 128], "reference_batch_size": 128, "dtypes": ["fp32"]},
           "train": {"epochs": 3, "batch_size": 128, "lr": 0.05, "schedule": "cosine", "augment": "crop_flip"},
           "report": {"baseline": {"model.n_1x1": 0}}}
    cfg, protocol, _ = resolve_protocol(validate(raw), cuda=False, full=True)
    return {**cfg.model_dump(mode="json"), "protocol": "cpu"}


def write_run(root: Path, records: list[dict], config_extra: dict | None = None) -> Path:
    """Write records.jsonl, config.resolved.yaml and manifest.json into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = synthetic_config() | (config_extra or {})
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
            out += [profile_rec(ds, n), *timing_recs(ds, n), *layer_recs(ds, n), *train_recs(ds, n)]
    return out


def make_full_run(root: Path) -> Path:
    """Write a complete synthetic results folder (3 variants x 2 data sets x 3 seeds, with maps) into `root`."""
    write_run(root, full_records())
    for ds, ch in (("cifar10", 3), ("fashion_mnist", 1)):
        for n in (1, 2):
            write_maps(root / f"maps/{vid(ds, n)}-seed0.npz", ch)
    return root


# ---- a two-factor grid and stored predictions, for the report's comparisons (tests/test_comparisons.py) ----------
# head x dropout test accuracies per seed: GAP beats FC by 8, 6, 8 pp at dropout 0.5 and by 1, 0, 2 pp without
# (unresolved: the two heads without dropout cannot be told apart; every other pair is, Holm-adjusted).
HEAD_ACC = {
    ("gap", 0.5): [0.58, 0.61, 0.60],
    ("gap", 0.0): [0.65, 0.66, 0.68],
    ("fc", 0.5): [0.50, 0.55, 0.52],
    ("fc", 0.0): [0.64, 0.66, 0.66],
}


def head_vid(head: str, dropout: float) -> str:
    """The variant id of a head x dropout cell."""
    return f"nin_cifar-n1x1_2-{head}-do{dropout:g}-cifar10"


def head_grid_records(acc: dict[tuple[str, float], list[float]] | None = None) -> list[dict]:
    """Train records of a 2 x 2 head x dropout grid on CIFAR-10 (one per seed)."""
    out = []
    for (head, dropout), accs in (acc or HEAD_ACC).items():
        for seed, a in enumerate(accs):
            out.append(common("cifar10", 2, "train") | {
                "variant": head_vid(head, dropout), "head": head, "dropout": dropout, "seed": seed, "epochs": 3,
                "batch_size": 128, "test_acc": a, "train_time_s": 100.0})
    return out


def make_head_grid(root: Path, acc: dict[tuple[str, float], list[float]] | None = None) -> Path:
    """A results folder of the head x dropout grid (baseline: FC without dropout), training records only."""
    grid = {"model.head": ["gap", "fc"], "model.dropout": [0.5, 0.0]}
    return write_run(root, head_grid_records(acc), {"grid": grid, "stages": ["train"], "report": {
        "baseline": {"model.head": "fc", "model.dropout": 0.0}, "equivalence_margin_pp": 1.0}})


def write_preds(root: Path, variant: str, seed: int, correct: np.ndarray) -> str:
    """Store a run's test-set predictions (uint8 `pred`, `label`, test-set order) that are right where `correct`
    is; returns the path relative to `root`, as a train record's `preds_file` names it."""
    rel = f"preds/{variant}-seed{seed}.npz"
    label = (np.arange(len(correct)) % 10).astype(np.uint8)
    pred = np.where(correct, label, (label + 1) % 10).astype(np.uint8)
    (root / "preds").mkdir(parents=True, exist_ok=True)
    np.savez(root / rel, pred=pred, label=label)
    return rel


# ---- a 16-variant grid (n_1x1 0..3 x head x dropout, CIFAR-10) with every stage and `train_eval_acc`, for the
# report's figures as the grid grows (tests/test_figures.py) ----------------------------------------------------
GRID16 = {"model.n_1x1": [0, 1, 2, 3], "model.head": ["gap", "fc"], "model.dropout": [0.5, 0.0]}
GRID16_BASELINE = {"model.n_1x1": 2, "model.head": "gap", "model.dropout": 0.5}


def grid16_vid(n: int, head: str, dropout: float) -> str:
    """The variant id of a cell of the 16-variant grid."""
    return f"nin_cifar-n1x1_{n}-{head}-do{dropout:g}-cifar10"


def grid16_acc(n: int, head: str, dropout: float, seed: int) -> float:
    """Test accuracy of a cell and seed: +2 pp per 1x1 conv, GAP +3 pp, dropout +1 pp, FC with dropout -2 pp more
    (an interaction), and a seed effect shared by every cell (what pairing removes)."""
    fc_do = head == "fc" and dropout > 0
    return 0.60 + 0.02 * n + (0.03 if head == "gap" else 0) + (0.01 if dropout else 0) - (0.02 if fc_do else 0) \
        + 0.004 * (seed - 1) * (1 + n % 2)


def grid16_records() -> list[dict]:
    """Profile, timing (no rounds), layer timing, train and train_epoch (with `train_eval_acc`) records of the
    16 cells, three seeds, four epochs."""
    out = []
    for n in GRID16["model.n_1x1"]:
        for head in GRID16["model.head"]:
            for dropout in GRID16["model.dropout"]:
                tag = {"variant": grid16_vid(n, head, dropout), "head": head, "dropout": dropout}
                p, m = 700_000 + 130_000 * n + (2_100_000 if head == "fc" else 0), 150_000_000 + 25_000_000 * n
                prof = common("cifar10", n, "profile") | {"params": p, "params_trainable": p, "macs": m,
                                                          "flops_fwd": 2 * m, "flops_fwd_bwd": 6 * m}
                for g, frac in (("block1", 0.3), ("block2", 0.5), ("block3", 0.2)):
                    prof[f"params_{g}"], prof[f"macs_{g}"] = p * frac, m * frac
                out.append(prof | tag)
                out += [r | tag for r in timing_recs("cifar10", n, rounds=False) + layer_recs("cifar10", n)]
                gap = 0.10 if dropout == 0 else 0.04
                for seed in SEEDS:
                    acc = grid16_acc(n, head, dropout, seed)
                    for ep in range(1, 5):
                        val = acc - 0.08 / ep
                        out.append(common("cifar10", n, "train_epoch") | tag | {
                            "seed": seed, "epoch": ep, "val_acc": val, "train_eval_acc": val + gap * ep / 4,
                            "train_loss": 1.5 / ep})
                    out.append(common("cifar10", n, "train") | tag | {
                        "seed": seed, "epochs": 4, "batch_size": 128, "test_acc": acc, "train_time_s": 100.0})
    return out


def make_grid16_run(root: Path) -> Path:
    """A results folder of the 16-variant grid (baseline: n_1x1=2, GAP, dropout 0.5)."""
    return write_run(root, grid16_records(), {"grid": GRID16, "stages": ["profile", "timing", "train"],
                                              "report": {"baseline": GRID16_BASELINE}})
