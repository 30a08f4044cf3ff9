"""Shared arms trained once: a training unit another folder of the results root trained identically is copied with
its provenance (and the files it names), not trained again; another training config, `--no-reuse` or a folder
another run is writing mean training here. Training is the fake of test_auto_seeds (chosen accuracies) except in
the one test that copies a real run's GAP maps."""
from __future__ import annotations

import dataclasses
import json
import os

import pytest
from test_auto_seeds import FIXED, RAW, fake, no_report  # noqa: F401  (the fixtures)

from nin_bench.cli import _parser
from nin_bench.run import unit as unit_mod
from nin_bench.run.runner import run_suite
from nin_bench.store.folder import ResultsDir
from nin_bench.store.schema import key_allowed
from nin_bench.suite.config import resolve_protocol, validate

A = {**RAW, "name": "a", "seeds": [0, 1], "grid": {"model.n_1x1": [0, 1]}, "train": {**RAW["train"], "lr": 0.1}}
# another suite sharing the n_1x1 = 1 arm; its grid names train.lr (A's value), so its variant ids differ
B = {**RAW, "name": "b", "seeds": [0, 1], "grid": {"model.n_1x1": [1, 2], "train.lr": [0.1]}}


def _run(raw, out, **kw):
    cfg = resolve_protocol(validate(raw), cuda=False)[0]
    logs = []
    run_suite(cfg, out, protocol="cpu", progress=False, log=logs.append, ceilings=FIXED, **kw)
    return logs


def _finals(out):
    return {(r["n_1x1"], r["seed"]): r for r in ResultsDir(out).read_records() if r["stage"] == "train"}


def test_an_identical_arm_is_copied_with_its_provenance_not_trained(fake, tmp_path):  # noqa: F811
    _run(A, tmp_path / "a", reuse=True)
    assert fake.calls == [(0, 0), (0, 1), (1, 0), (1, 1)]
    fake.calls = []
    logs = _run(B, tmp_path / "b", reuse=True)
    assert fake.calls == [(2, 0), (2, 1)]  # the shared arm is not trained again
    assert sum(line.startswith("reused nin_cifar-n1x1_1-gap-do0-fashion_mnist-w0.125-lr0.1 train s") and
               "in " + str(tmp_path / "a") in line for line in logs) == 2
    theirs, ours = _finals(tmp_path / "a"), _finals(tmp_path / "b")
    for seed in (0, 1):
        copied = ours[(1, seed)]
        assert copied["reused_from"] == "a" and copied["test_acc"] == theirs[(1, seed)]["test_acc"]
        assert copied["variant"] == "nin_cifar-n1x1_1-gap-do0-fashion_mnist-w0.125-lr0.1" and copied["lr"] == 0.1
        assert "reused_from" not in ours[(2, seed)]
    epochs = [r for r in ResultsDir(tmp_path / "b").read_records() if r["stage"] == "train_epoch"]
    assert sorted((r["n_1x1"], r.get("reused_from")) for r in epochs) == [(1, "a"), (1, "a"), (2, None), (2, None)]
    assert "**Reused:** 2 of 4 training runs" in (tmp_path / "b" / "report.md").read_text()

    fake.calls = []  # a copy of a copy names the folder it was trained in
    _run({**B, "name": "c"}, tmp_path / "c", reuse=True)
    assert fake.calls == [] and {r["reused_from"] for r in _finals(tmp_path / "c").values()} == {"a", "b"}


