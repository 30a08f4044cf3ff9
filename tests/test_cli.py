"""The command line: malformed input exits 2 with one line naming the problem and no traceback."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
GOOD = "name: t\ngrid: {model.n_1x1: [0, 2]}\nstages: [profile]\n"


def nin(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "nin_bench", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("text, needle", [
    ("name: t\ngrid: {model.n_1x1: [0, 2]}\nmodel: {colour: red}\n", "unknown key 'model.colour'"),
    ("name: t\ngrid: {model.n_1x1: [0, 2]}\ntrain: {epochs: many}\n", "train.epochs: Input should be a valid integer"),
    ("name: t\ngrid: {}\n", "grid is empty"),
    ("name: t\ngrid: {model.n_1x1: [0]}\nstages: [profile, bake]\n", "unknown stage 'bake'"),
    ("name: t\ngrid: {model.n_1x1: [0]}\nmodel: {preset: vgg}\n", "model.preset: Input should be 'nin_cifar' or"),
    ("name: t\ngrid: {model.n_1x1: [0\n", "invalid YAML"),
    ("name: t\ngrid: {model.n_1x1: [0]}\ndata: {dataset: cifar10, root: /no/such/dir}\n", "/no/such/dir"),
    ("name: t\ngrid: {model.n_1x1: [0]}\ntrain: {weight_decay: 5e-4x}\n",
     "train.weight_decay: Input should be a valid number"),
    ("name: t\ngrid: {model.n_1x1: [0]}\nprofile: {backward: true}\n", "'profile' section was removed"),
    ("name: t\ngrid: {model.n_1x1: [0]}\nprotocols: [nope]\n", "unknown protocol 'nope'; built-in: cpu_short"),
])
def test_malformed_config_exits_2_with_one_line(tmp_path, text, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    res = nin("run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert needle in res.stderr


def test_unreadable_and_missing_files(tmp_path):
    res = nin("list", str(tmp_path / "none.yaml"))
    assert res.returncode == 2 and "config file not found" in res.stderr and "Traceback" not in res.stderr
    res = nin("report", str(tmp_path))
    assert res.returncode == 2 and "no records.jsonl" in res.stderr


def test_bad_set_value_exits_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD)
    res = nin("list", str(cfg), "--set", "model.n_1x1=9")
    assert res.returncode == 2 and "model.n_1x1" in res.stderr and "(got 9)" in res.stderr


def test_set_and_suite_take_floats_as_people_write_them(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + "train: {weight_decay: 1e-3, lr: .1}\n")
    res = nin("list", str(cfg), "--set", "train.weight_decay=5e-4", "--set", "train.lr=1E-1")
    assert res.returncode == 0, res.stderr
    res = nin("list", str(cfg), "--set", "train.weight_decay=5e-4.0")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1
    assert "train.weight_decay: Input should be a valid number" in res.stderr and "'5e-4.0'" in res.stderr


def test_list_prints_the_grid(tmp_path):
    res = nin("list", "ablations/one_by_one.yaml")
    assert res.returncode == 0, res.stderr
    assert "one_by_one: 6 variants" in res.stdout
    assert "nin_cifar-n1x1_2-gap-do0.5" in res.stdout


def test_inspect_preset_prints_layer_table():
    res = nin("inspect", "nin_cifar")
    assert res.returncode == 0, res.stderr
    assert "966,986" in res.stdout or "966986" in res.stdout
    res = nin("inspect", "resnet50")
    assert res.returncode == 2 and "neither a preset" in res.stderr


def test_inspect_time_prints_the_per_layer_time_table():
    res = nin("inspect", "nin_cifar", "--set", "model.width=0.125", "--time", "--batch", "4")
    assert res.returncode == 0, res.stderr
    table = res.stdout.split("end-to-end forward")[1]
    assert "features.block1.conv2  conv_1x1" in table and "\nrest " in table and "bound" in table
    assert not res.stderr.strip()  # kineto's profiler chatter is silenced
    res = nin("inspect", "nin_cifar", "--time", "--batch", "0")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def test_run_keeps_its_command_line_in_the_manifest_and_the_report(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\ngrid: {model.n_1x1: [0]}\nstages: [profile]\nmodel: {width: 0.125}\n")
    res = nin("run", "c.yaml", "--out", "out dir", "--set", "seeds=[0, 1]", "--no-progress", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    expected = "python -m nin_bench run c.yaml --out 'out dir' --set 'seeds=[0, 1]' --no-progress"
    assert json.loads((tmp_path / "out dir" / "manifest.json").read_text())["command"] == expected
    assert f"**Command** (its last invocation on this folder): `{expected}`" in (
        tmp_path / "out dir" / "report.md").read_text()
