"""The results folder's owner: crash-safe appends (torn lines, interrupted batches), the lock, atomic writes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from nin_bench.store.atomic import write_atomic
from nin_bench.store.folder import FolderBusy, ResultsDir

REC = [{"variant": "v", "stage": "profile", "status": "ok", "params": 1}]


def _lines(rd: ResultsDir) -> list[str]:
    return rd.records.read_text().splitlines()


def test_a_torn_last_line_is_cut_before_the_next_append(tmp_path):
    rd = ResultsDir(tmp_path)
    rd.append_records([{"variant": "a", "stage": "profile", "status": "ok"}])
    with open(rd.records, "ab") as fh:  # a crash mid-append: half a record, no newline
        fh.write(b'{"variant": "b", "stage": "trai')
    logs = []
    rd.recover(logs.append)
    rd.append_records([{"variant": "c", "stage": "profile", "status": "ok"}])
    assert [r["variant"] for r in rd.read_records()] == ["a", "c"]
    assert len(_lines(rd)) == 2 and len(logs) == 1 and "torn last line" in logs[0]
    rd.recover(logs.append)  # nothing left to repair: says nothing more
    assert len(logs) == 1


def test_a_whole_record_missing_only_its_newline_is_kept(tmp_path):
    rd = ResultsDir(tmp_path)
    rd.records.write_text(json.dumps({"variant": "a", "stage": "profile"}))
    rd.recover(lambda m: None)
    rd.append_records(REC)
    assert [r["variant"] for r in rd.read_records()] == ["a", "v"]


@pytest.mark.parametrize("written", [0, 1, 60, "all-but-newline"])
def test_an_interrupted_batch_is_undone_whole(tmp_path, written):
    rd = ResultsDir(tmp_path)
    rd.append_records(REC)
    batch = "".join(json.dumps({"variant": "v", "stage": "train_epoch", "epoch": e}) + "\n" for e in (1, 2))
    batch += json.dumps({"variant": "v", "stage": "train", "seed": 0}) + "\n"
    data = batch.encode()
    cut = len(data) - 1 if written == "all-but-newline" else written
    offset = rd.records.stat().st_size
    # what append_records leaves when killed after the journal and `cut` bytes of the batch
    import hashlib

    write_atomic(rd.journal, json.dumps({"offset": offset, "length": len(data),
                                         "sha256": hashlib.sha256(data).hexdigest()}))
    with open(rd.records, "ab") as fh:
        fh.write(data[:cut])
    logs = []
    rd.recover(logs.append)
    assert rd.read_records() == REC and not rd.journal.exists()  # none of the batch: its unit runs again
    assert len(logs) == (1 if cut else 0)


def test_a_batch_that_reached_the_file_whole_is_kept_even_if_its_journal_survived(tmp_path):
    rd = ResultsDir(tmp_path)
    rd.append_records(REC)
    journal = {"offset": 0, "length": rd.records.stat().st_size}
    import hashlib

    journal["sha256"] = hashlib.sha256(rd.records.read_bytes()).hexdigest()
    write_atomic(rd.journal, json.dumps(journal))  # killed after the fsync, before the journal was removed
    rd.recover(lambda m: None)
    assert rd.read_records() == REC and not rd.journal.exists()


_HOLD = """
import sys, time
from nin_bench.store.folder import ResultsDir
with ResultsDir(sys.argv[1]).lock("run"):
    print("locked", flush=True)
    time.sleep(60)
