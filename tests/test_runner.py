"""The runner end to end: records, summary, manifest, resume, superseding foreign results, error rows."""
import json
import os
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from nin_bench.measure.ceilings import Ceilings
from nin_bench.run import runner
from nin_bench.run.runner import run_suite
from nin_bench.store.folder import ResultsDir
from nin_bench.store.schema import RECORD_KINDS, key_allowed
from nin_bench.suite.config import (
    config_of_folder,
    load_config,
    resolve_protocol,
    validate,
)

ROOT = Path(__file__).parents[1]
# No runner test checks a figure (tests/test_report.py does): each run's report draws none.
pytestmark = pytest.mark.usefixtures("no_figures")
# no minimum window (`min_window_ms`): these tests check what the runner does with timing rows, not their noise
# Per-layer time (torch.profiler) is most of a small timing unit's cost: only the tests that check layer rows or
# the memory bandwidth (measured for the layer rows' roofline) measure them (LAYERED).
SMALL_TIMING = {"batch_sizes": [1, 4], "reference_batch_size": 4, "warmup": 1, "repeats": 3, "min_window_ms": 0.0,
                "layer_timing": False}
LAYERED = {**SMALL_TIMING, "layer_timing": True}
# Fixed ceilings handed to the runs of tests that do not check the measured ones (measuring costs ~20 s a run).
FIXED = Ceilings("cpu", {"fp32": 1e11, "bf16": 2e11}, 1e10)


def _suite(**extra):
    raw = {"name": "t", "model": {"width": 0.125}, "stages": ["profile", "timing"], "timing": SMALL_TIMING,
           "threads": 1, "grid": {"data.dataset": ["cifar10", "fashion_mnist"], "model.n_1x1": [0, 2]}, **extra}
    cfg, protocol, _ = resolve_protocol(validate(raw), cuda=False)
    return cfg, protocol


def _run(cfg, protocol, out, ceilings=FIXED):
    logs = []
    run_suite(cfg, out, protocol=protocol, progress=False, log=logs.append, ceilings=ceilings)
    return logs


def test_profile_timing_run_writes_every_file_and_resumes(tmp_path):
    cfg, protocol = _suite()
    _run(cfg, protocol, tmp_path)
    for name in ("records.jsonl", "summary.csv", "config.resolved.yaml", "manifest.json", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    records = ResultsDir(tmp_path).read_records()
    assert sum(r["stage"] == "profile" for r in records) == 4
    assert sum(r["stage"] == "timing" for r in records) == 4 * 2 * 2  # variants x modes x batch sizes
    assert all(r["status"] == "ok" and r["protocol"] == "cpu" for r in records)
    timing = [r for r in records if r["stage"] == "timing"]
    assert all(r["ms_p25"] <= r["ms_median"] <= r["ms_p75"] for r in timing)
    # MFU divides by the ceiling the run was handed, in every row
    assert all(r["peak_tflops"] == 0.1 and r["mfu"] == pytest.approx(r["achieved_tflops"] / 0.1) for r in timing)
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert len(summary) == 4 and summary["batch_size"].eq(4).all()
    assert summary["fwd_img_per_s"].gt(0).all() and summary["train_img_per_s"].gt(0).all()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["threads"] >= 1 and manifest["torch_version"] and manifest["peak_tflops"] == {"fp32": 0.1}

    logs = _run(cfg, protocol, tmp_path)  # resume: nothing left to do
    assert "0 units to run" in logs[0]
    assert len(ResultsDir(tmp_path).read_records()) == len(records)


def test_committed_results_continue_on_the_same_device_and_are_set_aside_elsewhere(tmp_path):
    """Whether a folder is continued is read from its own files, never from ignored state: a fresh clone (no
    .cache/) continues; records from another kind of device, or another config, are moved aside, not deleted."""
    cfg, protocol = _suite(stages=["profile"])
    _run(cfg, protocol, tmp_path)
    shutil.rmtree(tmp_path / ".cache")  # as on a fresh clone of committed results
    logs = _run(cfg, protocol, tmp_path)
    assert "0 units to run" in logs[0] and not list(tmp_path.glob(".cache/superseded-*"))

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "device": "cuda", "device_name": "NVIDIA H200"}))
    logs = _run(cfg, protocol, tmp_path)  # the committed numbers were measured on another device
    assert "another device (NVIDIA H200)" in logs[0] and "measuring afresh" in logs[0] and "4 units to run" in logs[1]
    assert len(ResultsDir(tmp_path).read_records()) == 4
    superseded = list((tmp_path / ".cache").glob("superseded-*/records.jsonl"))
    assert len(superseded) == 1 and len(ResultsDir(superseded[0].parent).read_records()) == 4  # kept

    cfg2, _ = _suite(stages=["profile"], model={"width": 0.25})  # another config: another measurement
    logs = _run(cfg2, protocol, tmp_path)
    assert "another config or protocol" in logs[0]


