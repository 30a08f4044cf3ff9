"""The Ray executor on a real two-node Ray cluster on this machine (`ray start` in subprocesses, no mocks), and on
the local instance a run starts by default: the local executor's accuracies, a killed driver resumed, a killed
worker node retried and resumed, every unit recorded once; without Ray, one line and exit 2. (An address nothing
answers is refused before torch is imported: tests/test_cli.py's light commands.)

The head and the worker node run with environments unlike the driver's (the head's NIN_BENCH_DATA points at
nothing, the worker node has none), so a run passes only when the driver's data root and code reach the tasks.
One cluster serves the module (starting one costs about 10 s, a local instance about 15 s); the last test kills
its worker node. Every process a test starts is in a process group of its own, killed at the end, and the cluster
lives under its own --temp-dir and free ports, so no other Ray instance on the machine is touched.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from tqdm import tqdm

ray = pytest.importorskip("ray")

from nin_bench.cli import main  # noqa: E402
from nin_bench.data.datasets import DataError  # noqa: E402
from nin_bench.measure.ceilings import Ceilings  # noqa: E402
from nin_bench.run.ray_executor import RayUnavailable, check_fits, run_on_ray, unit_resources  # noqa: E402
from nin_bench.run.runner import run_suite  # noqa: E402
from nin_bench.run.stages import Unit  # noqa: E402
from nin_bench.run.unit import RunContext  # noqa: E402
from nin_bench.store.folder import ResultsDir  # noqa: E402
from nin_bench.store.records import record_key  # noqa: E402
from nin_bench.suite.config import resolve_protocol, validate  # noqa: E402
from nin_bench.suite.variants import expand_grid  # noqa: E402

needs_data = pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"), reason="set NIN_BENCH_DATA (CI: ../shared/data)")
# A node whose process dies is declared dead after ~3 s instead of Ray's default ~30 s; token authentication
# (Ray's default for `ray start --head`) is off, so the test needs no token file of the user's.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "RAY_USAGE_STATS_ENABLED": "0"}

TRAIN = {"epochs": 2, "subset": 800, "val_size": 200, "test_subset": 1000, "batch_size": 64, "lr": 0.1,
         "schedule": "cosine", "warmup_epochs": 0.0, "augment": "none"}
RAW = {"name": "ray", "seeds": [0, 1], "stages": ["profile", "timing", "train"],
       "model": {"width": 0.125, "batchnorm": True, "dropout": 0.0}, "data": {"dataset": "fashion_mnist"},
       "grid": {"model.n_1x1": [1]},
       "timing": {"batch_sizes": [2, 8], "reference_batch_size": 8, "warmup": 1, "repeats": 3,
                  "min_window_ms": 0.0, "layer_timing": False}, "threads": 1,
       "train": TRAIN}
# RAW's training as a suite file for the CLI (what is killed and resumed is training: no timing, no ceilings to
# measure); the resumed run must give the local executor's accuracies
SUITE = yaml.safe_dump({**{k: v for k, v in RAW.items() if k != "timing"}, "stages": ["profile", "train"]})
# long enough to kill a node mid-training: once both seeds have their first epoch checkpointed, the worker node's
# has two epochs of 1,300 images left (seconds, polled every 0.1 s)
KILL_SUITE = yaml.safe_dump({**yaml.safe_load(SUITE), "stages": ["train"], "train": {**TRAIN, "epochs": 3,
                                                                                      "subset": 1500}})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NIN_BENCH_", "RAY_"))}
    return {**env, **RAY_ENV, **extra}


class Cluster:
    """A head and a worker node, each `ray start`ed as the leader of its own process group."""

    def __init__(self, tmp: Path, data: str) -> None:
        self.tmp, self.data = tmp, data
        self.port, self.client_port = _free_port(), _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.groups: dict[str, int] = {}
        self.local_accuracies: dict = {}  # the local executor's, for RAW's training (the `cluster` fixture's)

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115  (kept open by the daemons it starts)
        proc = subprocess.Popen(["ray", "start", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats", *args],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.groups[name] = proc.pid  # the daemons stay in this group after `ray start` returns
        assert proc.wait(timeout=120) == 0, (self.tmp / f"{name}.log").read_text()[-3000:]

    def kill(self, name: str) -> None:
        """SIGKILL the node: its daemons' group and the workers its raylet started (each in a group of its own)."""
        group = self.groups.pop(name, None)
        for pid in _node_processes(group) if group else []:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def cluster():
    """The two nodes, started in a thread while this one trains the local executor's reference (`RAW`'s training,
    one thread: `cluster.local_accuracies`), so that `ray start`'s waiting and the training share the two cores."""
    data = os.environ.get("NIN_BENCH_DATA")
    if not data:
        pytest.skip("set NIN_BENCH_DATA (CI: ../shared/data)")
    tmp = Path(tempfile.mkdtemp(prefix="nbray", dir="/tmp"))  # short: Ray's socket paths live under it
    c = Cluster(tmp, str(Path(data).resolve()))

    def start_nodes() -> None:
        c.start("head", ["--head", f"--port={c.port}", f"--ray-client-server-port={c.client_port}",
                         f"--dashboard-port={_free_port()}", "--include-dashboard=false", f"--temp-dir={tmp}"],
                _env(NIN_BENCH_DATA=str(tmp / "no-data-here")))
        c.start("worker", [f"--address={c.address}"], _env())

    starter = ThreadPoolExecutor(1)
    started = starter.submit(start_nodes)
    try:
        c.local_accuracies = _local_accuracies(tmp / "local")
        started.result()  # raises what the start raised
        yield c
    finally:
        starter.shutdown(wait=True)
        c.kill("worker")
        c.kill("head")
        shutil.rmtree(tmp, ignore_errors=True)  # the cluster's logs and sockets


