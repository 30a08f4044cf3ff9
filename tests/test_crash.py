"""A training suite killed with SIGKILL at the instants its crash safety is about, and two runs on one folder.

The crash tests run the real CLI with one fault-injection point armed (`nin_bench.store.crash_points`: the
process SIGKILLs itself the n-th time it reaches an event, exactly as `kill -9` at that instant would), check
the folder is in the state that instant leaves, and go on: each test kills a run of one folder several times in a
row (each kill also tests how the run before it was resumed), then runs the same command unarmed and checks
every unit is recorded exactly once with the numbers of an uninterrupted run (the CPU is bit-reproducible at a
fixed thread count). One kill comes from outside, when the first checkpoint appears on disk. The reference run,
the outside kill and the two racing runs are real `python -m nin_bench` processes; the runs killed at a crash
point and the resumes are children forked from the test process (`forked_cli`), which skip the ~8 s of imports a
fresh interpreter pays and must still reproduce the reference's numbers. The instants:

    mid-epoch, between two checkpoints          train:step:<n>
    after an epoch's checkpoint of a seed       checkpoint:saved:<n>
    inside ResultsDir.append_records            append:journal_written, append:records_written (whole or torn)
    after the append, before the runner drops the unit's checkpoint     append:done:<n>
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import forked_cli
import numpy as np
import pytest
import torch

from nin_bench.store.crash_points import ENV as CRASH_AT
from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import record_key

pytestmark = [pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"),
                                 reason="set NIN_BENCH_DATA (CI: ../shared/data)"),
              # no test here checks a figure: a forked run's report (it inherits the stand-in) draws none
              pytest.mark.usefixtures("no_figures")]

SEEDS, EPOCHS, STEPS = (0, 1), 3, 8  # 512 training images at batch 64: 8 optimisation steps an epoch
SUITE = f"""
name: crash
seeds: {list(SEEDS)}
stages: [train]
threads: 1  # a fixed thread count: the CPU path is then bit-reproducible, run to run
model: {{width: 0.125, batchnorm: true, dropout: 0.0}}
data: {{dataset: fashion_mnist}}
grid: {{model.n_1x1: [0]}}
train: {{epochs: {EPOCHS}, subset: 512, val_size: 256, test_subset: 1000, batch_size: 64, eval_batch_size: 1000,
         lr: 0.1, schedule: cosine, warmup_epochs: 0, augment: none}}
"""
# what an epoch row and a run's final row must reproduce (times are not numbers a resume can repeat)
EPOCH_KEYS = ("lr", "train_loss", "train_acc", "val_loss", "val_acc", "train_eval_loss", "train_eval_acc")
FINAL_KEYS = ("epochs", "test_acc", "test_loss", "best_val_acc", "train_size", "val_size", "train_eval_size", "status")
# checkpoint files, not the temp file of a write a kill interrupted (`atomic.atomic_target`: ".<name>.tmp<pid>.pt")
CHECKPOINTS = "[!.]*.pt"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The test's environment for the CLI (its NIN_BENCH_DATA and NIN_BENCH_CACHE), with no crash point armed."""
    out = {k: v for k, v in os.environ.items() if k != CRASH_AT}
    out.setdefault("NIN_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
    return out


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("suite") / "crash.yaml"
    path.write_text(SUITE)
    return path


def _cmd(suite: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "nin_bench", "run", str(suite), "--stages", "train", "--out", str(out),
            "--device", "cpu", "--no-progress", "--no-figures"]


def _run(suite: Path, out: Path, env: dict[str, str], crash_at: str | None = None) -> subprocess.CompletedProcess:
    """The command in a child forked from this process (`forked_cli`: the CLI's `main` without ~8 s of imports per
    run; killed and resumed the same)."""
    env = {**env, CRASH_AT: crash_at} if crash_at else env
    return forked_cli.run(_cmd(suite, out)[3:], env, timeout=600)


def _outcome(rd: ResultsDir) -> dict[str, Any]:
    """The folder's numbers, after checking every unit is recorded exactly once and nothing is left over."""
    lines = rd.records.read_text().splitlines()
    records = rd.read_records()
    assert len(records) == len(lines)  # no torn line left behind
    assert len({record_key(r) for r in records}) == len(records)
    finals = Counter((r["variant"], r["seed"]) for r in records if r["stage"] == "train")
    epochs = Counter((r["variant"], r["seed"], r["epoch"]) for r in records if r["stage"] == "train_epoch")
    assert sorted(s for _, s in finals) == list(SEEDS) and set(finals.values()) == {1}, finals
    assert len(epochs) == len(SEEDS) * EPOCHS and set(epochs.values()) == {1}, epochs
    assert all(r["status"] == "ok" for r in records)
    assert not rd.journal.exists() and not list(rd.checkpoints.glob(CHECKPOINTS))
    out: dict[Any, Any] = {}
    for r in records:
        if r["stage"] == "train_epoch":
            out[r["seed"], r["epoch"]] = {k: r[k] for k in EPOCH_KEYS}
        else:
            with np.load(rd.map_file(r["maps_file"])) as maps:
                out[r["seed"], "maps"] = {k: maps[k].tolist() for k in maps.files}
            with np.load(rd.preds_file(r["preds_file"])) as preds:
                out[r["seed"], "preds"] = {k: preds[k].tolist() for k in preds.files}
            out[r["seed"], "final"] = {k: r[k] for k in FINAL_KEYS}
    return out


class Reference:
    """The uninterrupted run, in a real interpreter (the forked runs must give its numbers), started when the
    module's first test asks for it and waited for only when its numbers are first needed: it uses one core
    (`threads: 1`) while that test's killed runs use the other."""

    def __init__(self, suite: Path, out: Path, env: dict[str, str]) -> None:
        from nin_bench.suite.config import load_config, resolve_protocol
        from nin_bench.suite.variants import expand_grid

        self.rd = ResultsDir(out)
        self.variant = expand_grid(resolve_protocol(load_config(suite, []), cuda=False)[0])[0].id
        self.err = tempfile.TemporaryFile()  # a file, not a pipe: nobody reads it while the run goes on
        self.proc = subprocess.Popen(_cmd(suite, out), env=env, stdout=subprocess.DEVNULL, stderr=self.err)

    @functools.cached_property
    def numbers(self) -> dict[Any, Any]:
        self.proc.wait(timeout=600)
        self.err.seek(0)
        assert self.proc.returncode == 0, self.err.read()[-3000:].decode(errors="replace")
        assert self.rd.read_records()[0]["variant"] == self.variant  # the id these tests name checkpoints by
        return _outcome(self.rd)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.err.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, suite: Path, env: dict[str, str]) -> Iterator[Reference]:
    ref = Reference(suite, tmp_path_factory.mktemp("reference"), env)
    yield ref
    ref.stop()