def test_a_folder_from_another_cpu_keeps_its_counts_and_measures_its_speed_again(tmp_path):
    """Sessions land on different CPU models: a CPU folder continues on any CPU, keeping what does not depend on
    the machine's speed (training, counts) and re-timing here, so no folder mixes two machines' timing rows."""
    cfg, protocol = _suite(grid={"model.n_1x1": [0, 2]}, timing=LAYERED)
    _run(cfg, protocol, tmp_path)
    rd = ResultsDir(tmp_path)
    before = rd.read_records()
    theirs = [{**r, "device_name": "AMD EPYC"} for r in before]
    rd.records.write_text("".join(json.dumps(r) + "\n" for r in theirs))
    manifest = json.loads(rd.manifest.read_text())
    rd.manifest.write_text(json.dumps({**manifest, "device_name": "AMD EPYC"}))
    logs = _run(cfg, protocol, tmp_path)
    n_speed = sum(r["stage"] in ("timing", "timing_round", "layer_timing") for r in before)
    assert f"continuing; its training and profile records stand, and its {n_speed} speed records (made on another " \
           "CPU (AMD EPYC)) are measured again here" in logs[0]
    assert "1 units to run" in logs[1]  # the timing of both variants, side by side: one unit; no profile unit
    after = rd.read_records()
    profile = [r for r in after if r["stage"] == "profile"]
    assert [r["device_name"] for r in profile] == ["AMD EPYC"] * 2  # kept as measured
    speed = [r for r in after if r["stage"] in ("timing", "timing_round")]
    assert speed and {r["device_name"] for r in speed} == {manifest["device_name"]}  # measured here, only here
    assert len(speed) == sum(r["stage"] in ("timing", "timing_round") for r in before)
    copies = list((tmp_path / ".cache").glob("superseded-*/records.jsonl"))
    # the whole folder as it was, copied aside
    assert len(copies) == 1 and copies[0].read_text() == "".join(json.dumps(r) + "\n" for r in theirs)


def test_timing_made_before_rounds_is_measured_again_and_the_rest_stands(tmp_path):
    """Timing rows without `rounds` (a folder timed before interleaved rounds) are re-timed on the same machine;
    its profile records are kept, not re-measured."""
    cfg, protocol = _suite(grid={"model.n_1x1": [0]}, timing=LAYERED)
    _run(cfg, protocol, tmp_path)
    rd = ResultsDir(tmp_path)
    before = rd.read_records()
    old = [{k: v for k, v in r.items() if k != "rounds"} for r in before if r["stage"] != "timing_round"]
    rd.records.write_text("".join(json.dumps(r) + "\n" for r in old))
    logs = _run(cfg, protocol, tmp_path)
    n_speed = sum(r["stage"] in ("timing", "layer_timing") for r in old)  # 4 timing rows and their layer rows
    assert f"its {n_speed} speed records (made before timing ran in rounds) are measured again here" in logs[0]
    assert "1 units to run" in logs[1]
    after = rd.read_records()
    assert [r for r in after if r["stage"] == "profile"] == [r for r in before if r["stage"] == "profile"]
    timing = [r for r in after if r["stage"] == "timing"]
    assert len(timing) == 4 and all(r["rounds"] >= 1 for r in timing)
    assert "0 units to run" in _run(cfg, protocol, tmp_path)[0]  # now in rounds: nothing more to do


