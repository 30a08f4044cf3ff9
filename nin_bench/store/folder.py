"""The results folder, and its one owner: every path inside it, its lock, and its crash-safe record log.

Layout (the committed part, then the git-ignored `.cache/`):

    records.jsonl  summary.csv  config.resolved.yaml  manifest.json  report.md  report.html  tables.csv
    comparisons.csv  tables.tex  figures/  maps/  preds/
    .cache/lock  .cache/append.journal  .cache/checkpoints/  .cache/scratch/  .cache/superseded-<time>/

Appends are atomic per batch of records: the byte range a batch will occupy is written to a journal before
the batch, so a run killed at any instant (even inside the append) leaves either the whole batch, which the
next run keeps, or none of it. A torn last line with no journal (an older writer, a crash mid-line, a file cut
by hand) is cut off before anything is appended, so a new record never joins a broken line.
No torch here: the report and `list` open folders without it.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from nin_bench.errors import UserError
from nin_bench.store.atomic import atomic_target, write_atomic
from nin_bench.store.crash_points import crash_point
from nin_bench.store.records import parse_jsonl, to_jsonl
from nin_bench.store.schema import upgrade_record

# Where `run` puts a suite's folder when no --out is given: results/<suite name>, relative to the working directory.
RESULTS_ROOT = Path("results")
RECORDS = "records.jsonl"
SUMMARY = "summary.csv"
CONFIG = "config.resolved.yaml"
MANIFEST = "manifest.json"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TABLES_CSV = "tables.csv"
TABLES_TEX = "tables.tex"
COMPARISONS_CSV = "comparisons.csv"  # the report's pairwise comparisons and factorial effects
FIGURES = "figures"
MAPS = "maps"
PREDS = "preds"  # each training run's predicted class per test image (`preds_name`)
SELFCHECK_JSON = "selfcheck.json"  # a GPU self-check folder's results (`nin_bench.run.gpu_session`)
SELFCHECK_MD = "selfcheck.md"
PACKING_JSON = "packing.json"  # the self-check folder's measurement of concurrent training runs on the device
# What a run produces; a folder superseded by another config gives these up (the ignored .cache/ stays).
GENERATED = (RECORDS, SUMMARY, CONFIG, MANIFEST, REPORT_MD, REPORT_HTML, TABLES_TEX, TABLES_CSV, COMPARISONS_CSV,
             MAPS, PREDS, FIGURES)
CACHE = ".cache"


class FolderBusy(UserError):
    """Another process holds the results folder's lock (the CLI prints this one line and exits 2)."""


