"""One atomic write for every file nin_bench writes whole (results, checkpoints, maps, figures, the data cache).

A temp file in the target's folder, flushed and fsync'd, then `os.replace`: a reader or a later run sees the old
file or the new one, never half of one, whenever the writer is killed.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_target(path: Path) -> Iterator[Path]:
    """Yield a temp path beside `path` for a writer that wants a file name (np.savez, torch.save, savefig);
    on a clean exit the temp file is fsync'd and renamed onto `path`, on an error it is removed.

    The temp name keeps `path`'s suffix, since some writers pick the format from it (savefig, np.savez).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_target(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (best effort: some file systems refuse a directory fsync)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