def test_retime_measures_the_speed_records_again_and_nothing_else(tmp_path):
    """`run --retime`: a folder in rounds on this machine gives up its timing, rounds and layer rows (copied
    aside) and measures them again; its profile records stand."""
    cfg, protocol = _suite(grid={"model.n_1x1": [0]}, timing=LAYERED)
    _run(cfg, protocol, tmp_path)
    rd = ResultsDir(tmp_path)
    before = rd.read_records()
    speed = [r for r in before if r["stage"] in ("timing", "timing_round", "layer_timing")]
    assert "0 units to run" in _run(cfg, protocol, tmp_path)[0]  # without --retime nothing is measured again
    logs = []
    run_suite(cfg, tmp_path, protocol=protocol, progress=False, log=logs.append, ceilings=FIXED, retime=True)
    assert f"its {len(speed)} speed records (given up by --retime) are measured again here" in logs[0]
    assert "1 units to run" in logs[1]
    after = rd.read_records()
    assert [r for r in after if r["stage"] == "profile"] == [r for r in before if r["stage"] == "profile"]
    again = [r for r in after if r["stage"] in ("timing", "timing_round", "layer_timing")]
    assert len(again) == len(speed) and again != speed
    (aside,) = (tmp_path / ".cache").glob("superseded-*")
    assert ResultsDir(aside).read_records() == before  # the folder as it was, copied aside


def test_a_folder_written_before_threads_moved_is_continued(tmp_path):
    """config.resolved.yaml from before `timing.threads` became the run-level `threads` reads as the same config."""
    cfg, protocol = _suite(stages=["profile"])
    _run(cfg, protocol, tmp_path)
    old = yaml.safe_load((tmp_path / "config.resolved.yaml").read_text())
    old["timing"]["threads"] = old.pop("threads")
    (tmp_path / "config.resolved.yaml").write_text(yaml.safe_dump(old))
    assert "0 units to run" in _run(cfg, protocol, tmp_path)[0]


# Suites changed on purpose since their committed folder was made (that folder is measured afresh by design): none
# now (dropout's, changed to the converged protocol by issue 18, was re-made under it).
CHANGED_SUITES: dict[str, str] = {}


@pytest.mark.parametrize("folder", sorted(p.parent.name for p in (ROOT / "results").glob("*/manifest.json")))
def test_committed_folders_continue_under_the_command_that_made_them(folder):
    """The command a committed folder's manifest records still resolves to the config the folder holds (read
    through today's keys, new keys at their defaults): the same command continues it, never re-measures it."""
    rd = ResultsDir(ROOT / "results" / folder)
    argv = shlex.split(rd.read_manifest()["command"])
    argv = argv[argv.index("run") + 1:]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    cfg = load_config(ROOT / argv[0], sets)
    resolved, protocol, _ = resolve_protocol(cfg, cuda=False, full="--full" in argv, quick="--quick" in argv,
                                             sets=sets)
    theirs = config_of_folder(rd.read_config())
    assert theirs is not None
    same = runner.fingerprint(*theirs) == runner.fingerprint(resolved, protocol)
    assert same is (folder not in CHANGED_SUITES), CHANGED_SUITES.get(folder, folder)


def test_a_failing_unit_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import nin_bench.run.stages as stages

    real = stages.run_profile

    def flaky(variant, ctx):
        if variant.config.model.n_1x1 == 0:
            raise RuntimeError("planted failure")
        return real(variant, ctx)

    monkeypatch.setattr(stages, "run_profile", flaky)
    cfg, protocol = _suite(stages=["profile"])
    _run(cfg, protocol, tmp_path)
    records = ResultsDir(tmp_path).read_records()
    errors = [r for r in records if r["status"] == "error"]
    assert len(errors) == 2 and all("planted failure" in r["error"] for r in errors)
    monkeypatch.setattr(stages, "run_profile", real)  # the retry succeeds and replaces the error rows
    logs = _run(cfg, protocol, tmp_path)
    assert "2 units to run" in logs[0]
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["params"].notna().all()


@pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"), reason="set NIN_BENCH_DATA (CI: ../shared/data)")
def test_train_end_to_end_on_real_fashion_mnist(tmp_path):
    cfg, protocol = _suite(
        stages=["profile", "timing", "train"], seeds=[0], grid={"model.n_1x1": [0]},
        data={"dataset": "fashion_mnist"}, model={"width": 0.125, "batchnorm": True, "dropout": 0.0},
        # 62 steps of the tiny BN NiN without 1x1 convs (half the cost of two): about 71 % test accuracy
        # (tests/test_gpu_ready.py's inductor pair trains the same model)
        train={"epochs": 2, "subset": 2000, "val_size": 500, "test_subset": 1000, "batch_size": 64, "lr": 0.1,
               "schedule": "cosine", "warmup_epochs": 0.0},
        timing={**LAYERED, "batch_sizes": [1, 64], "reference_batch_size": 64},
    )
    _run(cfg, protocol, tmp_path)
    records = ResultsDir(tmp_path).read_records()
    final = [r for r in records if r["stage"] == "train"]
    assert len(final) == 1 and final[0]["status"] == "ok", final
    assert final[0]["test_acc"] > 0.5, final[0]["test_acc"]  # ten classes: chance is 0.1
    assert final[0]["loop_efficiency"] > 0  # a ratio of two throughputs: its size is a benchmark's business
    kinds = {r["stage"] for r in records}
    assert kinds == set(RECORD_KINDS)  # every kind of record, each key of it named in the record schema
    assert [(r["stage"], k) for r in records for k in r if not key_allowed(r["stage"], k)] == []
    assert final[0]["data_source"].startswith("Fashion-MNIST") and len(final[0]["data_sha256"]) == 64
    assert (tmp_path / final[0]["maps_file"]).exists()
    preds = np.load(tmp_path / final[0]["preds_file"])  # the contract the per-image paired tests read
    assert final[0]["preds_file"] == f"preds/{final[0]['variant']}-seed0.npz"
    assert sorted(preds.files) == ["label", "pred"] and preds["pred"].dtype == preds["label"].dtype == np.uint8
    assert preds["pred"].shape == (final[0]["test_size"],) and final[0]["test_size"] == 1000  # train.test_subset
    assert (preds["pred"] == preds["label"]).mean() == pytest.approx(final[0]["test_acc"], abs=1e-12)
    epochs = [r for r in records if r["stage"] == "train_epoch"]
    assert all(0 < r["train_eval_acc"] <= 1 for r in epochs)
    assert final[0]["train_eval_size"] == 2000  # all 2,000: fewer than 5,000
    assert all(r["head_dropout"] == 0.0 for r in records)  # a GAP head has no dropout layer
    assert not list((tmp_path / ".cache" / "checkpoints").glob("*.pt"))  # finished runs drop their checkpoint
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary.loc[0, "test_acc"] == pytest.approx(final[0]["test_acc"])


def test_timing_alone_still_reports_mfu(tmp_path):
    cfg, protocol = _suite(stages=["timing"], grid={"model.n_1x1": [1]},
                           timing={**LAYERED, "batch_sizes": [2], "reference_batch_size": 2})
    _run(cfg, protocol, tmp_path)
    rows = ResultsDir(tmp_path).read_records()
    timing = [r for r in rows if r["stage"] == "timing"]
    assert len(timing) == 2 and {r["stage"] for r in rows} == {"timing", "timing_round", "layer_timing"}  # no profile
    assert all(r["mfu"] > 0 for r in timing)
    layers = [r for r in rows if r["stage"] == "layer_timing"]
    # per-layer time at the reference batch right after the forward row it is compared with
    assert layers[-1]["layer"] == "rest" and {r["timing_fwd_ms"] for r in layers} == {timing[0]["ms_median"]}
    assert all(r["bound"] in ("memory", "compute") for r in layers[:-1])


