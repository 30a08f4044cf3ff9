"""The Ray executor on a real local Ray instance (no mocks): same results as the local executor, a killed driver
resumed, every unit recorded once; without Ray, one line and exit 2. A killed worker (a whole node) retried and
resumed, and joining a running cluster, are tests/test_ray_cluster.py's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

ray = pytest.importorskip("ray")

from nin_bench.measure.ceilings import Ceilings  # noqa: E402
from nin_bench.run.ray_executor import unit_resources  # noqa: E402
from nin_bench.run.runner import run_suite  # noqa: E402
from nin_bench.run.stages import Unit  # noqa: E402
from nin_bench.store.folder import ResultsDir  # noqa: E402
from nin_bench.store.records import record_key  # noqa: E402
from nin_bench.suite.config import resolve_protocol, validate  # noqa: E402
from nin_bench.suite.variants import expand_grid  # noqa: E402

needs_data = pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"), reason="set NIN_BENCH_DATA (CI: ../shared/data)")

RAW = {"name": "ray", "seeds": [0, 1], "stages": ["profile", "timing", "train"],
       "model": {"width": 0.125, "batchnorm": True, "dropout": 0.0}, "data": {"dataset": "fashion_mnist"},
       "grid": {"model.n_1x1": [1]},
       "timing": {"batch_sizes": [2, 8], "reference_batch_size": 8, "warmup": 1, "repeats": 3}, "threads": 1,
       "train": {"epochs": 2, "subset": 800, "val_size": 200, "batch_size": 64, "lr": 0.1, "schedule": "cosine",
                 "warmup_epochs": 0.0, "augment": "none"}}


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray instance for the module (2 CPUs: two 1-thread units side by side); yields its address, which
    a driver in another process joins with --ray-address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def local_accuracies(tmp_path_factory):
    """The local executor's test accuracies for RAW's training (both tests here compare Ray's to them)."""
    cfg, protocol, _ = resolve_protocol(validate({**RAW, "stages": ["train"]}), cuda=False)
    out = tmp_path_factory.mktemp("local")
    run_suite(cfg, out, protocol=protocol, progress=False, log=lambda m: None, figures=False)
    return _accuracies(out)


def _accuracies(out):
    records = ResultsDir(out).read_records()
    assert len({record_key(r) for r in records}) == len(records)  # every record once
    return {(r["variant"], r["seed"]): r["test_acc"] for r in records if r["stage"] == "train"}


@needs_data
def test_ray_gives_the_local_executors_accuracies(ray_session, local_accuracies, tmp_path, no_figures):
    cfg, protocol, _ = resolve_protocol(validate(RAW), cuda=False)
    logs = []
    fixed = Ceilings("cpu", {"fp32": 1e11}, 1e10)  # the accuracies are compared, not the MFU
    run_suite(cfg, tmp_path / "ray", protocol=protocol, progress=False, log=logs.append, executor="ray",
              ceilings=fixed)
    remote = _accuracies(tmp_path / "ray")
    assert len(local_accuracies) == 2 and remote == local_accuracies  # same seeds, same threads: bit-identical
    assert (tmp_path / "ray" / "report.md").exists()
    assert "4 units to run" in next(m for m in logs if "ray executor" in m)  # profile, timing, two seeds
    timing = [r for r in ResultsDir(tmp_path / "ray").read_records() if r["stage"] == "timing"]
    assert timing and {r["peak_tflops"] for r in timing} == {0.1}  # the driver's ceilings reached the worker


def test_resources_per_unit():
    variant = expand_grid(resolve_protocol(validate(RAW), cuda=False)[0])[0]
    assert unit_resources(Unit(variant, "train", 0), "cuda", 4) == {"num_cpus": 1, "num_gpus": 1}
    assert unit_resources(Unit(variant, "timing"), "cuda", 4) == {"num_cpus": 1, "num_gpus": 1}
    assert unit_resources(Unit(variant, "timing"), "cpu", 2) == {"num_cpus": 2, "num_gpus": 0}
    assert unit_resources(Unit(variant, "profile"), "cpu", 2) == {"num_cpus": 1, "num_gpus": 0}


SUITE = """
name: ray
seeds: [0, 1]
stages: [profile, train]   # what these tests kill and resume is training (no timing: no ceilings to measure)
threads: 1
model: {width: 0.125, batchnorm: true, dropout: 0.0}
data: {dataset: fashion_mnist}
grid: {model.n_1x1: [1]}
timing: {batch_sizes: [2, 8], reference_batch_size: 8, warmup: 1, repeats: 3}
train: {epochs: 2, subset: 800, val_size: 200, batch_size: 64, lr: 0.1, schedule: cosine, warmup_epochs: 0,
        augment: none}   # RAW's training: the resumed run must give the local executor's accuracies
"""


def _cmd(suite, out, *extra):
    return [sys.executable, "-m", "nin_bench", "run", str(suite), "--out", str(out), "--device", "cpu",
            "--no-progress", "--no-figures", "--executor", "ray", *extra]


def _check_once(out):
    records = ResultsDir(out).read_records()
    assert len({record_key(r) for r in records}) == len(records)
    finals = Counter((r["variant"], r.get("seed")) for r in records if r["stage"] == "train")
    assert sorted(finals.values()) == [1] * 2 and all(r["status"] == "ok" for r in records)


@needs_data
def test_a_killed_driver_is_resumed_without_rerunning_finished_units(ray_session, local_accuracies, tmp_path):
    """Killed while running on a local instance of its own (the default); resumed by a driver joining a running
    instance (this module's), to the local executor's accuracies."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(suite, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        recorded = {r["stage"] for r in ResultsDir(out).read_records()}
        if "train" in recorded:  # at least one training unit finished
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = ResultsDir(out).read_records()
    finished = {(r["variant"], r["stage"], r.get("seed")) for r in before if r["stage"] in ("profile", "train")}
    assert finished
    again = subprocess.run(_cmd(suite, out, "--ray-address", ray_session), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    after = ResultsDir(out).read_records()
    assert after[:len(before)] == before  # the folder only grew
    rerun = {(r["variant"], r["stage"], r.get("seed")) for r in after[len(before):]} & finished
    assert not rerun
    _check_once(out)
    assert _accuracies(out) == local_accuracies


def test_without_ray_the_executor_exits_2_with_one_line(tmp_path, monkeypatch, capfd):
    """In this process (the refusal comes before any import of Ray): a Python where Ray is not installed, as
    find_spec sees it."""
    import importlib.util

    from nin_bench.cli import main

    (tmp_path / "suite.yaml").write_text("name: t\nmodel: {width: 0.125}\ngrid: {model.n_1x1: [0]}\n")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a))
    code = main(["run", str(tmp_path / "suite.yaml"), "--executor", "ray", "--out", str(tmp_path / "out")])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and "pip install" in lines[0] and "[ray]" in lines[0]
    assert not (tmp_path / "out").exists()
