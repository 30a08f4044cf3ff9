"""`seeds: auto`: the config's shapes and errors, seeds added while a declared comparison is unresolved (up to the
maximum), an early stop once resolved, and a kill between seeds resumed from the records alone. The training stage
is replaced by one that returns chosen test accuracies, so each run takes well under a second."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from nin_bench.data.datasets import Dataset
from nin_bench.errors import ConfigError
from nin_bench.measure.ceilings import Ceilings
from nin_bench.run import runner, stages
from nin_bench.run import unit as unit_mod
from nin_bench.run.runner import fingerprint, run_suite
from nin_bench.run.unit import UnitResult, base_record
from nin_bench.store.folder import ResultsDir
from nin_bench.suite.config import config_of_folder, resolve_protocol, validate

FIXED = Ceilings("cpu", {"fp32": 1e11}, 1e10)
ROOT = Path(__file__).parents[1]
RAW = {"name": "auto", "stages": ["train"], "threads": 1, "model": {"width": 0.125, "dropout": 0.0},
       "data": {"dataset": "fashion_mnist"}, "grid": {"model.n_1x1": [0, 1, 2]},
       "train": {"epochs": 1, "subset": 600, "val_size": 200}, "seeds": {"auto": {"min": 3, "max": 5}}}
# per-seed test accuracy of n_1x1 = 0 (the baseline: the first grid point)
BASE = [0.80, 0.82, 0.79, 0.81, 0.80, 0.83]
# n1 − n0 per seed: at 3 seeds the paired 95 % CI is [−1.97, +7.97] pp, at 4 it is [+0.40, +5.60] pp (resolved);
# n2 equals n0 on every seed: equivalent within the 1 pp margin from 2 seeds on
RESOLVING = {0: [0.0] * 6, 1: [0.03, 0.01, 0.05, 0.03, 0.03, 0.03], 2: [0.0] * 6}
# n1 − n0 and n2 − n0 swing by ±6 pp from seed to seed: never resolved, never equivalent
SWINGING = {0: [0.0] * 6, 1: [0.06 * (-1) ** s for s in range(6)], 2: [-0.06 * (-1) ** s for s in range(6)]}


def _cfg(**over):
    return resolve_protocol(validate({**RAW, **over}), cuda=False)[0]


class Kill(KeyboardInterrupt):
    """What a kill -9 leaves: the run stops between units, nothing of the unit in progress is recorded."""


@pytest.fixture
def fake(monkeypatch):
    """Training returns the accuracies of `fake.table`; `fake.calls` lists (n_1x1, seed); `fake.kill_at` raises
    Kill instead of the n-th call."""
    state = type("Fake", (), {"calls": [], "table": RESOLVING, "kill_at": None})()
    data = Dataset(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.int64),
                   torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64),
                   [str(i) for i in range(10)], "fake", "fake", "ab" * 32, "fashion_mnist")
    monkeypatch.setattr(unit_mod, "load_dataset", lambda *a, **k: data)

    def train(variant, seed, ctx, timing_rows):
        if state.kill_at is not None and len(state.calls) == state.kill_at:
            raise Kill()
        n = variant.config.model.n_1x1
        state.calls.append((n, seed))
        acc = BASE[seed] + state.table[n][seed]
        base = {**base_record(variant, ctx, "train"), "seed": seed}
        epoch = {"epoch": 1, "train_loss": 1.0, "train_acc": acc, "val_loss": 1.0, "val_acc": acc, "lr": 0.1,
                 "epoch_time_s": 1.0, "img_per_s": 600.0}
        return UnitResult([{**base, "stage": "train_epoch", **epoch},
                           {**base, "test_acc": acc, "test_loss": 1.0, "best_val_acc": acc, "train_time_s": 1.0,
                            "data_source": data.source, "data_sha256": data.source_sha256, "maps_file": None}])

    monkeypatch.setattr(stages, "run_train", train)
    return state


@pytest.fixture
def no_report(monkeypatch):
    """Skip summary and report (2-3 s a run) in tests that read only records and manifest."""
    monkeypatch.setattr(runner, "finish", lambda rd, log, figures=True: rd.report_md)


def _run(cfg, out, **kw):
    logs = []
    run_suite(cfg, out, protocol="cpu", progress=False, log=logs.append, ceilings=FIXED, **kw)
    return logs


def _manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_seeds_auto_shapes_errors_quick_and_fingerprint():
    auto = validate({**RAW, "seeds": "auto"})
    assert (auto.seeds.auto.min, auto.seeds.auto.max, auto.seeds.auto.target) == (3, 8, "baseline")
    assert auto.train_seeds() == [0, 1, 2]
    for seeds, msg in [({"auto": {"min": 1}}, "seeds: auto.min: Input should be greater than or equal to 2"),
                       ({"auto": {"min": 4, "max": 3}}, "seeds: auto: max (3) must be >= min (4)"),
                       ({"auto": {"target": "all"}}, "seeds: auto.target: Input should be 'baseline' or 'pairs'"),
                       ({"auto": {"mn": 3}}, "seeds: unknown key 'auto.mn'; allowed here: min, max, target"),
                       ([0, 0], "seeds: seeds must be a non-empty list of distinct non-negative integers")]:
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            validate({**RAW, "seeds": seeds})
    assert resolve_protocol(auto, cuda=False, quick=True)[0].seeds == [0]  # --quick: one fixed seed
    cfg = _cfg()  # the resolved config re-parses to the same fingerprint
    again = config_of_folder(yaml.safe_load(yaml.safe_dump({**cfg.model_dump(mode="json"), "protocol": "cpu"})))
    assert again[0].seeds == cfg.seeds and fingerprint(*again) == fingerprint(cfg, "cpu")


def test_committed_folders_keep_their_seed_lists_and_auto_settings():
    """A folder made with a seed list reads back as that list (never as `auto`), one made with `seeds: auto`
    (results/head) as the same auto settings."""
    for path in sorted((ROOT / "results").glob("*/config.resolved.yaml")):
        raw = yaml.safe_load(path.read_text())
        parsed = config_of_folder(raw)
        assert parsed is not None, path
        assert parsed[0].model_dump(mode="json")["seeds"] == raw["seeds"], path
        if isinstance(raw["seeds"], list):
            assert parsed[0].seeds == raw["seeds"], path


def test_seeds_are_added_while_unresolved_and_stop_at_the_maximum(fake, tmp_path):
    fake.table = SWINGING
    logs = _run(_cfg(), tmp_path)
    assert fake.calls == [(n, s) for s in range(5) for n in range(3)]  # seed-major, one seed level at a time
    assert _manifest(tmp_path)["seeds_auto"] == {
        "min": 3, "max": 5, "target": "baseline", "seeds": 5, "stopped": "max reached",
        "unresolved": ["nin_cifar-n1x1_1-gap-do0-fashion_mnist-w0.125 − nin_cifar-n1x1_0-gap-do0-fashion_mnist-w0.125",
                       "nin_cifar-n1x1_2-gap-do0-fashion_mnist-w0.125 − nin_cifar-n1x1_0-gap-do0-fashion_mnist-w0.125"]}
    assert "seeds: auto stopped at 5 seeds: max reached" in logs
    report = (tmp_path / "report.md").read_text()
    assert "auto, 3 to 5 per variant" in report and "stopped: max reached" in report


def test_seeds_stop_once_every_comparison_is_resolved(fake, no_report, tmp_path):
    _run(_cfg(), tmp_path)
    assert fake.calls == [(n, s) for s in range(4) for n in range(3)]  # resolved at 4 seeds, max 5
    assert _manifest(tmp_path)["seeds_auto"]["stopped"] == "all resolved"
    assert _manifest(tmp_path)["seeds_auto"]["seeds"] == 4


def test_target_pairs_needs_what_the_holm_adjusted_table_resolves(fake, no_report, tmp_path):
    """Every pair, Holm-adjusted over the three: n1 − n0 (p 0.035 at 4 seeds) is resolved only at 5."""
    _run(_cfg(seeds={"auto": {"min": 3, "max": 6, "target": "pairs"}}), tmp_path)
    assert fake.calls == [(n, s) for s in range(5) for n in range(3)]
    assert _manifest(tmp_path)["seeds_auto"]["stopped"] == "all resolved"


def test_a_run_killed_between_seeds_continues_from_its_records(fake, no_report, tmp_path):
    fake.table, fake.kill_at = SWINGING, 12  # killed as seed 4 starts: seeds 0-3 recorded
    with pytest.raises(Kill):
        _run(_cfg(), tmp_path)
    assert len(fake.calls) == 12
    shutil.rmtree(tmp_path / ".cache")  # no ignored state takes part in the decisions
    fake.kill_at, fake.calls = None, []
    logs = _run(_cfg(), tmp_path)
    assert "3 units to run" in logs[0] and "seeds 0-4 wanted now" in logs[1]
    assert fake.calls == [(0, 4), (1, 4), (2, 4)]
    assert _manifest(tmp_path)["seeds_auto"]["stopped"] == "max reached"
    finals = [r for r in ResultsDir(tmp_path).read_records() if r["stage"] == "train"]
    assert sorted((r["n_1x1"], r["seed"]) for r in finals) == [(n, s) for n in range(3) for s in range(5)]

    manifest = _manifest(tmp_path)  # a run killed before its last manifest write: the next one puts it back
    (tmp_path / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "seeds_auto"}))
    fake.calls = []
    assert "0 units to run" in _run(_cfg(), tmp_path)[0] and fake.calls == []
    assert _manifest(tmp_path) == manifest