@dataclass(frozen=True)
class ResultsDir:
    """A results folder: where each file lives, the lock, and the record log.

    Attributes:
        root: the folder (need not exist yet).
    """

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    # ---- paths ------------------------------------------------------------------------------------------
    @property
    def records(self) -> Path:
        return self.root / RECORDS

    @property
    def summary(self) -> Path:
        return self.root / SUMMARY

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def report_html(self) -> Path:
        return self.root / REPORT_HTML

    @property
    def tables_csv(self) -> Path:
        return self.root / TABLES_CSV

    @property
    def tables_tex(self) -> Path:
        return self.root / TABLES_TEX

    @property
    def comparisons_csv(self) -> Path:
        return self.root / COMPARISONS_CSV

    @property
    def figures(self) -> Path:
        return self.root / FIGURES

    def figure(self, name: str, ext: str) -> Path:
        """A figure file, e.g. figure("accuracy_vs_cost", "png")."""
        return self.figures / f"{name}.{ext}"

    def map_name(self, run_name: str) -> str:
        """How a record names a run's GAP maps file (relative to the folder, so the folder can move)."""
        return f"{MAPS}/{run_name}.npz"

    def map_file(self, name: str) -> Path:
        """The maps file a record names (`map_name`)."""
        return self.root / name

    def preds_name(self, run_name: str) -> str:
        """How a final train record names its test-set predictions file (`preds_file`), relative to the folder:
        an .npz with `pred` and `label`, uint8 arrays of the test set's size in its order (uint16 beyond 256
        classes)."""
        return f"{PREDS}/{run_name}.npz"

    def preds_file(self, name: str) -> Path:
        """The predictions file a record names (`preds_name`)."""
        return self.root / name

    @property
    def cache(self) -> Path:
        return self.root / CACHE

    @property
    def lock_file(self) -> Path:
        return self.cache / "lock"

    @property
    def journal(self) -> Path:
        return self.cache / "append.journal"

    @property
    def checkpoints(self) -> Path:
        return self.cache / "checkpoints"

    def checkpoint(self, variant_id: str, seed: int) -> Path:
        """Where one training run checkpoints (removed once its records are safely on disk)."""
        return self.checkpoints / f"{variant_id}-seed{seed}.pt"

    def timing_checkpoint(self, group: str) -> Path:
        """Where a timing unit keeps the rounds it has measured (removed once its records are safely on disk)."""
        return self.checkpoints / f"timing-{group}.json"

    def timing_checkpoints(self) -> list[Path]:
        """Every timing unit's checkpoint present."""
        return sorted(self.checkpoints.glob("timing-*.json")) if self.checkpoints.exists() else []

    @property
    def scratch(self) -> Path:
        """Scratch files of a run that are never results (the GPU self-check's resume checkpoint)."""
        return self.cache / "scratch"

    @property
    def selfcheck_json(self) -> Path:
        return self.root / SELFCHECK_JSON

    @property
    def selfcheck_md(self) -> Path:
        return self.root / SELFCHECK_MD

    @property
    def packing_json(self) -> Path:
        """Aggregate img/s of 1 vs N concurrent training runs and the pack chosen (GPU self-check folder)."""
        return self.root / PACKING_JSON

    def superseded(self) -> Path:
        """A new folder for results that another config or checkout made (they are kept, not deleted)."""
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return self.cache / f"superseded-{stamp}"

    def supersede(self) -> Path:
        """Move every generated file aside into a new `superseded()` folder and drop the checkpoints.

        Returns:
            The folder the files went to.
        """
        dest = self.superseded()
        dest.mkdir(parents=True, exist_ok=True)
        for path in self.generated():
            shutil.move(str(path), dest / path.name)
        shutil.rmtree(self.checkpoints, ignore_errors=True)
        return dest

    def supersede_records(self, drop: Callable[[dict[str, Any]], bool]) -> tuple[Path, int]:
        """Move the records `drop` selects aside, keeping the rest in place (a continued folder gives up what
        this machine must measure again, e.g. another CPU model's timing). The whole folder is first copied into
        a new `superseded()` folder, then records.jsonl is rewritten atomically without them, and the timing
        checkpoints are dropped (training checkpoints stay: a run in progress goes on).

        Returns:
            The folder the copy went to, and how many records were dropped.
        """
        kept, dropped = [], 0
        for line in (self.records.read_text().splitlines(keepends=True) if self.records.exists() else []):
            rows = parse_jsonl(line)
            if rows and drop(rows[0]):
                dropped += 1
            else:
                kept.append(line)
        dest = self.superseded()
        dest.mkdir(parents=True, exist_ok=True)
        for path in self.generated():
            (shutil.copytree if path.is_dir() else shutil.copy2)(path, dest / path.name)
        write_atomic(self.records, "".join(kept))
        for path in self.timing_checkpoints():
            path.unlink(missing_ok=True)
        return dest, dropped

    @classmethod
    def for_suite(cls, name: str) -> "ResultsDir":
        """The default folder of a suite: results/<name>."""
        return cls(RESULTS_ROOT / name)

    def generated(self) -> list[Path]:
        """The generated files and folders present."""
        return [self.root / n for n in GENERATED if (self.root / n).exists()]

    # ---- small files --------------------------------------------------------------------------------------
    def write(self, path: Path, data: str | bytes) -> None:
        """Write one file of this folder atomically."""
        write_atomic(path, data)

    def writing(self, path: Path) -> contextlib.AbstractContextManager[Path]:
        """A temp path to write `path` through (for writers that want a file name), renamed on success."""
        return atomic_target(path)

    def read_config(self) -> dict[str, Any]:
        """The resolved config the folder's records were measured under ({} when absent or unreadable)."""
        try:
            raw = yaml.safe_load(self.config.read_text())
        except (OSError, yaml.YAMLError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def read_manifest(self) -> dict[str, Any]:
        """The folder's manifest.json ({} when absent or unreadable)."""
        return self.read_json(self.manifest)

    def read_json(self, path: Path) -> dict[str, Any]:
        """One JSON object file of this folder (manifest, self-check, packing); {} when absent or unreadable."""
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return raw if isinstance(raw, dict) else {}

    def clear_scratch(self) -> None:
        """Drop the scratch files (never results: e.g. the self-check's resume checkpoint)."""
        shutil.rmtree(self.scratch, ignore_errors=True)

    # ---- records ------------------------------------------------------------------------------------------
    def read_records(self) -> list[dict[str, Any]]:
        """Every complete record in file order, in today's keys (`schema.upgrade_record`: a record from an earlier
        version gains the keys it lacked); missing file: []; a torn last line is skipped."""
        try:
            return [upgrade_record(r) for r in parse_jsonl(self.records.read_text())]
        except FileNotFoundError:
            return []

    def append_records(self, records: Iterable[dict[str, Any]]) -> None:
        """Append a batch of records atomically and durably (fsync'd before this returns).

        Call `recover` once before the first append of a run (`lock` does): it settles what a killed run left.
        """
        data = to_jsonl(records).encode()
        if not data:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        offset = self.records.stat().st_size if self.records.exists() else 0
        write_atomic(self.journal, json.dumps({"offset": offset, "length": len(data),
                                               "sha256": hashlib.sha256(data).hexdigest()}))
        crash_point("append:journal_written")
        fd = os.open(self.records, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            written = 0
            while written < len(data):  # os.write may write less than asked (signals, quotas)
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        crash_point("append:records_written")
        self.journal.unlink(missing_ok=True)
        crash_point("append:done")

    def recover(self, log: Callable[[str], None] = print) -> None:
        """Settle the record log after a crash: finish or undo an interrupted append, cut a torn last line.

        Args:
            log: told once about anything removed.
        """
        if self.journal.exists():
            self._settle_journal(log)
        if not self.records.exists():
            return
        with open(self.records, "rb+") as fh:
            data = fh.read()
            if not data or data.endswith(b"\n"):
                return
            cut = data.rfind(b"\n") + 1
            tail = data[cut:]
            if parse_jsonl(tail.decode("utf-8", "replace")):
                fh.write(b"\n")  # a whole record that only lost its newline: keep it
                log(f"{self.records}: the last record had no newline; added one")
            else:
                fh.truncate(cut)
                log(f"{self.records}: removed a torn last line ({len(tail)} bytes, a run killed mid-write); "
                    "its unit is not recorded and runs again")
            os.fsync(fh.fileno())

    def _settle_journal(self, log: Callable[[str], None]) -> None:
        """Keep the journalled batch if it reached the file whole, else cut the file back to where it began."""
        try:
            entry = json.loads(self.journal.read_text())
            offset, length, digest = int(entry["offset"]), int(entry["length"]), entry["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            self.journal.unlink(missing_ok=True)  # a journal torn before its rename cannot exist; be lenient
            return
        data = self.records.read_bytes() if self.records.exists() else b""
        whole = hashlib.sha256(data[offset:offset + length]).hexdigest() == digest
        keep = offset + length if whole else min(offset, len(data))
        if keep < len(data):
            with open(self.records, "rb+") as fh:
                fh.truncate(keep)
                os.fsync(fh.fileno())
            if not whole:
                log(f"{self.records}: removed an incomplete append ({len(data) - keep} bytes, a run killed while "
                    "writing its records); that unit runs again")
        self.journal.unlink(missing_ok=True)

    # ---- lock ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, command: str, log: Callable[[str], None] = print) -> Iterator["ResultsDir"]:
        """Hold the folder's exclusive lock for a block, then settle the record log (`recover`).

        A kernel lock (flock) on `.cache/lock`: it dies with its process, so a killed run leaves no stale lock.
        Taken again by the thread that holds it, it is held once (the outer block settled the record log).

        Args:
            command: what holds it (shown to a second process that is refused).
            log: where `recover` reports.

        Raises:
            FolderBusy: another process holds the lock (names the folder and the holder).
            UserError: the folder cannot be made or its lock file written.
        """
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            key = os.path.realpath(self.lock_file)
            held = _HELD.get(key) == _holder_id()  # this thread holds it already (and has settled the record log)
            fd = None if held else os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a file in the way, no permission, a read-only file system
            raise UserError(f"{self.root} cannot be a results folder ({exc.strerror}: {exc.filename}); give this "
                            "command another --out folder") from None
        if fd is None:
            yield self
            return
        try:
            if not _flock_soon(fd, fcntl.LOCK_EX):
                raise FolderBusy(f"{self.root} is in use by {_holder(self.lock_file)}; wait for it to finish, "
                                 "or give this command another --out folder")
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                      "since_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            _HELD[key] = _holder_id()
            try:
                self.recover(log)
                yield self
            finally:
                del _HELD[key]
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def missing_top(self) -> Path | None:
        """The outermost folder of this folder's path that does not exist yet (None when the folder exists): what
        `lock` creates, and `unmade_on_error` removes again."""
        top, path = None, self.root.absolute()
        while not path.exists():
            top, path = path, path.parent
        return top

    @contextlib.contextmanager
    def unmade_on_error(self, top: Path | None) -> Iterator[None]:
        """Remove `top` (`missing_top` before `lock`) when the block raises and the folder holds nothing but its
        lock file: a command refused after it took the folder's lock, before it wrote anything, leaves no folder.
        Call it inside `lock`, so that no other process can be starting in the folder meanwhile."""
        try:
            yield
        except BaseException:
            left = [p for p in top.rglob("*") if p.is_file()] if top is not None else None
            if left == [self.lock_file.absolute()]:
                shutil.rmtree(top, ignore_errors=True)
            raise

    @contextlib.contextmanager
    def reading(self) -> Iterator[bool]:
        """Hold a shared lock on the folder while another run reads it (`run.reuse`); yields False, holding
        nothing, when a writer holds the folder (a run or `report` mid-write: do not read it now).

        The shared lock keeps a writer from starting while the reader reads config, manifest, records and files
        as one consistent state; it lasts milliseconds, and a writer's `lock` waits that long for it. A folder
        whose lock file cannot be created (read-only) has no writer either: it is read as it is.
        """
        try:
            self.cache.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield True
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)


# The folders whose lock this process holds (real path of the lock file -> the holding thread, `_holder_id`):
# `lock` taken again by that thread inside its `lock` of the same folder holds it once. (`run` takes it before it
# imports torch, so that a second `run` on a busy folder is refused in a second; `run_suite` takes it again.)
# Another thread is refused as another process is; a forked child (another pid) holds none of them.
_HELD: dict[str, tuple[int, int]] = {}


def _holder_id() -> tuple[int, int]:
    return os.getpid(), threading.get_ident()


# How long `lock` waits for a folder's lock before it refuses: a reader (`ResultsDir.reading`) holds a shared
# lock for milliseconds; a writer holds it for its whole run.
LOCK_WAIT_S = 1.0


def _flock_soon(fd: int, kind: int, wait_s: float = LOCK_WAIT_S) -> bool:
    """Take a flock of `kind` without blocking, retrying for up to `wait_s` (a reader's moment); False if held."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _holder(lock_file: Path, wait_s: float = 2.0) -> str:
    """"`run` (pid 123 on host, since ...)" from the lock file, or a plain phrase when it stays unreadable.

    The holder writes its line just after taking the flock, so a process refused in between finds the file
    empty (or still holding the line of an earlier, dead holder): it polls for up to `wait_s` for a live
    holder's line before it settles for the plain phrase.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            h = json.loads(lock_file.read_text())
            text = f"`{h['command']}` (pid {h['pid']} on {h['host']}, since {h['since_utc']})"
            if h["host"] != socket.gethostname() or _alive(int(h["pid"])):
                return text
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() >= deadline:
            return "another process"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)  # PermissionError (a process of another user) also means it exists
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
