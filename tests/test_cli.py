"""The command line: malformed input exits 2 with one line naming the problem and no traceback."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
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
    ("name: t\ngrid: {}\n", "grid and variants are both empty"),
    ("name: t\ngrid: {model.n_1x1: [0]}\nstages: [profile, bake]\n", "unknown stage 'bake'"),
    ("name: t\ngrid: {model.n_1x1: [0]}\nmodel: {preset: vgg}\n", "model.preset: Input should be 'nin_cifar' or"),
    ("name: t\ngrid: {model.n_1x1: [0\n", "invalid YAML"),
    ("name: t\ngrid: {model.n_1x1: [0]}\ndata: {dataset: cifar10, root: /no/such/dir}\n", "/no/such/dir"),
    ("name: t\ngrid: {model.n_1x1: [0]}\ntrain: {weight_decay: 5e-4x}\n",
     "train.weight_decay: Input should be a valid number"),
    ("name: t\ngrid: {model.n_1x1: [0]}\nprofile: {backward: true}\n", "'profile' section was removed"),
    ("name: t\ngrid: {model.n_1x1: [0]}\nprotocols: [nope]\n",
     "unknown protocol 'nope'; built-in: cpu_converged, cpu_short"),
])
def test_malformed_config_exits_2_with_one_line(tmp_path, capfd, text, needle):
    """In this process (`main` returns the exit code; capfd sees what reaches fd 2). The exit status through the
    interpreter, refused before torch is imported, is the light commands' test's."""
    from nin_bench.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    capfd.readouterr()
    code = main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-progress"])
    err = capfd.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert needle in err


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


def test_inspect_preset_prints_layer_table(capfd):
    """In this process: what is checked is the table and the refusal, not the interpreter around them."""
    from nin_bench.cli import main

    assert main(["inspect", "nin_cifar"]) == 0
    out, _ = capfd.readouterr()
    assert "966,986" in out or "966986" in out
    assert main(["inspect", "resnet50"]) == 2
    assert "neither a preset" in capfd.readouterr().err


def _fixed_ceilings(monkeypatch) -> None:
    """Ceilings that cost nothing to measure (what they are is not what these tests check)."""
    monkeypatch.setattr("nin_bench.measure.ceilings.gemm_peaks", lambda device, dtype: {"gemm_blas": 1e11})
    monkeypatch.setattr("nin_bench.measure.ceilings.isa_peak_now", lambda: None)
    monkeypatch.setattr("nin_bench.measure.ceilings.memory_bandwidth", lambda device: 1e10)


def test_inspect_time_prints_the_per_layer_time_table(monkeypatch, capfd, tmp_path):
    """In this process, with fixed ceilings (measuring them is not what this checks); capfd sees the C level too."""
    from nin_bench.cli import main

    _fixed_ceilings(monkeypatch)
    trace = tmp_path / "trace.json"
    assert main(["inspect", "nin_cifar", "--set", "model.width=0.125", "--time", "--batch", "4",
                 "--trace", str(trace)]) == 0
    out, err = capfd.readouterr()
    table = out.split("end-to-end forward")[1]
    assert "features.block1.conv2  conv_1x1" in table and "\nrest " in table and "bound" in table
    assert "roof 0.1 TFLOP/s (gemm_blas)" in out and f"trace: {trace}" in out
    assert not err.strip()  # kineto's profiler chatter is silenced
    # the profiled forward as a Chrome/Perfetto trace, with the layer ranges the attribution uses
    names = {e.get("name") for e in json.loads(trace.read_text())["traceEvents"]}
    assert {"layer::features.block1.conv1", "layer::head.gap", "model::forward", "iter::0"} <= names
    assert main(["inspect", "nin_cifar", "--trace", str(trace)]) == 2  # a trace is of the timed forward
    capfd.readouterr()
    assert main(["inspect", "nin_cifar", "--time", "--batch", "0"]) == 2
    assert len(capfd.readouterr().err.strip().splitlines()) == 1


def test_run_keeps_its_command_line_in_the_manifest_and_the_report(tmp_path, monkeypatch, no_figures):
    """In this process (the command line is rebuilt from `main`'s argv), its report without figures. A one-off
    --retime is left out: the manifest keeps the command that continues the folder."""
    from nin_bench.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: t\ngrid: {model.n_1x1: [0]}\nstages: [profile]\nmodel: {width: 0.125}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "c.yaml", "--out", "out dir", "--set", "seeds=[0, 1]", "--retime", "--no-progress"]) == 0
    expected = "python -m nin_bench run c.yaml --out 'out dir' --set 'seeds=[0, 1]' --no-progress"
    assert json.loads((tmp_path / "out dir" / "manifest.json").read_text())["command"] == expected
    assert f"**Command** (its last invocation on this folder): `{expected}`" in (
        tmp_path / "out dir" / "report.md").read_text()


# ---- --set at load time, --explain, --quick on a small image folder, light commands without torch ---------------

def test_set_has_the_last_word_at_load_time():
    res = nin("list", "ablations/one_by_one.yaml", "--set", "timing.batch_sizes=[4,8,16]",
              "--set", "timing.reference_batch_size=16")
    assert res.returncode == 0, res.stderr
    for bad, needle in [("train.epochs=0", "train.epochs: Input should be greater than or equal to 1 (got 0)"),
                        ("timing.reference_batch_size=7", "timing.reference_batch_size 7 must be one of")]:
        res = nin("list", "ablations/one_by_one.yaml", "--set", bad)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and needle in res.stderr


def test_list_explain_prints_each_setting_and_its_origin():
    res = nin("list", "ablations/one_by_one.yaml", "--set", "train.lr=0.2", "--explain")
    assert res.returncode == 0, res.stderr
    lines = {line.split()[0]: line for line in res.stdout.splitlines()[1:] if " = " in line}
    assert lines["model.head"].endswith('= "gap"  (suite)') or lines["model.head"].endswith("= gap  (suite)")
    assert lines["train.batch_size"].endswith("= 128  (default)")  # the paper protocol's, written in the schema
    assert lines["timing.reference_batch_size"].endswith("= 128  (default)")
    assert lines["train.lr"].endswith("= 0.2  (--set)")
    assert lines["train.momentum"].endswith("= 0.9  (default)")
    if "protocol on cpu" in res.stdout:  # the device is guessed from this machine's device files
        assert lines["train.epochs"].endswith("= 3  (protocol cpu_short: cpu)")
        assert lines["seeds"].endswith("= [0]  (protocol cpu_short: cpu)")
    else:
        assert lines["seeds"].endswith("= [0, 1, 2]  (protocol paper)")
    plain = nin("list", "ablations/one_by_one.yaml", "--set", "train.lr=0.2")
    assert res.stdout.startswith(plain.stdout) and "settings (" not in plain.stdout
    assert "(device guessed without torch; `run` asks torch)" in plain.stdout.splitlines()[0]


NO_TORCH = '''import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "fvcore"):
            raise ImportError(f"{name} may not be imported by a light command")
sys.meta_path.insert(0, _NoTorch())
'''


def test_light_commands_never_import_torch(tmp_path):
    """--help, list (--explain, --quick), report and compare on a committed folder, and `run` refusing a
    malformed suite and a Ray address that does not answer, with `import torch` made to fail. The commands are
    independent and each is one single-threaded interpreter: all start at once, so both cores work."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(NO_TORCH)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    # d2l: its report draws real figures in half the time of one_by_one's (test_architecture checks statically
    # that no report module imports torch, even inside a function)
    shutil.copytree(ROOT / "results" / "d2l", tmp_path / "d2l", ignore=shutil.ignore_patterns("figures"))
    # a malformed suite: `run` exits 2 through the interpreter with one line, no traceback, before torch
    (tmp_path / "bad.yaml").write_text("name: t\ngrid: {model.n_1x1: [0]}\nstages: [profile, bake]\n")
    (tmp_path / "suite.yaml").write_text("name: t\nmodel: {width: 0.125}\ngrid: {model.n_1x1: [0]}\n")
    commands = {"help": ["--help"], "list": ["list", "ablations/one_by_one.yaml"],
                "explain": ["list", "ablations/one_by_one.yaml", "--explain", "--quick"],
                "report": ["report", str(tmp_path / "d2l")],
                "compare": ["compare", str(ROOT / "results" / "one_by_one"), str(ROOT / "results" / "one_by_one")],
                "bad": ["run", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "out"), "--no-progress"]}
    if importlib.util.find_spec("ray") is not None:
        # a Ray address nothing answers is refused before torch (or Ray) is imported: one line within seconds,
        # where Ray's own client retries for minutes
        for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
            commands[address] = ["run", str(tmp_path / "suite.yaml"), "--out", str(tmp_path / "out"), "--executor",
                                 "ray", "--ray-address", address]
    started = time.monotonic()
    procs = {name: subprocess.Popen([sys.executable, "-m", "nin_bench", *args], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for name, args in commands.items()}
    check = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True, env=env)
    assert "may not be imported" in check.stderr  # the guard works
    res = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        res[name] = subprocess.CompletedProcess(commands[name], proc.returncode, out, err)
    for name in ("help", "list", "explain", "report", "compare"):
        assert res[name].returncode == 0, (name, res[name].stderr)
    assert (tmp_path / "d2l" / "report.md").exists()
    drawn = sorted(p.stem for p in (tmp_path / "d2l" / "figures").glob("*.png"))
    assert drawn == sorted(p.stem for p in (ROOT / "results" / "d2l" / "figures").glob("*.png"))
    assert all((tmp_path / "d2l" / "figures" / f"{name}.svg").stat().st_size > 5000 for name in drawn)  # beside each
    assert "36 rows joined: 0 slower, 0 faster, 36 not resolved (~)" in res["compare"].stdout
    bad = res["bad"]
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and "unknown stage 'bake'" in bad.stderr
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        if address in res:
            lines = res[address].stderr.strip().splitlines()
            assert res[address].returncode == 2 and len(lines) == 1 and "no Ray cluster at" in lines[0], lines
    assert time.monotonic() - started < 120  # all of them; a client retrying for minutes would show here
    assert not (tmp_path / "out").exists()


