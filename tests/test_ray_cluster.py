"""The Ray executor joining a real two-node cluster on this machine (`ray start` in subprocesses, no mocks).

The head and the worker node run with environments unlike the driver's (the head's NIN_BENCH_DATA points at
nothing, the worker node has none), so a run passes only when the driver's data root and code reach the tasks.
One cluster serves the module; the last test kills the worker node mid-training. Every process a test starts is
in a process group of its own, killed at the end, and the cluster lives under its own --temp-dir and free ports,
so no other Ray instance on the machine is touched.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from nin_bench.run.ray_executor import RayUnavailable, check_fits  # noqa: E402
from nin_bench.run.runner import run_suite  # noqa: E402
from nin_bench.run.stages import Unit  # noqa: E402
from nin_bench.store.folder import ResultsDir  # noqa: E402
from nin_bench.store.records import record_key  # noqa: E402
from nin_bench.suite.config import resolve_protocol, validate  # noqa: E402
from nin_bench.suite.variants import expand_grid  # noqa: E402

needs_data = pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"), reason="set NIN_BENCH_DATA (CI: ../shared/data)")
# A node whose process dies is declared dead after ~3 s instead of Ray's default ~30 s; token authentication
# (Ray's default for `ray start --head`) is off, so the test needs no token file of the user's.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
           "RAY_health_check_failure_threshold": "3", "RAY_USAGE_STATS_ENABLED": "0"}

SUITE = """
name: cluster
seeds: [0, 1]
stages: [profile, train]
threads: 1
model: {width: 0.125, batchnorm: true, dropout: 0.0}
data: {dataset: fashion_mnist}
grid: {model.n_1x1: [1]}
train: {epochs: 2, subset: 400, val_size: 100, batch_size: 50, lr: 0.1, schedule: cosine, warmup_epochs: 0,
        augment: none}
"""


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

    def driver_env(self) -> dict[str, str]:
        """The driver's shell: the data root set here only, RAY_ADDRESS for `--ray-address auto`."""
        return _env(NIN_BENCH_DATA=self.data, RAY_ADDRESS=self.address)


@pytest.fixture(scope="module")
def cluster():
    data = os.environ.get("NIN_BENCH_DATA")
    if not data:
        pytest.skip("set NIN_BENCH_DATA (CI: ../shared/data)")
    tmp = Path(tempfile.mkdtemp(prefix="nbray", dir="/tmp"))  # short: Ray's socket paths live under it
    c = Cluster(tmp, str(Path(data).resolve()))
    try:
        c.start("head", ["--head", f"--port={c.port}", f"--ray-client-server-port={c.client_port}",
                         f"--dashboard-port={_free_port()}", "--include-dashboard=false", f"--temp-dir={tmp}"],
                _env(NIN_BENCH_DATA=str(tmp / "no-data-here")))
        c.start("worker", [f"--address={c.address}"], _env())
        yield c
    finally:
        c.kill("worker")
        c.kill("head")


def _run(suite: Path, out: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "nin_bench", "run", str(suite), "--out", str(out), "--device", "cpu",
           "--no-progress", "--no-figures", "--executor", "ray", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd="/")


def _accuracies(out: Path) -> dict:
    records = ResultsDir(out).read_records()
    assert len({record_key(r) for r in records}) == len(records)  # every record once
    assert all(r["status"] == "ok" for r in records)
    return {(r["variant"], r["seed"]): r["test_acc"] for r in records if r["stage"] == "train"}


@needs_data
def test_ray_client_join_gives_the_local_executors_results(cluster, tmp_path, no_figures):
    """ray://: the data root only in the driver's shell, the code through py_modules, both nodes used."""
    suite = tmp_path / "suite.yaml"
    suite.write_text(SUITE)
    proc = _run(suite, tmp_path / "ray", cluster.driver_env(), "--ray-address", f"ray://127.0.0.1:{cluster.client_port}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "worker processes on 2 nodes" in proc.stdout, proc.stdout[-2000:]
    assert list(cluster.tmp.glob("session_*/runtime_resources/py_modules_files/*"))  # this checkout's code went
    cfg, protocol, _ = resolve_protocol(validate(__import__("yaml").safe_load(SUITE)), cuda=False)
    run_suite(cfg, tmp_path / "local", protocol=protocol, progress=False, log=lambda m: None)
    local = _accuracies(tmp_path / "local")
    assert len(local) == 2 and local == _accuracies(tmp_path / "ray")  # same seeds, same threads: bit-identical


NO_FIT_AND_NO_DATA = """
import sys
from tqdm import tqdm
from nin_bench.data.datasets import DataError
from nin_bench.run.ray_executor import RayUnavailable, run_on_ray
from nin_bench.run.stages import RunContext, Unit
from nin_bench.store.folder import ResultsDir
from nin_bench.suite.config import resolve_protocol, validate
from nin_bench.suite.variants import expand_grid

raw = {"name": "t", "model": {"width": 0.125}, "grid": {"model.n_1x1": [0]}, "data": {"root": "/no/such/data"}}
cfg, protocol, _ = resolve_protocol(validate(raw), cuda=False)
units = [Unit(expand_grid(cfg)[0], "train", 0)]
ctx = RunContext(ResultsDir(sys.argv[2]), "cpu", "cpu", protocol, False)
for threads in (2, 1):  # two threads: no node has 2 CPUs; one: the unit runs and finds no data
    try:
        run_on_ray(units, ctx, [], lambda u, r: None, tqdm(disable=True), address=sys.argv[1], threads=threads)
    except (RayUnavailable, DataError) as exc:
        print(type(exc).__name__, exc)
"""


@needs_data
def test_no_fitting_node_and_missing_data_are_one_line_errors(cluster, tmp_path):
    proc = subprocess.run([sys.executable, "-c", NO_FIT_AND_NO_DATA, cluster.address, str(tmp_path / "out")],
                          env=cluster.driver_env(), capture_output=True, text=True, timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("RayUnavailable", "DataError"))]
    assert len(lines) == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert lines[0].startswith("RayUnavailable") and "needs 2 CPUs" in lines[0] and "threads=1" in lines[0]
    assert lines[1].startswith("DataError on Ray node") and socket.gethostname() in lines[1]