def _local_accuracies(out: Path) -> dict:
    """The local executor's test accuracies for RAW's training (the Ray runs here are compared to them)."""
    cfg, protocol, _ = resolve_protocol(validate({**RAW, "stages": ["train"]}), cuda=False)
    run_suite(cfg, out, protocol=protocol, progress=False, log=lambda m: None, figures=False)
    return _accuracies(out)


def _accuracies(out: Path) -> dict:
    records = ResultsDir(out).read_records()
    assert len({record_key(r) for r in records}) == len(records)  # every record once
    assert all(r["status"] == "ok" for r in records)
    return {(r["variant"], r["seed"]): r["test_acc"] for r in records if r["stage"] == "train"}


def _cmd(suite: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "nin_bench", "run", str(suite), "--out", str(out), "--device", "cpu",
            "--no-progress", "--no-figures", "--executor", "ray", *extra]


def test_resources_per_unit():
    variant = expand_grid(resolve_protocol(validate(RAW), cuda=False)[0])[0]
    assert unit_resources(Unit(variant, "train", 0), "cuda", 4) == {"num_cpus": 1, "num_gpus": 1}
    assert unit_resources(Unit(variant, "timing"), "cuda", 4) == {"num_cpus": 1, "num_gpus": 1}
    assert unit_resources(Unit(variant, "timing"), "cpu", 2) == {"num_cpus": 2, "num_gpus": 0}
    assert unit_resources(Unit(variant, "profile"), "cpu", 2) == {"num_cpus": 1, "num_gpus": 0}


def test_a_unit_no_node_can_hold_is_refused():
    variant = expand_grid(resolve_protocol(validate({"name": "t", "grid": {"model.n_1x1": [0]}}), cuda=False)[0])[0]
    cpu_node = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}}]
    check_fits([Unit(variant, "train", 0)], "cpu", 4, cpu_node)
    with pytest.raises(RayUnavailable, match="needs 1 CPUs and 1 GPUs.*--device cpu"):
        check_fits([Unit(variant, "train", 0)], "cuda", 1, cpu_node)
    with pytest.raises(RayUnavailable, match="needs 6 CPUs.*threads=4"):
        check_fits([Unit(variant, "timing")], "cpu", 6, cpu_node)


def test_without_ray_the_executor_exits_2_with_one_line(tmp_path, monkeypatch, capfd):
    """In this process (the refusal comes before any import of Ray): a Python where Ray is not installed, as
    find_spec sees it."""
    import importlib.util

    (tmp_path / "suite.yaml").write_text("name: t\nmodel: {width: 0.125}\ngrid: {model.n_1x1: [0]}\n")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a))
    code = main(["run", str(tmp_path / "suite.yaml"), "--executor", "ray", "--out", str(tmp_path / "out")])
    lines = capfd.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(lines) == 1 and "pip install" in lines[0] and "[ray]" in lines[0]
    assert not (tmp_path / "out").exists()


@needs_data
def test_ray_client_join_gives_the_local_executors_results(cluster, tmp_path, no_figures):
    """ray:// from this process: the data root only in the driver's environment, the code through py_modules, the
    driver's ceilings handed to the timing unit, both nodes used, the local executor's accuracies."""
    cfg, protocol, _ = resolve_protocol(validate(RAW), cuda=False)
    logs = []
    fixed = Ceilings("cpu", {"fp32": 1e11}, 1e10)  # the accuracies are compared, not the MFU
    run_suite(cfg, tmp_path / "ray", protocol=protocol, progress=False, log=logs.append, executor="ray",
              ray_address=f"ray://127.0.0.1:{cluster.client_port}", ceilings=fixed)
    assert not ray.is_initialized()  # the run disconnected what it connected
    assert any("worker processes on 2 nodes" in m for m in logs), logs
    assert "4 units to run" in next(m for m in logs if "ray executor" in m)  # profile, timing, two seeds
    assert list(cluster.tmp.glob("session_*/runtime_resources/py_modules_files/*"))  # this checkout's code went
    local = cluster.local_accuracies
    assert _accuracies(tmp_path / "ray") == local and len(local) == 2  # bit-identical
    assert (tmp_path / "ray" / "report.md").exists()
    timing = [r for r in ResultsDir(tmp_path / "ray").read_records() if r["stage"] == "timing"]
    assert timing and {r["peak_tflops"] for r in timing} == {0.1}  # the driver's ceilings reached the worker


