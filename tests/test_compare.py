"""`compare DIR_A DIR_B`: a folder against itself resolves nothing, slower train steps resolve as slower, a
non-folder exits 2 with one line, old folders (no rounds) give bare ratios; it never takes the folder lock."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synthetic_run import full_records, timing_recs, write_run

from nin_bench.cli import main
from nin_bench.store.folder import ResultsDir

ROOT = Path(__file__).parents[1]
N_TIMING = 36  # 6 variants x (forward, train_step) x batch 1, 32, 128


def _lines(capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    assert main(["compare", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def _timing_marks(out: list[str]) -> dict[str, list[str]]:
    """mode -> the marks of its joined timing lines."""
    rows = [line.split() for line in out if line.startswith("  nin_cifar") and " bs " in line]
    marks: dict[str, list[str]] = {}
    for r in rows:
        marks.setdefault(r[1], []).append(r[-1])
    return marks


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    return write_run(tmp_path / "a", full_records())


def test_folder_against_itself_resolves_nothing(synthetic: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ResultsDir(synthetic).lock("run"):  # read-only: a run holding the lock does not stop compare
        out = _lines(capsys, str(synthetic), str(synthetic))
    assert "The manifests and timing settings are the same." in out
    marks = _timing_marks(out)
    assert len(marks["forward"]) == len(marks["train_step"]) == N_TIMING // 2
    assert set(marks["forward"]) | set(marks["train_step"]) == {"~"}
    assert f"  {N_TIMING} rows joined: 0 slower, 0 faster, {N_TIMING} not resolved (~); 0 only in A, 0 only in B." in out
    acc = [line for line in out if "paired t over shared seeds, n 3" in line]
    assert len(acc) == 6 and all("  +0.00 pp [+0.00, +0.00]  " in line and line.endswith("  ~") for line in acc)


def test_train_steps_half_again_slower_resolve_as_slower(synthetic: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    recs = []
    for r in full_records():
        if r["stage"] in ("timing", "timing_round") and r["mode"] == "train_step":
            r = r | {k: r[k] * 1.5 for k in ("ms_median", "round_ms_min", "round_ms_max") if k in r}
        recs.append(r)
    b = write_run(tmp_path / "b", recs)
    manifest = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps(manifest | {"threads": 1}))
    out = _lines(capsys, str(synthetic), str(b))
    assert "What differs (A -> B):" in out and "  threads: 2 -> 1" in out
    marks = _timing_marks(out)
    assert marks["train_step"] == ["slower"] * 18 and marks["forward"] == ["~"] * 18
    line = next(x for x in out if "train_step bs 128" in x)
    assert "1.500× [1.4" in line  # Welch on logs: the same spread, shifted by log 1.5
    capsys.readouterr()
    assert main(["compare", str(synthetic), str(b), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    slow = [t for t in data["timing"] if t["mode"] == "train_step"]
    assert all(t["mark"] == "slower" and t["rounds"] == 5 and t["ci_lo"] > 1 for t in slow)
    assert slow[0]["time_ratio"] == pytest.approx(1.5, rel=1e-12) and slow[0]["method"].startswith("Welch")


def test_not_a_results_folder_exits_2_with_one_line(synthetic: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(synthetic), str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"nin_bench compare: error: {tmp_path / 'empty'} is not a results folder: no readable "
                    "records.jsonl (FileNotFoundError)")]
    (synthetic / "manifest.json").write_text("{torn")
    assert main(["compare", str(synthetic), str(synthetic)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_old_format_folders_give_bare_ratios(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recs = [r for r in full_records() if r["stage"] not in ("timing", "timing_round")]
    recs += [r for ds in ("cifar10", "fashion_mnist") for n in (0, 1, 2) for r in timing_recs(ds, n, rounds=False)]
    old = write_run(tmp_path / "old", recs)
    new = write_run(tmp_path / "new", full_records())
    out = _lines(capsys, str(old), str(new))
    rows = [x for x in out if " bs " in x and x.startswith("  nin_cifar")]
    assert len(rows) == N_TIMING and all("1.000× (no rounds: no interval)" in x and x.endswith("~") for x in rows)
    committed = shutil.copytree(ROOT / "results" / "head", tmp_path / "head")
    out = _lines(capsys, str(committed), str(committed))
    assert "  24 rows joined: 0 slower, 0 faster, 24 not resolved (~); 0 only in A, 0 only in B." in out
