"""Test-only fault injection: a process kills itself with SIGKILL at a named event, as `kill -9` would then.

`crash_point("append:journal_written")` does nothing unless env `NIN_BENCH_CRASH_AT` names that event and a
count, `append:journal_written:2`: the 2nd time this process reaches it, it sends itself SIGKILL (no handler,
no `finally`, no flush: the folder is left exactly as an outside kill at that instant leaves it). Unset, which is
every real run, a crash point costs one environment look-up. tests/test_crash.py kills runs this way inside the
windows the crash-safety guarantee is about, which a kill at a random time almost never hits.

Events: `checkpoint:saved` (a training checkpoint is on disk), `train:step` (one optimisation step done),
`append:journal_written`, `append:records_written` and `append:done` (the phases of `ResultsDir.append_records`).
"""
from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "NIN_BENCH_CRASH_AT"
_reached: Counter[str] = Counter()  # times this process reached the armed event (counted only when armed)


def crash_point(event: str) -> None:
    """SIGKILL this process if env NIN_BENCH_CRASH_AT is `<event>:<n>` and this is the n-th time here."""
    armed = os.environ.get(ENV)
    if armed and armed.rpartition(":")[0] == event:
        _reached[event] += 1
        if _reached[event] == int(armed.rpartition(":")[2]):
            os.kill(os.getpid(), signal.SIGKILL)