def test_no_figures_writes_the_text_and_tables_only(tmp_path):
    """`report --no-figures` (and `run --no-figures`, which the crash and Ray tests use): no figure drawn, the
    report says so and links none; the tables are written as ever."""
    from nin_bench.cli import main

    folder = tmp_path / "d2l"
    shutil.copytree(ROOT / "results" / "d2l", folder, ignore=shutil.ignore_patterns("figures", "report.*", "tables.*"))
    assert main(["report", str(folder), "--no-figures"]) == 0
    md = (folder / "report.md").read_text()
    assert not (folder / "figures").exists() and (folder / "tables.csv").is_file()
    assert "**Figures not drawn** (`--no-figures`)" in md and "![" not in md and "## Figures" not in md


def _image_folder(root: Path, per_class: dict[str, int]) -> None:
    """A tiny image tree of 16x16 PNGs: train/<class>/ and test/<class>/, each class a different colour."""
    from PIL import Image

    for split, n in per_class.items():
        for c, colour in (("red", (200, 30, 30)), ("blue", (30, 30, 200))):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                shade = tuple(max(0, v - 2 * i) for v in colour)
                Image.new("RGB", (16, 16), shade).save(root / split / c / f"{i}.png")


def test_quick_never_turns_a_valid_suite_invalid(tmp_path, monkeypatch, capfd, no_figures):
    """240 images with val_size 30: --quick keeps the suite's 30 (its own 1000 would leave no training image).
    In this process (what --quick resolves to is checked, not the interpreter), its report without figures."""
    from nin_bench.cli import main

    _image_folder(tmp_path / "imgs", {"train": 100, "test": 20})
    (tmp_path / "s.yaml").write_text(
        "name: tiny\ngrid: {model.n_1x1: [0]}\nstages: [train]\nmodel: {width: 0.125}\n"
        f"data: {{dataset: imagefolder, path: {tmp_path / 'imgs'}}}\n"
        "train: {val_size: 30, epochs: 2, batch_size: 32, eval_batch_size: 64, time_to_acc: []}\n")
    monkeypatch.chdir(tmp_path)
    threads = __import__("torch").get_num_threads()
    try:
        code = main(["run", "s.yaml", "--quick", "--stages", "train", "--no-progress", "--out", "out"])
    finally:
        __import__("torch").set_num_threads(threads)  # the run sets the process's thread count
    assert code == 0, capfd.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "out" / "records.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("stage") == "train"]
    assert train and all(r["status"] == "ok" for r in train), train
    assert {(r["val_size"], r["train_size"], r["epochs"]) for r in train} == {(30, 170, 1)}