"""


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_lock(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(FolderBusy, match=rf"in use by `run` \(pid {proc.pid} on .+, since .+\)"):
            with ResultsDir(tmp_path).lock("report"):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with ResultsDir(tmp_path).lock("run"):  # the kernel dropped the dead holder's lock
        pass


def test_refused_in_the_window_before_the_holder_writes_its_line_still_names_it(tmp_path):
    # the holder has the flock but its line is not written yet; the lock file still holds a dead holder's line
    import fcntl
    import threading

    rd = ResultsDir(tmp_path)
    rd.cache.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    rd.lock_file.write_text(json.dumps({"pid": int(dead), "host": os.uname().nodename, "command": "run",
                                        "since_utc": "2000-01-01T00:00:00Z"}))
    fd = os.open(rd.lock_file, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    line = json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "command": "run",
                       "since_utc": "2026-01-01T00:00:00Z"}).encode()
    writer = threading.Timer(0.3, lambda: (os.ftruncate(fd, 0), os.pwrite(fd, line, 0)))
    writer.start()
    try:
        with pytest.raises(FolderBusy, match=rf"in use by `run` \(pid {os.getpid()} on .+, since 2026-01-01"):
            with ResultsDir(tmp_path).lock("report"):
                pass
    finally:
        writer.join()
        os.close(fd)


@pytest.mark.parametrize("command", [["run", "CONFIG", "--stages", "profile"], ["report"]])
def test_cli_on_a_folder_in_use_exits_2_with_one_line(tmp_path, command, capfd):
    """The holder is another process; the refused command runs in this one (`main`, as `python -m` calls it)."""
    from nin_bench.cli import main

    (tmp_path / "suite.yaml").write_text("name: t\nmodel: {width: 0.125}\ngrid: {model.n_1x1: [0]}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "records.jsonl").write_text("")
    proc = _holder(out)
    try:
        args = [a.replace("CONFIG", str(tmp_path / "suite.yaml")) for a in command]
        args += ["--out", str(out)] if command[0] == "run" else [str(out)]
        capfd.readouterr()
        code = main(args)
        err = capfd.readouterr().err
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and f"pid {proc.pid}" in lines[0]


def test_the_lock_taken_again_by_its_holder_is_held_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def take() -> None:
        with ResultsDir(tmp_path).lock("report"):
            pass

    rd = ResultsDir(tmp_path)
    with rd.lock("run"), ThreadPoolExecutor(1) as other:
        with rd.lock("report"):  # `run` takes it before torch's import, `run_suite` again
            pass
        # the inner block's end released nothing: another thread (as another process) is refused, naming the
        # outer holder
        with pytest.raises(FolderBusy, match=rf"in use by `run` \(pid {os.getpid()} "):
            other.submit(take).result()
    take()  # and the outer block's end released it


def test_run_refused_after_taking_the_lock_leaves_no_folder(tmp_path, capfd, monkeypatch):
    """`--device cuda` where torch sees none is refused after `run` took the folder's lock (it asks torch then):
    the folders the command made go again; a folder that was there stays, with what it held."""
    import torch

    from nin_bench.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU machine too

    (tmp_path / "suite.yaml").write_text("name: t\nmodel: {width: 0.125}\ngrid: {model.n_1x1: [0]}\n")
    out = tmp_path / "new" / "out"
    assert main(["run", str(tmp_path / "suite.yaml"), "--device", "cuda", "--out", str(out)]) == 2
    assert "sees no CUDA device" in capfd.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    assert main(["run", str(tmp_path / "suite.yaml"), "--device", "cuda", "--out", str(tmp_path / "old")]) == 2
    assert [p.name for p in (tmp_path / "old").rglob("*")] == [".cache", "lock"]
    (tmp_path / "a-file").write_text("")  # --out under a file: one line, before torch is asked anything
    capfd.readouterr()
    assert main(["run", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "a-file" / "out")]) == 2
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "a-file/out cannot be a results folder (Not a directory" in lines[0], lines
    rd = ResultsDir(tmp_path / "kept")
    with pytest.raises(RuntimeError), rd.lock("run"), rd.unmade_on_error(rd.missing_top()):
        rd.records.write_text("")  # something written: the folder is kept
        raise RuntimeError("refused")
    assert rd.records.exists()


def test_atomic_write_leaves_old_or_new_never_a_temp(tmp_path):
    path = tmp_path / "a" / "f.txt"
    write_atomic(path, "one")
    write_atomic(path, b"two")
    assert path.read_text() == "two" and os.listdir(path.parent) == ["f.txt"]
    rd = ResultsDir(tmp_path)
    with pytest.raises(RuntimeError):
        with rd.writing(rd.figure("x", "png")) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("writer died")
    assert not rd.figures.exists() or not list(rd.figures.iterdir())


def test_every_generated_name_is_one_the_folder_owns(tmp_path):
    rd = ResultsDir(tmp_path)
    assert rd.checkpoint("v", 1) == tmp_path / ".cache" / "checkpoints" / "v-seed1.pt"
    assert rd.map_file(rd.map_name("v-seed0")) == tmp_path / "maps" / "v-seed0.npz"
    for p in (rd.records, rd.summary, rd.config, rd.manifest, rd.report_md):
        p.write_text("x")
    assert {p.name for p in rd.generated()} == {"records.jsonl", "summary.csv", "config.resolved.yaml",
                                                 "manifest.json", "report.md"}