@dataclass
class Left:
    """What a killed run left in its folder."""

    checkpoints: dict[int, dict]  # seed -> the loop state in its checkpoint
    recorded: list[int]  # seeds whose final train record is whole in records.jsonl
    journal: dict[str, Any] | None  # the append journal, when one is left
    records: bytes  # records.jsonl as it is

    @property
    def epochs(self) -> dict[int, int]:
        """seed -> epochs done in its checkpoint."""
        return {seed: state["epoch"] for seed, state in self.checkpoints.items()}


def _left(rd: ResultsDir, variant: str) -> Left:
    paths = {seed: rd.checkpoint(variant, seed) for seed in SEEDS if rd.checkpoint(variant, seed).exists()}
    assert sorted(rd.checkpoints.glob(CHECKPOINTS)) == sorted(paths.values())  # no other checkpoint
    states = {seed: torch.load(p, map_location="cpu", weights_only=True)["state"] for seed, p in paths.items()}
    for state in states.values():
        assert [row["epoch"] for row in state["history"]] == list(range(1, state["epoch"] + 1))
    journal = json.loads(rd.journal.read_text()) if rd.journal.exists() else None
    records = rd.records.read_bytes() if rd.records.exists() else b""
    return Left(states, sorted(r["seed"] for r in rd.read_records() if r["stage"] == "train"), journal, records)


def _kill_at(suite: Path, rd: ResultsDir, env: dict[str, str], variant: str, crash_at: str) -> Left:
    """Run with `crash_at` armed; it must die by SIGKILL. Returns what it left."""
    died = _run(suite, rd.root, env, crash_at)
    assert died.returncode == -signal.SIGKILL, (crash_at, died.returncode, died.stderr[-3000:])
    return _left(rd, variant)