def test_another_training_config_no_reuse_or_a_folder_being_written_trains_here(fake, no_report,  # noqa: F811
                                                                                 tmp_path):
    _run(A, tmp_path / "a", reuse=True)
    fake.calls = []
    _run({**B, "grid": {"model.n_1x1": [1, 2], "train.lr": [0.2]}}, tmp_path / "lr", reuse=True)
    assert fake.calls == [(1, 0), (1, 1), (2, 0), (2, 1)]  # another lr: another arm
    fake.calls = []
    _run({**B, "name": "b2", "threads": 2}, tmp_path / "threads", reuse=True)
    assert len(fake.calls) == 4  # another thread count may sum in another order: not identical
    fake.calls = []
    _run({**B, "name": "b3"}, tmp_path / "off", reuse=False)  # `run --no-reuse`
    assert len(fake.calls) == 4
    assert _parser().parse_args(["run", "x.yaml", "--no-reuse"]).no_reuse
    assert not _parser().parse_args(["run", "x.yaml"]).no_reuse

    for folder in ("lr", "threads", "off"):  # only "a" holds the arm now
        ResultsDir(tmp_path / folder).records.unlink()
    fake.calls = []
    with ResultsDir(tmp_path / "a").lock("run"):  # another run is writing "a": it is not read
        logs = _run({**B, "name": "b4"}, tmp_path / "busy", reuse=True)
    assert len(fake.calls) == 4
    assert f"reuse: {tmp_path / 'a'} is being written by another run; not read" in logs


def test_a_run_another_cpu_trained_in_a_continued_folder_is_not_taken_for_ours(fake, no_report,  # noqa: F811
                                                                                tmp_path):
    """A folder continued on another CPU model holds runs of two machines: each run's identity is its own
    record's machine, not the manifest's (the last run's)."""
    _run(A, tmp_path / "a", reuse=True)
    rd = ResultsDir(tmp_path / "a")
    recs = [{**r, "device_name": "AMD EPYC"} if r.get("seed") == 0 else r for r in rd.read_records()]
    rd.records.write_text("".join(json.dumps(r) + "\n" for r in recs))
    manifest = json.loads(rd.manifest.read_text())  # its last run was on the other machine
    rd.manifest.write_text(json.dumps({**manifest, "device_name": "AMD EPYC"}))
    fake.calls = []
    _run(B, tmp_path / "b", reuse=True)
    # seed 0 of the shared arm was another machine's: trained here; seed 1 was this one's: copied
    assert fake.calls == [(1, 0), (2, 0), (2, 1)]


@pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"), reason="set NIN_BENCH_DATA (../shared/data)")
def test_a_real_run_is_copied_with_its_maps_file(fashion, no_report, tmp_path, monkeypatch):  # noqa: F811
    small = dataclasses.replace(fashion, train_x=fashion.train_x[:800], train_y=fashion.train_y[:800],
                                test_x=fashion.test_x[:200], test_y=fashion.test_y[:200])
    monkeypatch.setattr(unit_mod, "load_dataset", lambda *a, **k: small)
    one = {"seeds": [0], "train": {**A["train"], "batch_size": 100}}
    _run({**A, **one, "grid": {"model.n_1x1": [0]}}, tmp_path / "a", reuse=True)
    called = []
    monkeypatch.setattr("nin_bench.run.stages.run_train", lambda *a: called.append(a))
    _run({**B, **one, "grid": {"model.n_1x1": [0], "train.lr": [0.1]}}, tmp_path / "b", reuse=True)
    assert called == []
    theirs, ours = _finals(tmp_path / "a")[(0, 0)], _finals(tmp_path / "b")[(0, 0)]
    assert ours["maps_file"] == "maps/nin_cifar-n1x1_0-gap-do0-fashion_mnist-w0.125-lr0.1-seed0.npz"
    assert (tmp_path / "b" / ours["maps_file"]).read_bytes() == (tmp_path / "a" / theirs["maps_file"]).read_bytes()
    same = {k for k in theirs if k not in ("variant", "maps_file", "preds_file")}
    assert {k: ours[k] for k in same} == {k: theirs[k] for k in same} and ours["reused_from"] == "a"
    records = ResultsDir(tmp_path / "b").read_records()
    # every key in the schema, but `lr`: B's grid key, a column of every record of B (README)
    assert [(r["stage"], k) for r in records for k in r if not key_allowed(r["stage"], k) and k != "lr"] == []