def test_ceilings_are_measured_once_for_the_dtypes_the_timing_units_use(tmp_path, monkeypatch):
    """One measurement per dtype (with the suite's convolutions as a candidate) and one of the bandwidth for the
    whole run, none without timing units; the manifest names every candidate and the source that won."""
    calls = []
    monkeypatch.setattr("nin_bench.measure.ceilings.gemm_peaks",
                        lambda device, dtype: calls.append(dtype) or {"gemm_blas": 3e11, "gemm_onednn": 2e11})
    monkeypatch.setattr("nin_bench.measure.ceilings.conv_peak",
                        lambda shapes, device, dtype: calls.append(("conv", len(shapes))) or 1e11)
    monkeypatch.setattr("nin_bench.measure.ceilings.isa_peak_now", lambda: None)
    monkeypatch.setattr("nin_bench.measure.ceilings.memory_bandwidth", lambda device: calls.append("bw") or 2e10)
    cfg, protocol = _suite(timing={**LAYERED, "batch_sizes": [2], "reference_batch_size": 2,
                                   "dtypes": ["fp32", "bf16"], "modes": ["forward"]}, stages=["timing"],
                           grid={"model.n_1x1": [0, 1]})
    logs = _run(cfg, protocol, tmp_path, ceilings=None)
    # two variants, one measurement each; the convs of both models (3 + 6), the block-2 5x5 they share once
    assert sorted(map(str, calls)) == ["('conv', 8)", "('conv', 8)", "bf16", "bw", "fp32"]
    assert any(line.startswith("ceilings: bf16 0.3 (gemm_blas), fp32 0.3 (gemm_blas) TFLOP/s") for line in logs)
    timing = [r for r in ResultsDir(tmp_path).read_records() if r["stage"] == "timing"]
    assert {r["peak_tflops"] for r in timing} == {0.3}
    manifest = json.loads((tmp_path / "manifest.json").read_text())["ceilings"]
    assert manifest["peak_source"] == {"fp32": "gemm_blas", "bf16": "gemm_blas"}
    assert manifest["candidates_tflops"]["fp32"] == {"gemm_blas": 0.3, "gemm_onednn": 0.2, "conv_suite": 0.1}
    calls.clear()
    units = [u for u in runner.plan(runner.expand_grid(cfg), cfg, set()) if u.stage == "profile"]
    assert runner.run_ceilings(units, "cpu", print).peak_flops == {} and calls == []


def test_the_manifest_names_the_ceilings_from_their_measurement_on_and_a_continuation_keeps_them(tmp_path,
                                                                                                monkeypatch):
    """Written as soon as they are measured (a run killed before its end still says what its timing rows were
    given), and kept by a continuation that times nothing; given up with the rows (--retime)."""
    monkeypatch.setattr("nin_bench.measure.ceilings.gemm_peaks", lambda device, dtype: {"gemm_blas": 3e11})
    monkeypatch.setattr("nin_bench.measure.ceilings.conv_peak", lambda shapes, device, dtype: 1e11)
    monkeypatch.setattr("nin_bench.measure.ceilings.isa_peak_now", lambda: None)
    monkeypatch.setattr("nin_bench.measure.ceilings.memory_bandwidth", lambda device: 2e10)
    cfg, protocol = _suite(stages=["timing"], grid={"model.n_1x1": [0]}, timing=LAYERED)
    real = runner.run_units

    def killed(*args, **kwargs):  # the process dies before its first unit is stored
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_units", killed)
    with pytest.raises(KeyboardInterrupt):
        _run(cfg, protocol, tmp_path, ceilings=None)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["peak_tflops"] == {"fp32": 0.3} and manifest["ceilings"]["peak_source"] == {"fp32": "gemm_blas"}
    assert manifest["mem_gb_per_s"] == 20.0
    monkeypatch.setattr(runner, "run_units", real)
    _run(cfg, protocol, tmp_path, ceilings=None)  # the timing is made
    first = json.loads((tmp_path / "manifest.json").read_text())
    profile_cfg, _ = _suite(stages=["profile"], grid={"model.n_1x1": [0]}, timing=LAYERED)
    _run(profile_cfg, protocol, tmp_path, ceilings=None)  # measures no ceiling
    kept = json.loads((tmp_path / "manifest.json").read_text())
    assert {k: kept[k] for k in runner.CEILING_KEYS} == {k: first[k] for k in runner.CEILING_KEYS}
    assert kept["ceilings"]["candidates_tflops"]["fp32"] == {"gemm_blas": 0.3, "conv_suite": 0.1}
    monkeypatch.setattr("nin_bench.measure.ceilings.gemm_peaks", lambda device, dtype: {"gemm_blas": 4e11})
    logs = []
    run_suite(cfg, tmp_path, protocol=protocol, progress=False, log=logs.append, retime=True)
    assert json.loads((tmp_path / "manifest.json").read_text())["ceilings"]["peak_tflops"] == {"fp32": 0.4}


def test_a_unit_context_sent_to_a_worker_keeps_the_run_ceilings(tmp_path):
    from nin_bench.run.unit import RunContext

    ctx = RunContext(ResultsDir(tmp_path), "cpu", "cpu", "cpu", ceilings=FIXED)
    assert ctx.fresh().ceilings is FIXED
