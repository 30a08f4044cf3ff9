"""One call of a lent GPU machine, seen from its two ends: what travels there, what comes back, what goes in.

The device tool copies the checkout's tracked and untracked-not-ignored files, a `shared/` folder inside it and
the paths named in `carry` (at most 64 MiB in all), and brings back at most 8 files of at most 16 MiB from $OUT.
`scripts/gpu_prepare.sh` sums what will travel before a call (`size`), `scripts/gpu_session.sh` packs what the
call changed (`snapshot` before, `pack` after), `scripts/gpu_unpack.sh` puts it into results/ (`unpack`), and
`scripts/gpu_rehearse.sh` copies the tree (`copy`) and counts units a second call redid (`redone`).

No torch here: it runs before anything is installed on the GPU machine, and beside the CLI's `report`.
Run as `python -m nin_bench.run.gpu_call VERB ...` (plumbing for the scripts; the user's CLI is `nin_bench`).
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from nin_bench.errors import UserError
from nin_bench.run.manifest import COMMIT_FILE, git_state
from nin_bench.store.folder import (
    CACHE,
    CONFIG,
    MANIFEST,
    MAPS,
    PACKING_JSON,
    PREDS,
    RECORDS,
    RESULTS_ROOT,
    SELFCHECK_JSON,
    SELFCHECK_MD,
    SUMMARY,
)
from nin_bench.store.records import (
    completed,
    parse_jsonl,
    unit_key,
)

MIB = 2**20
TREE_LIMIT_BYTES = 64 * MIB  # what may travel to the device machine, carried paths included
RETURN_MAX_FILES = 8  # what may come back from $OUT
RETURN_FILE_BYTES = 16 * MIB
ARCHIVE = "gpu-results.tgz"
# What comes back of a results folder: the measurements and what describes them. Reports, tables and figures are
# rebuilt here from these (`python -m nin_bench report DIR`); checkpoints and .cache/ never leave the machine.
RETURNED_NAMES = (RECORDS, MANIFEST, SUMMARY, CONFIG, SELFCHECK_JSON, SELFCHECK_MD, PACKING_JSON)
# the .npz files a training unit stores in a subfolder: its GAP class-activation maps (the report draws them) and
# its test-set predictions (the per-image paired tests read them)
RETURNED_ARRAYS = {(MAPS, ".npz"), (PREDS, ".npz")}


# ------------------------------------------------------------------------------------------------ what travels
def _git_files(repo: Path, *args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", *args], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p]


def _walk(root: Path) -> Iterable[Path]:
    """Every file (or link) under root, links not followed; root itself when it is a file."""
    if root.is_symlink() or root.is_file():
        yield root
        return
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if (Path(folder) / d).is_symlink()]:
            yield Path(folder) / name


def travelling(repo: Path, carry: list[str]) -> dict[str, tuple[int, str]]:
    """Every file that a device call would copy, with its size and why it travels.

    Args:
        repo: the checkout's root.
        carry: the paths named in the call's `carry` (relative to the root).

    Returns:
        {relative path: (bytes, group)}, group being "tracked <top folder>", "untracked <top folder>",
        "shared/" or "carried <path>[/<two levels under it>]". A link counts as itself (it travels as a link).

    Raises:
        UserError: a carried path does not exist.
    """
    out: dict[str, tuple[int, str]] = {}

    def add(rel: str, group: str) -> None:
        path = repo / rel
        if rel not in out and (path.is_symlink() or path.is_file()):  # a deleted tracked file does not travel
            out[rel] = (path.lstat().st_size, group)

    for kind, args in (("tracked", ()), ("untracked", ("--others", "--exclude-standard"))):
        for rel in _git_files(repo, *args):
            add(rel, f"{kind} {rel.split('/')[0] + ('/' if '/' in rel else '')}")
    for top in carry:
        if not (repo / top).exists() and not (repo / top).is_symlink():
            raise UserError(f"carried path {top!r} does not exist in {repo}: run scripts/gpu_prepare.sh first")
        for path in _walk(repo / top):
            rel = path.relative_to(repo).as_posix()
            add(rel, _carried_group(rel, top))
    if (repo / "shared").is_dir():  # the device tool sends a shared/ folder inside the checkout, ignored or not
        for path in _walk(repo / "shared"):
            add(path.relative_to(repo).as_posix(), "shared/")
    return out


def _carried_group(rel: str, top: str) -> str:
    """A carried file's group: two levels under the carried path (.gpu/data/fashion-mnist), so a refusal can say
    which data set or wheel to leave behind."""
    inner = PurePosixPath(rel).relative_to(top).parts if rel != top else ()
    return "carried " + "/".join([top, *inner[:2]])


def check_travel(files: dict[str, tuple[int, str]], limit: int = TREE_LIMIT_BYTES) -> int:
    """The bytes that travel; above `limit` a UserError whose one line names the largest groups to drop."""
    total = sum(size for size, _ in files.values())
    if total <= limit:
        return total
    groups: dict[str, int] = {}
    for size, group in files.values():
        groups[group] = groups.get(group, 0) + size
    top = sorted(groups.items(), key=lambda kv: -kv[1])[:4]
    raise UserError(f"{total / MIB:.1f} MiB would travel, over the device's {limit / MIB:.0f} MiB by "
                    f"{(total - limit) / MIB:.1f} MiB; drop one of the largest: "
                    + ", ".join(f"{g} ({b / MIB:.1f} MiB)" for g, b in top)
                    + " (carry only the data the call's steps need: gpu_prepare.sh --data; move untracked files away)")


def write_commit_file(repo: Path) -> str:
    """Write `.gpu/commit` ("<commit> clean|dirty"), which the manifest reads where there is no .git."""
    commit, dirty = git_state(repo)
    if commit is None:
        raise UserError(f"{repo} is not a git checkout: the GPU call's manifest could not name its commit")
    text = f"{commit} {'dirty' if dirty else 'clean'}\n"
    (repo / COMMIT_FILE).parent.mkdir(parents=True, exist_ok=True)
    (repo / COMMIT_FILE).write_text(text)
    return text.strip()


def copy_tree(repo: Path, carry: list[str], dest: Path) -> int:
    """Copy what travels (no .git) into `dest`, as the device tool would; returns the bytes copied."""
    files = travelling(repo, carry)
    for rel in files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / rel, target, follow_symlinks=False)
    return sum(size for size, _ in files.values())


# ---------------------------------------------------------------------------------------------- what comes back
def returned_files(results: Path) -> list[Path]:
    """The files of every results folder under `results` that a call sends back (never .cache/ or a checkpoint)."""
    out = []
    for path in sorted(results.rglob("*")):
        rel = path.relative_to(results).parts
        if CACHE in rel or not path.is_file() or path.is_symlink():
            continue
        if path.name in RETURNED_NAMES or (path.parent.name, path.suffix) in RETURNED_ARRAYS:
            out.append(path)
    return out


def _folder_of(path: Path) -> Path:
    """The results folder a returned file belongs to (a maps or predictions file's is two levels up)."""
    return path.parent.parent if (path.parent.name, path.suffix) in RETURNED_ARRAYS else path.parent


def snapshot(results: Path) -> dict[str, str]:
    """{path relative to results: sha256} of the returned kinds of file, taken before a call."""
    return {p.relative_to(results).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in returned_files(results)} if results.is_dir() else {}


def changed_folders(results: Path, before: dict[str, str]) -> list[Path]:
    """The results folders whose returned files differ from the snapshot (added, rewritten or removed)."""
    now = snapshot(results)
    changed = {rel for rel in now.keys() | before.keys() if now.get(rel) != before.get(rel)}
    folders = {_folder_of(results / rel) for rel in changed}
    return sorted(f for f in folders if f.is_dir())


def pack(results: Path, before: dict[str, str], out_dir: Path, part_bytes: int = RETURN_FILE_BYTES) -> list[Path]:
    """Tar the returned files of the folders this call changed into `out_dir`/gpu-results.tgz.

    An archive over `part_bytes` is cut into gpu-results.tgz.00, .01, ... (unpack joins them), so one large
    folder never costs the whole call's results.

    Returns:
        The files written (none when nothing changed).
    """
    folders = changed_folders(results, before)
    files = [p for p in returned_files(results) if _folder_of(p) in folders]
    if not files:
        return []
    archive = out_dir / ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        for p in files:
            tar.add(p, arcname=(PurePosixPath(results.name) / p.relative_to(results).as_posix()).as_posix())
    size = archive.stat().st_size
    if size <= part_bytes:
        return [archive]
    data, parts = archive.read_bytes(), []
    archive.unlink()
    for i in range(0, size, part_bytes):
        parts.append(out_dir / f"{ARCHIVE}.{i // part_bytes:02d}")
        parts[-1].write_bytes(data[i:i + part_bytes])
    return parts


def check_returned(files: list[Path]) -> tuple[int, int]:
    """(count, largest bytes) of the files in $OUT; a UserError when they break the device's return limits."""
    sizes = [f.stat().st_size for f in files]
    largest = max(sizes, default=0)
    if len(files) > RETURN_MAX_FILES or largest > RETURN_FILE_BYTES:
        raise UserError(f"{len(files)} files, the largest {largest} bytes: the device returns at most "
                        f"{RETURN_MAX_FILES} files of {RETURN_FILE_BYTES} bytes")
    return len(files), largest


def unpack(parts: list[Path], repo: Path) -> list[Path]:
    """Extract a returned archive (whole or in parts) into the checkout; returns the results folders it wrote.

    Only files of the returned kinds under results/ are accepted (a member elsewhere is an error, nothing written).
    """
    data = b"".join(p.read_bytes() for p in sorted(parts))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            path = PurePosixPath(m.name)
            ok = (m.isfile() and path.parts[0] == RESULTS_ROOT.name and not {"..", CACHE} & set(path.parts)
                  and (path.name in RETURNED_NAMES or (path.parent.name, path.suffix) in RETURNED_ARRAYS))
            if not ok:
                raise UserError(f"unexpected member {m.name!r} in the returned archive: nothing unpacked")
        tar.extractall(repo, members=members, filter="data")
    return sorted({_folder_of(repo / m.name) for m in members})


# -------------------------------------------------------------------------------------- what a second call redid
def archive_files(parts: list[Path]) -> dict[str, bytes]:
    """{member name: content} of a returned archive (whole or in parts), read in memory."""
    data = b"".join(p.read_bytes() for p in sorted(parts))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def added_records(travelled: Path, returned: dict[str, bytes]) -> dict[str, list[dict[str, Any]]]:
    """{results folder: the records a call added}: the returned records.jsonl lines that the copy which travelled
    (`travelled`, a checkout root) did not hold, compared line by line."""
    out = {}
    for name, content in returned.items():
        if PurePosixPath(name).name != RECORDS:
            continue
        before = travelled / name
        old = set(before.read_text().splitlines()) if before.is_file() else set()
        folder = PurePosixPath(name).parent.as_posix()
        out[folder] = parse_jsonl("\n".join(ln for ln in content.decode().splitlines() if ln not in old))
    return out


def redone_units(first: dict[str, list[dict[str, Any]]], second: dict[str, list[dict[str, Any]]]) -> list[tuple]:
    """Units the second call ran that the first had finished, per results folder.

    Args:
        first: {folder: the records the first call added}.
        second: {folder: the records the second call added}.

    Returns:
        (folder, variant, stage, seed) of every unit the second call ran again.
    """
    return sorted((folder, *key) for folder, recs in second.items()
                  for key in {unit_key(r) for r in recs} & completed(first.get(folder, [])))


# ---------------------------------------------------------------------------------------------------- plumbing
def main(argv: list[str]) -> int:
    """`python -m nin_bench.run.gpu_call VERB ...` for the scripts; one line and exit 1 on a broken limit."""
    p = argparse.ArgumentParser(prog="python -m nin_bench.run.gpu_call")
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in ("size", "copy"):
        s = sub.add_parser(verb)
        s.add_argument("--carry", action="append", default=[])
        s.add_argument("--repo", type=Path, default=Path("."))
    sub.choices["copy"].add_argument("dest", type=Path)
    sub.add_parser("commit").add_argument("--repo", type=Path, default=Path("."))
    sub.add_parser("snapshot").add_argument("results", type=Path)
    pk = sub.add_parser("pack")
    pk.add_argument("results", type=Path)
    pk.add_argument("snapshot", type=Path)
    pk.add_argument("out", type=Path)
    sub.add_parser("check-returned").add_argument("out", type=Path)
    rd = sub.add_parser("redone", help="units a second call ran that the first had finished")
    for name in ("first_tree", "first_out", "second_tree", "second_out"):
        rd.add_argument(name, type=Path)
    up = sub.add_parser("unpack")
    up.add_argument("parts", type=Path, nargs="+")
    up.add_argument("--repo", type=Path, default=Path("."))
    a = p.parse_args(argv)
    try:
        return _VERBS[a.verb](a)
    except UserError as exc:
        print(f"gpu_call {a.verb}: {exc}", file=sys.stderr)
        return 1


def _size(a: argparse.Namespace) -> int:
    total = check_travel(travelling(a.repo, a.carry))
    print(f"carry_bytes={total} ({total / MIB:.1f} MiB of {TREE_LIMIT_BYTES / MIB:.0f} MiB)")
    print("carry: " + json.dumps(a.carry))
    return 0


def _pack(a: argparse.Namespace) -> int:
    written = pack(a.results, json.loads(a.snapshot.read_text()), a.out)
    what = ", ".join(f"{w.name} ({w.stat().st_size} bytes)" for w in written)
    print(f"packed {what or 'nothing (no results folder changed)'}")
    return 0


def _check_returned(a: argparse.Namespace) -> int:
    n, largest = check_returned([f for f in a.out.rglob("*") if f.is_file()])
    print(f"returned_files={n}\nlargest_returned_bytes={largest}")
    return 0


def _redone(a: argparse.Namespace) -> int:
    def added(tree: Path, out: Path) -> dict[str, list[dict[str, Any]]]:
        parts = sorted(out.glob(f"{ARCHIVE}*"))
        return added_records(tree, archive_files(parts)) if parts else {}

    first, second = added(a.first_tree, a.first_out), added(a.second_tree, a.second_out)
    redone = redone_units(first, second)
    for unit in redone:
        print("redone: " + " ".join(str(x) for x in unit))
    print(f"first_call_finished_units={sum(len(completed(r)) for r in first.values())}")
    print(f"second_call_ran_units={sum(len({unit_key(r) for r in recs}) for recs in second.values())}")
    print(f"second_call_redone_units={len(redone)}")
    return 0


_VERBS = {
    "size": _size,
    "copy": lambda a: print(f"copied {copy_tree(a.repo, a.carry, a.dest)} bytes to {a.dest}") or 0,
    "commit": lambda a: print(f"{COMMIT_FILE}: {write_commit_file(a.repo)}") or 0,
    "snapshot": lambda a: print(json.dumps(snapshot(a.results))) or 0,
    "pack": _pack,
    "check-returned": _check_returned,
    "redone": _redone,
    "unpack": lambda a: print("\n".join(str(f) for f in unpack(a.parts, a.repo))) or 0,
}

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
