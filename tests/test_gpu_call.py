"""One GPU call's two ends (`nin_bench.run.gpu_call`): what travels and its size, what comes back, unpacking it,
the commit file the manifest reads where there is no .git, and the count of units a second call redid."""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nin_bench.errors import UserError
from nin_bench.run import gpu_call
from nin_bench.run.manifest import COMMIT_ENV, git_state
from nin_bench.store.records import completed


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@localhost", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def _write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout: tracked files (one deleted since), an untracked one, ignored ones, and a carried .gpu/."""
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q")
    (r / ".gitignore").write_text("*.pt\n")  # 5 bytes, tracked
    _write(r / "code.py", 100)
    _write(r / "results" / "a" / "records.jsonl", 1000)
    _write(r / "gone.txt", 7)
    _git(r, "add", "-A")
    _git(r, "commit", "-q", "-m", "init")
    (r / "gone.txt").unlink()  # tracked but deleted: does not travel
    _write(r / "notes.txt", 30)  # untracked, not ignored: travels
    _write(r / "results" / "a" / "ckpt.pt", 50_000)  # ignored: stays
    (r / ".git" / "info" / "exclude").write_text("/.gpu/\n")
    _write(r / ".gpu" / "wheels" / "a.whl", 2000)  # ignored, but carried
    _write(r / ".gpu" / "data" / "d.tar.gz", 3000)
    return r


def test_travelling_sums_tracked_untracked_and_carried_never_ignored(repo: Path) -> None:
    files = gpu_call.travelling(repo, [".gpu"])
    assert sorted(files) == [".gitignore", ".gpu/data/d.tar.gz", ".gpu/wheels/a.whl", "code.py", "notes.txt",
                             "results/a/records.jsonl"]
    assert gpu_call.check_travel(files) == 5 + 100 + 1000 + 30 + 2000 + 3000
    assert files["notes.txt"] == (30, "untracked notes.txt")
    assert files[".gpu/wheels/a.whl"] == (2000, "carried .gpu/wheels/a.whl")


def test_a_shared_folder_inside_the_checkout_travels_even_when_ignored(repo: Path) -> None:
    (repo / ".gitignore").write_text("*.pt\nshared/\n")
    _write(repo / "shared" / "big.bin", 400)
    assert gpu_call.travelling(repo, [])["shared/big.bin"] == (400, "shared/")


def test_over_the_limit_is_refused_in_one_line_naming_what_to_drop(repo: Path) -> None:
    with pytest.raises(UserError) as err:
        gpu_call.check_travel(gpu_call.travelling(repo, [".gpu"]), limit=4000)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("0.0 MiB would travel, over the device's 0 MiB by 0.0 MiB; drop one of the largest: "
                          "carried .gpu/data/d.tar.gz (0.0 MiB), carried .gpu/wheels/a.whl (0.0 MiB), "
                          "tracked results/ (0.0 MiB)")


def test_a_missing_carried_path_is_an_error(repo: Path) -> None:
    with pytest.raises(UserError, match="'.wheels' does not exist"):
        gpu_call.travelling(repo, [".wheels"])