def test_unreachable_addresses_exit_2_with_one_line_within_a_minute(tmp_path):
    (tmp_path / "suite.yaml").write_text("name: t\nmodel: {width: 0.125}\ngrid: {model.n_1x1: [0]}\n")
    for address in ("127.0.0.1:1", "ray://127.0.0.1:1"):
        t0 = time.monotonic()
        proc = _run(tmp_path / "suite.yaml", tmp_path / "out", _env(), "--ray-address", address)
        assert time.monotonic() - t0 < 60
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "no Ray cluster at" in lines[0], proc.stderr[-2000:]


def test_a_unit_no_node_can_hold_is_refused():
    variant = expand_grid(resolve_protocol(validate({"name": "t", "grid": {"model.n_1x1": [0]}}), cuda=False)[0])[0]
    cpu_node = [{"Alive": True, "Resources": {"CPU": 4.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1.0}}]
    check_fits([Unit(variant, "train", 0)], "cpu", 4, cpu_node)
    with pytest.raises(RayUnavailable, match="needs 1 CPUs and 1 GPUs.*--device cpu"):
        check_fits([Unit(variant, "train", 0)], "cuda", 1, cpu_node)
    with pytest.raises(RayUnavailable, match="needs 6 CPUs.*threads=4"):
        check_fits([Unit(variant, "timing")], "cpu", 6, cpu_node)


KILL_SUITE = SUITE.replace("stages: [profile, train]",
                                                                            "stages: [train]").replace(
    "epochs: 2, subset: 400", "epochs: 4, subset: 2000")


def _node_processes(group: int) -> dict[str, str]:
    """pid -> command line of a node's processes: the group `ray start` left, and the workers its raylet forked."""
    rows = [line.split(None, 3) for line in
            subprocess.run(["ps", "-ww", "-eo", "pid,pgid,ppid,args"], capture_output=True, text=True).stdout.splitlines()[1:]]
    daemons = {r[0] for r in rows if r[1] == str(group)}
    return {r[0]: r[3] if len(r) > 3 else "" for r in rows if r[0] in daemons or r[2] in daemons}


def _node_training(group: int) -> bool:
    return any("ray::nin_bench" in args and " train s" in args for args in _node_processes(group).values())


@needs_data
def test_a_worker_node_killed_mid_training_is_retried_on_the_head_and_resumes(cluster, tmp_path):
    """Runs last: the worker node does not come back."""
    suite, out = tmp_path / "suite.yaml", tmp_path / "out"
    suite.write_text(KILL_SUITE)
    cmd = [sys.executable, "-m", "nin_bench", "run", str(suite), "--out", str(out), "--device", "cpu",
           "--no-progress", "--no-figures", "--executor", "ray", "--ray-address", "auto"]
    proc = subprocess.Popen(cmd, env=cluster.driver_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd="/")
    killed, deadline, seen = False, time.time() + 240, set()
    while not killed and proc.poll() is None and time.time() < deadline:
        # both seeds (one per node) have an epoch on disk and the worker node is still training: kill the node
        seen |= set(_node_processes(cluster.groups["worker"]).values())
        if len(list((out / ".cache" / "checkpoints").glob("*"))) >= 2 and _node_training(cluster.groups["worker"]):
            cluster.kill("worker")
            killed = True
        time.sleep(0.1)
    output = proc.communicate(timeout=300)[0]
    assert killed, output[-2000:] + str(seen)[-2000:]
    assert proc.returncode == 0, output[-3000:]
    records = ResultsDir(out).read_records()
    assert sorted(r["seed"] for r in records if r["stage"] == "train") == [0, 1]
    assert all(r["status"] == "ok" for r in records)
    assert "resumed" in output.lower(), output[-3000:]
