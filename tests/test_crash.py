"""A training suite killed with SIGKILL at random instants, and two runs started together on one folder:
nothing lost, nothing duplicated, the same numbers as an uninterrupted run, the second run refused."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from nin_bench.records import record_key
from nin_bench.results_dir import ResultsDir

pytestmark = pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"),
                                reason="set NIN_BENCH_DATA (CI: ../shared/data)")

SUITE = """
name: crash
seeds: [0, 1]
stages: [profile, timing, train]
model: {width: 0.125, batchnorm: true, dropout: 0.0}
data: {dataset: fashion_mnist}
grid: {model.n_1x1: [0, 1]}
timing: {batch_sizes: [2, 8], reference_batch_size: 8, warmup: 1, repeats: 3}
train: {epochs: 3, subset: 2000, val_size: 500, batch_size: 64, lr: 0.1, schedule: cosine, augment: none}
"""


def _cmd(suite, out):
    return [sys.executable, "-m", "nin_bench", "run", str(suite), "--out", str(out), "--device", "cpu",
            "--no-progress", "--set", "timing.threads=1"]


def _check_complete(out):
    lines = ResultsDir(out).records.read_text().splitlines()
    records = ResultsDir(out).read_records()
    assert len(records) == len(lines)  # no torn line left behind
    dupes = [k for k, n in Counter(record_key(r) for r in records).items() if n > 1]
    assert not dupes, dupes
    finals = Counter((r["stage"], r["variant"], r.get("seed")) for r in records if r["stage"] in ("profile", "train"))
    assert sorted(finals.values()) == [1] * 6  # 2 profiles + 4 training runs
    assert sum(r["stage"] == "train_epoch" for r in records) == 4 * 3
    assert all(r["status"] == "ok" for r in records)
    assert not list((out / ".cache" / "checkpoints").glob("*.pt"))
    return {(r["variant"], r["seed"]): r["test_acc"] for r in records if r["stage"] == "train"}


def test_kill_9_at_random_instants_loses_and_duplicates_nothing(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    clean = subprocess.run(_cmd(suite, tmp_path / "clean"), capture_output=True, text=True, timeout=600)
    assert clean.returncode == 0, clean.stderr[-2000:]
    expected = _check_complete(tmp_path / "clean")

    out = tmp_path / "killed"
    rng = random.Random(0)
    kills = 0
    for _ in range(6):
        proc = subprocess.Popen(_cmd(suite, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(3.0, 9.0))  # past the imports: into profiling, timing, training or appends
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    final = subprocess.run(_cmd(suite, out), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills >= 3
    assert _check_complete(out) == expected  # resumed runs end exactly as the uninterrupted ones (CPU)


def test_two_runs_on_one_folder_one_runs_one_is_refused(tmp_path):
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    # the whole suite (training included) holds the lock for well over the other's start-up time
    procs = [subprocess.Popen(_cmd(suite, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2).strip().splitlines()
    assert len(refused) == 1 and "in use by `run`" in refused[0] and str(out) in refused[0]
    records = ResultsDir(out).read_records()
    assert sum(r["stage"] == "profile" for r in records) == 2 and sum(r["stage"] == "train" for r in records) == 4
    assert len({record_key(r) for r in records}) == len(records)