@needs_data
def test_no_fitting_node_and_missing_data_are_one_line_errors(cluster, tmp_path):
    """Joined by the head's GCS address: two threads fit no 1-CPU node; with one, the unit runs and finds no data
    (the message names the node)."""
    raw = {"name": "t", "model": {"width": 0.125}, "grid": {"model.n_1x1": [0]}, "data": {"root": "/no/such/data"}}
    cfg, protocol, _ = resolve_protocol(validate(raw), cuda=False)
    units = [Unit(expand_grid(cfg)[0], "train", 0)]
    ctx = RunContext(ResultsDir(tmp_path / "out"), "cpu", "cpu", protocol, False)
    quiet = tqdm(disable=True)
    with pytest.raises(RayUnavailable, match="needs 2 CPUs.*threads=1"):
        run_on_ray(units, ctx, [], lambda u, r: None, quiet, address=cluster.address, threads=2, log=lambda m: None)
    with pytest.raises(DataError, match=f"^on Ray node {re.escape(socket.gethostname())} "):
        run_on_ray(units, ctx, [], lambda u, r: None, quiet, address=cluster.address, threads=1, log=lambda m: None)
    assert not ray.is_initialized()


def _check_once(out: Path) -> None:
    """One final training record per seed (`_accuracies` checks every record once and every status)."""
    finals = Counter((r["variant"], r.get("seed")) for r in ResultsDir(out).read_records() if r["stage"] == "train")
    assert sorted(finals.values()) == [1] * 2


@needs_data
def test_a_killed_driver_is_resumed_without_rerunning_finished_units(cluster, tmp_path):
    """Killed while running on a local instance of its own (the default: no --ray-address); resumed by the same
    command joining a running cluster (this module's, from this process: no second interpreter start-up), to the
    local executor's accuracies."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(suite, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        recorded = {r["stage"] for r in ResultsDir(out).read_records()}
        if "train" in recorded:  # at least one training unit finished
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = ResultsDir(out).read_records()
    finished = {(r["variant"], r["stage"], r.get("seed")) for r in before if r["stage"] in ("profile", "train")}
    assert finished
    assert main(_cmd(suite, out, "--ray-address", cluster.address)[3:]) == 0  # `run ...` in this process
    assert not ray.is_initialized()
    after = ResultsDir(out).read_records()
    assert after[:len(before)] == before  # the folder only grew
    rerun = {(r["variant"], r["stage"], r.get("seed")) for r in after[len(before):]} & finished
    assert not rerun
    _check_once(out)
    assert _accuracies(out) == cluster.local_accuracies


def _node_processes(group: int) -> dict[str, str]:
    """pid -> command line of a node's processes: the group `ray start` left, and the workers its raylet forked."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,pgid,ppid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 3) for line in ps.splitlines()[1:]]
    daemons = {r[0] for r in rows if r[1] == str(group)}
    return {r[0]: r[3] if len(r) > 3 else "" for r in rows if r[0] in daemons or r[2] in daemons}


def _node_training(group: int) -> bool:
    return any("ray::nin_bench" in args and " train s" in args for args in _node_processes(group).values())


@needs_data
def test_a_worker_node_killed_mid_training_is_retried_on_the_head_and_resumes(cluster, tmp_path, capfd,
                                                                               monkeypatch):
    """Runs last: the worker node does not come back. The driver is `run` in this process, joining by RAY_ADDRESS
    (`--ray-address auto`) from a working directory without the code (it reaches the tasks through py_modules);
    a thread watches the worker node and kills it mid-training."""
    suite, out = tmp_path / "suite.yaml", tmp_path / "out"
    suite.write_text(KILL_SUITE)
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)
    monkeypatch.chdir("/")
    seen: set[str] = set()
    finished = threading.Event()

    def kill_mid_training() -> bool:
        deadline = time.time() + 240
        while not finished.is_set() and time.time() < deadline:
            # both seeds (one per node) have an epoch on disk and the worker node is still training: kill the node
            seen.update(_node_processes(cluster.groups["worker"]).values())
            if len(list((out / ".cache" / "checkpoints").glob("*"))) >= 2 and _node_training(cluster.groups["worker"]):
                cluster.kill("worker")
                return True
            time.sleep(0.1)
        return False

    with ThreadPoolExecutor(1) as side:
        killed = side.submit(kill_mid_training)
        try:
            code = main(_cmd(suite, out, "--ray-address", "auto")[3:])
        finally:
            finished.set()
        output = "".join(capfd.readouterr())
        assert killed.result(), output[-2000:] + str(seen)[-2000:]
    assert code == 0 and not ray.is_initialized(), output[-3000:]
    records = ResultsDir(out).read_records()
    assert sorted(r["seed"] for r in records if r["stage"] == "train") == [0, 1]
    assert all(r["status"] == "ok" for r in records)
    assert "resumed" in output.lower(), output[-3000:]
