"""`python -m nin_bench ARGS` without paying the interpreter's start: a child forked from the test process runs
`nin_bench.cli.main(ARGS)` in the environment given and exits with its return code.

A fresh `python -m nin_bench run` spends ~8 s importing torch, scipy and the report before its first unit (most of
a tiny crash-test run); a fork starts with them imported. The child is a real process: it has its own pid, its
stdout and stderr go to files of its own, a crash point's SIGKILL (or one sent from outside) kills it alone, and
its exit status reads as `subprocess`'s does (-9 when killed). What it does not test is the interpreter around
`main`: the tests that need that (an outside kill -9 of `python -m nin_bench`, two real processes racing for a
folder, exit status 2 through `python -m`) still start real interpreters.

Only for runs at one thread (`threads: 1`): a child forked after OpenMP ran in parallel must not start a
parallel region of its own.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback


class Forked:
    """A forked `nin_bench.cli.main(args)`, with the part of `subprocess.Popen`'s interface the tests use."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        import nin_bench.cli
        import nin_bench.run.runner  # noqa: F401  (what `run` imports first: imported once, here, not per child)

        self.args = args
        self.returncode: int | None = None
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        sys.stdout.flush()
        sys.stderr.flush()
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                os.dup2(self._out.fileno(), 1)
                os.dup2(self._err.fileno(), 2)
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                os.environ.clear()
                os.environ.update(env)
                code = nin_bench.cli.main(list(args))
            except SystemExit as exc:  # argparse's refusals
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001  (what an interpreter would print before exiting 1)
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                self.send_signal(9)
                self.wait(60)
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.005)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def output(self) -> tuple[str, str]:
        """What the child wrote to stdout and stderr."""
        texts = []
        for f in (self._out, self._err):
            f.seek(0)
            texts.append(f.read().decode(errors="replace"))
            f.close()
        return texts[0], texts[1]


def run(args: list[str], env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    """Like `subprocess.run([python, -m, nin_bench, *args], env=env, capture_output=True, text=True)`."""
    child = Forked(args, env)
    code = child.wait(timeout)
    out, err = child.output()
    return subprocess.CompletedProcess(["nin_bench", *args], code, out, err)