def _resume(suite: Path, rd: ResultsDir, env: dict[str, str], reference: Reference,
            kept: list[tuple[int, dict]]) -> None:
    """Run the same command again, unarmed: it must finish with the reference numbers, every unit recorded once,
    and the `kept` (seed, epoch row) pairs of the killed runs' checkpoints recorded verbatim (times included:
    the resumed run carried on from the checkpoint rather than training those epochs again)."""
    done = _run(suite, rd.root, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _outcome(rd) == reference.numbers
    rows = {(r["seed"], r["epoch"]): r for r in rd.read_records() if r["stage"] == "train_epoch"}
    for seed, row in kept:
        assert {k: rows[seed, row["epoch"]][k] for k in row} == row


def _kept(left: Left) -> list[tuple[int, dict]]:
    return [(seed, row) for seed, state in left.checkpoints.items() for row in state["history"]]


def test_kill_9_mid_epoch_then_after_a_checkpoint_resumes_from_the_last_one(
        tmp_path: Path, suite: Path, env: dict[str, str], reference: Reference) -> None:
    """Killed mid-epoch (between two checkpoints), then just after the first checkpoint of the next seed."""
    rd, variant = ResultsDir(tmp_path / "out"), reference.variant
    mid = _kill_at(suite, rd, env, variant, f"train:step:{STEPS + 3}")  # the 3rd step of epoch 2 of seed 0
    assert mid.epochs == {0: 1} and mid.recorded == [] and mid.journal is None
    # counts are per process: this run resumes seed 0 after epoch 1 and checkpoints epochs 2 and 3, appends
    # seed 0's records (dropping its checkpoint), then checkpoints epoch 1 of seed 1
    after = _kill_at(suite, rd, env, variant, "checkpoint:saved:3")
    assert after.epochs == {1: 1} and after.recorded == [0] and after.journal is None
    _resume(suite, rd, env, reference, _kept(mid) + _kept(after))


def _kill_from_outside(suite: Path, rd: ResultsDir, env: dict[str, str], variant: str, seed: int) -> Left:
    """Start a run and SIGKILL it from here as soon as the seed's checkpoint file appears (a watcher polling it)."""
    watched = rd.checkpoint(variant, seed)
    proc = subprocess.Popen(_cmd(suite, rd.root), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and not watched.exists():
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        rc = proc.wait(timeout=600)
    assert rc == -signal.SIGKILL  # killed by us, before it could finish
    return _left(rd, variant)


def test_kill_9_from_outside_then_inside_record_appends_keeps_whole_batches_undoes_torn_ones(
        tmp_path: Path, suite: Path, env: dict[str, str], reference: Reference) -> None:
    """First a real outside kill -9 once seed 0's first checkpoint is on disk; then kills in each window of
    `ResultsDir.append_records` and between the append and the checkpoint's removal: journal written but no
    records; records written but journal not cleared; records torn mid-batch (a write the kernel had only half
    done: the file is cut inside the batch by hand); appended but checkpoint not yet removed."""
    rd, variant = ResultsDir(tmp_path / "out"), reference.variant
    outside = _kill_from_outside(suite, rd, env, variant, SEEDS[0])
    assert list(outside.epochs) == [0] and outside.recorded == [] and outside.journal is None
    done = outside.epochs[0]  # 1, unless the kill took a whole epoch to land
    # seed 0 resumes after that epoch, trains to its end, journals its records and dies
    journalled = _kill_at(suite, rd, env, variant, "append:journal_written:1")
    assert journalled.epochs == {0: EPOCHS} and journalled.recorded == []
    assert journalled.checkpoints[0]["history"][:done] == outside.checkpoints[0]["history"]
    assert journalled.journal["offset"] == len(journalled.records) == 0
    # the journal of no bytes is dropped, seed 0 resumes after its last epoch (only the test), appends, dies
    written = _kill_at(suite, rd, env, variant, "append:records_written:1")
    assert written.checkpoints == journalled.checkpoints and written.recorded == [0]
    assert written.journal["offset"] + written.journal["length"] == len(written.records)
    # the whole batch is kept (seed 0 not run again, its stale checkpoint removed); seed 1 appends and dies
    torn = _kill_at(suite, rd, env, variant, "append:records_written:1")
    assert torn.epochs == {1: EPOCHS} and torn.recorded == [0, 1] and torn.records.startswith(written.records)
    offset, length = torn.journal["offset"], torn.journal["length"]
    assert offset == len(written.records) and offset + length == len(torn.records)
    rd.records.write_bytes(torn.records[: offset + length // 2])
    assert _left(rd, variant).recorded == [0]
    # the torn half batch is cut off, seed 1 resumes after its last epoch, appends, dies before its checkpoint goes
    appended = _kill_at(suite, rd, env, variant, "append:done:1")
    assert appended.checkpoints == torn.checkpoints and appended.recorded == [0, 1] and appended.journal is None
    assert appended.records.startswith(written.records) and appended.records.endswith(b"\n")
    _resume(suite, rd, env, reference, _kept(outside) + _kept(journalled) + _kept(torn))
    assert rd.records.read_bytes() == appended.records  # nothing was left to run again


def test_two_runs_on_one_folder_one_runs_one_is_refused(tmp_path: Path, suite: Path, env: dict[str, str]) -> None:
    """Two runs started together: one takes the folder, the other is refused with one line while it runs."""
    out = tmp_path / "out"
    procs = [subprocess.Popen(_cmd(suite, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.01)
        refused = next(p for p in procs if p.returncode is not None)
        running = next(p for p in procs if p is not refused)
        # the run holds the lock for far longer than the other's start-up; once it has refused, stop it
        assert refused.returncode == 2 and running.poll() is None, [p.returncode for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
            p.wait(timeout=600)
    with procs[0].stderr, procs[1].stderr:
        lines = refused.stderr.read().strip().splitlines()
    assert len(lines) == 1 and "in use by `run`" in lines[0] and str(out) in lines[0], lines