def test_size_verb_prints_the_figure_and_the_carry_list(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_call.main(["size", "--repo", str(repo), "--carry", ".gpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("carry_bytes=6135 ")
    assert out[1] == 'carry: [".gpu"]'


def test_copy_makes_the_tree_that_travels_without_git(repo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    assert gpu_call.copy_tree(repo, [".gpu"], dest) == 6135
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == sorted(
        gpu_call.travelling(repo, [".gpu"]))


def _folder(root: Path, name: str) -> Path:
    f = root / name
    for n in ("records.jsonl", "manifest.json", "summary.csv", "config.resolved.yaml", "report.html", "report.md",
              "tables.csv", "figures/a.png", "maps/v-seed0.npz", "preds/v-seed0.npz", ".cache/checkpoints/v-seed1.pt",
              ".cache/state.json", "resume-check.pt"):
        _write(f / n, 10)
    return f


def test_returned_files_are_the_measurements_never_reports_caches_or_checkpoints(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _folder(results, "gpu-one_by_one")
    _write(results / "gpu-selfcheck" / "selfcheck.json", 3)
    _write(results / "gpu-selfcheck" / "selfcheck.md", 3)
    _write(results / "gpu-selfcheck" / "packing.json", 3)
    got = [p.relative_to(results).as_posix() for p in gpu_call.returned_files(results)]
    assert got == ["gpu-one_by_one/config.resolved.yaml", "gpu-one_by_one/manifest.json",
                   "gpu-one_by_one/maps/v-seed0.npz", "gpu-one_by_one/preds/v-seed0.npz",
                   "gpu-one_by_one/records.jsonl", "gpu-one_by_one/summary.csv",
                   "gpu-selfcheck/packing.json", "gpu-selfcheck/selfcheck.json", "gpu-selfcheck/selfcheck.md"]


def test_pack_holds_only_the_folders_the_call_changed_and_unpack_puts_them_back(tmp_path: Path) -> None:
    results = tmp_path / "here" / "results"
    _folder(results, "one_by_one")
    changed = _folder(results, "gpu-timing")
    before = gpu_call.snapshot(results)
    (changed / "records.jsonl").write_text('{"variant": "v"}\n')
    out = tmp_path / "out"
    out.mkdir()
    written = gpu_call.pack(results, before, out)
    assert [w.name for w in written] == ["gpu-results.tgz"]
    names = sorted(gpu_call.archive_files(written))
    assert names == [f"results/gpu-timing/{n}" for n in ("config.resolved.yaml", "manifest.json",
                                                         "maps/v-seed0.npz", "preds/v-seed0.npz", "records.jsonl",
                                                         "summary.csv")]
    there = tmp_path / "there"
    assert gpu_call.unpack(written, there) == [there / "results" / "gpu-timing"]
    assert (there / "results/gpu-timing/records.jsonl").read_text() == '{"variant": "v"}\n'
    assert gpu_call.check_returned(written) == (1, written[0].stat().st_size)


def test_nothing_changed_packs_nothing(tmp_path: Path) -> None:
    results = tmp_path / "results"
    _folder(results, "gpu-head")
    assert gpu_call.pack(results, gpu_call.snapshot(results), tmp_path) == []


def test_a_large_archive_comes_back_in_parts_that_unpack_joins(tmp_path: Path) -> None:
    results = tmp_path / "results"
    f = _folder(results, "gpu-head")
    (f / "records.jsonl").write_bytes(random.Random(0).randbytes(10_000))  # what gzip cannot shrink
    out = tmp_path / "out"
    out.mkdir()
    parts = gpu_call.pack(results, {}, out, part_bytes=4096)
    assert [p.name for p in parts] == ["gpu-results.tgz.00", "gpu-results.tgz.01", "gpu-results.tgz.02"]
    gpu_call.unpack(parts, tmp_path / "there")
    assert (tmp_path / "there/results/gpu-head/records.jsonl").read_bytes() == (f / "records.jsonl").read_bytes()


def test_returned_limits(tmp_path: Path) -> None:
    files = []
    for i in range(9):
        files.append(tmp_path / f"f{i}")
        files[-1].write_bytes(b"x" * i)
    assert gpu_call.check_returned(files[:8]) == (8, 7)
    with pytest.raises(UserError, match="at most 8 files"):
        gpu_call.check_returned(files)


@pytest.mark.parametrize("name", ["results/a/.cache/state.json", "results/a/x.pt", "nin_bench/cli.py",
                                  "results/../evil/records.jsonl", "results/a/report.html"])
def test_unpack_refuses_anything_but_returned_files_under_results(tmp_path: Path, name: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for n in ("results/a/records.jsonl", name):
            info = tarfile.TarInfo(n)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    archive = tmp_path / "gpu-results.tgz"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="nothing unpacked"):
        gpu_call.unpack([archive], tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


# --------------------------------------------------------------------------------- the commit on the GPU machine
def test_the_commit_file_names_the_commit_where_there_is_no_git(repo: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    head = _git(repo, "rev-parse", "HEAD")
    assert gpu_call.write_commit_file(repo) == f"{head} dirty"  # gone.txt was deleted since the commit
    copy = tmp_path / "copy"
    gpu_call.copy_tree(repo, [".gpu"], copy)
    assert not (copy / ".git").exists()
    assert git_state(copy) == (head, True)
    monkeypatch.setenv(COMMIT_ENV, "abc123 clean")  # the variable wins over the file, git over both
    assert git_state(copy) == ("abc123", False)
    assert git_state(repo) == (head, True)


def test_no_git_no_file_no_variable_is_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    assert git_state(tmp_path) == (None, None)


def test_the_manifest_reads_the_commit_file_of_the_checkout_holding_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the package without .git (as on the GPU machine): its manifest's commit comes from .gpu/commit."""
    copy = tmp_path / "copy"
    shutil.copytree(Path(__file__).parents[1] / "nin_bench", copy / "nin_bench",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (copy / ".gpu").mkdir()
    (copy / ".gpu" / "commit").write_text("0123abcd clean\n")
    code = ("from pathlib import Path; import nin_bench.run.manifest as m; "
            "print(m.__file__); print(m.git_state(Path(m.__file__).resolve().parents[2]))")
    env = {k: v for k, v in os.environ.items() if k != COMMIT_ENV}
    out = subprocess.run([sys.executable, "-c", code], cwd=copy, env={**env, "PYTHONPATH": str(copy)},
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == [str(copy / "nin_bench/run/manifest.py"), "('0123abcd', False)"]


# ------------------------------------------------------------------------------------ units a second call redid
def _rec(variant: str, stage: str, seed: int | None = None, status: str = "ok", **kw: object) -> dict:
    return {"variant": variant, "stage": stage, "seed": seed, "status": status, **kw}


def test_redone_units_are_the_second_calls_units_the_first_had_finished() -> None:
    first = {"results/gpu-one_by_one": [_rec("v0", "profile"), _rec("v0", "train_epoch", 0, epoch=0),
                                        _rec("v0", "train", 0), _rec("v1", "train", 0, "error")]}
    second = {"results/gpu-one_by_one": [_rec("v1", "train", 0),  # failed before: running it again is no redo
                                         _rec("v0", "train_epoch", 1, epoch=0), _rec("v0", "train", 1),
                                         _rec("v0", "train_epoch", 0, epoch=0), _rec("v0", "train", 0)],
              "results/gpu-head": [_rec("v0", "train", 0)]}  # another folder: another unit
    assert completed(first["results/gpu-one_by_one"]) == {("v0", "profile", None), ("v0", "train", 0)}
    assert gpu_call.redone_units(first, second) == [("results/gpu-one_by_one", "v0", "train", 0)]


def test_added_records_are_the_lines_the_travelled_copy_did_not_hold(tmp_path: Path) -> None:
    old = [json.dumps(_rec("v0", "profile"))]
    (tmp_path / "results" / "gpu-a").mkdir(parents=True)
    (tmp_path / "results" / "gpu-a" / "records.jsonl").write_text("\n".join(old) + "\n")
    returned = {"results/gpu-a/records.jsonl": ("\n".join([*old, json.dumps(_rec("v0", "timing"))]) + "\n").encode(),
                "results/gpu-b/records.jsonl": (json.dumps(_rec("v1", "profile")) + "\n").encode(),
                "results/gpu-b/manifest.json": b"{}"}
    assert gpu_call.added_records(tmp_path, returned) == {"results/gpu-a": [_rec("v0", "timing")],
                                                          "results/gpu-b": [_rec("v1", "profile")]}
