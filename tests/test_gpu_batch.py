"""The GPU batch's machinery on the CPU with real torch: seed-major plans, the deadline between timing settings,
units that would not fit the budget not started, training packed on a process pool (the local executor's
numbers, each unit recorded once) and the rehearsal of a whole call."""
from __future__ import annotations

import os
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from nin_bench.measure import timing
from nin_bench.measure.ceilings import Ceilings
from nin_bench.run import gpu_session as gs
from nin_bench.run import unit as unit_mod
from nin_bench.run.budget import Budget, Tally
from nin_bench.run.pool_executor import choose_pack, pack_slowdown
from nin_bench.run.runner import plan, run_suite
from nin_bench.run.timing_stage import timing_settings
from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import completed, record_key
from nin_bench.suite.config import resolve_protocol, validate
from nin_bench.suite.variants import expand_grid

# No test here checks a figure (tests/test_report.py does): the runs' reports draw none.
pytestmark = pytest.mark.usefixtures("no_figures")
needs_data = pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"), reason="set NIN_BENCH_DATA (../shared/data)")
ABLATIONS = Path(__file__).parents[1] / "ablations"
FIXED = Ceilings("cpu", {"fp32": 1e11}, 1e10)  # handed in: the ceilings are not what these tests check
RAW = {"name": "batch", "seeds": [0, 1], "stages": ["profile", "train"], "threads": 1,
       "model": {"width": 0.125, "batchnorm": True, "dropout": 0.0}, "data": {"dataset": "fashion_mnist"},
       "grid": {"model.n_1x1": [0, 1]},
       "timing": {"batch_sizes": [2, 8], "reference_batch_size": 8, "warmup": 1, "repeats": 3, "min_window_ms": 0.0,
                  "layer_timing": False},
       "train": {"epochs": 1, "subset": 600, "val_size": 200, "test_subset": 1000, "batch_size": 64, "lr": 0.1,
                 "schedule": "cosine", "warmup_epochs": 0.0, "augment": "none"}}


def _cfg(**over):
    return resolve_protocol(validate({**RAW, **over}), cuda=False)[0]


def test_plan_is_variant_major_by_default_and_seed_major_on_request():
    cfg = _cfg()
    variants = expand_grid(cfg)
    a, b = (v.id for v in variants)
    as_labels = lambda units: [(u.variant.id, u.stage, u.seed) for u in units]  # noqa: E731
    assert as_labels(plan(variants, cfg, set())) == [(a, "profile", None), (a, "train", 0), (a, "train", 1),
                                                     (b, "profile", None), (b, "train", 0), (b, "train", 1)]
    assert as_labels(plan(variants, cfg, {(b, "train", 0)}, order="seed")) == [
        (a, "profile", None), (b, "profile", None), (a, "train", 0), (a, "train", 1), (b, "train", 1)]
    # the first variant further on than the second: the second's lower seed still comes first (seed order, not
    # the order the grid lists the units in)
    done = {(a, "profile", None), (b, "profile", None), (a, "train", 0), (a, "train", 1), (b, "train", 0)}
    assert as_labels(plan(variants, cfg, done, order="seed", seeds=[0, 1, 2])) == [
        (b, "train", 1), (a, "train", 2), (b, "train", 2)]


def test_a_timing_unit_cut_by_the_deadline_keeps_its_rounds_and_goes_on_next_time(monkeypatch, tmp_path):
    cfg = _cfg(stages=["timing"], grid={"model.n_1x1": [0, 1]})
    clock = [time.time()]
    monkeypatch.setattr(unit_mod, "time", types.SimpleNamespace(time=lambda: clock[0]))  # the deadline's clock
    real, windows = timing.Contender.window, []

    def then_late(self, repeats):
        windows.append(self.setting.batch_size)
        if len(windows) == 2:
            clock[0] += 3600  # the first round of the first setting outlasts the budget
        return real(self, repeats)

    monkeypatch.setattr(timing.Contender, "window", then_late)
    tally, logs, rd = Tally(), [], ResultsDir(tmp_path)
    run_suite(cfg, tmp_path, protocol="cpu", progress=False, log=logs.append, ceilings=FIXED,
              deadline=clock[0] + 60, tally=tally)
    assert len(windows) == 2 and tally.left == 1 and tally.done == 0  # stopped after round 0 of setting 1
    assert rd.read_records() == [] and len(rd.timing_checkpoints()) == 1  # the round is kept, not recorded
    run_suite(cfg, tmp_path, protocol="cpu", progress=False, log=logs.append, ceilings=FIXED)
    rounds = cfg.timing.rounds
    settings = len(timing_settings(cfg.timing))
    assert len(windows) == 2 * rounds * settings  # the first round was not measured again
    records = rd.read_records()
    assert len([r for r in records if r["stage"] == "timing"]) == 2 * settings
    assert len([r for r in records if r["stage"] == "timing_round"]) == 2 * rounds * settings
    assert completed(records) == {(v.id, "timing", None) for v in expand_grid(cfg)}
    assert rd.timing_checkpoints() == []


def test_a_training_estimate_counts_the_epochs_evaluation_passes():
    """Without recorded epochs: (training images + a third of the evaluated images) x epochs / train-step img/s,
    x 1.25, + 5 s. Here 600 training images, 200 validation + 600 (train_eval_size 5,000 capped at the training
    images) evaluated, 2 epochs, 100 img/s: (600 + 800 / 3) x 2 / 100 x 1.25 + 5 = 26.67 s."""
    from nin_bench.run.budget import estimate_s
    from nin_bench.run.unit import Unit

    cfg = _cfg(train={**RAW["train"], "epochs": 2})
    v = expand_grid(cfg)[0]
    ctx = types.SimpleNamespace(dataset=lambda _v: types.SimpleNamespace(train_x=types.SimpleNamespace(shape=(800,))),
                                device="cpu")
    row = {"variant": v.id, "stage": "timing", "status": "ok", "mode": "train_step", "batch_size": 64,
           "dtype": "fp32", "channels_last": True, "compile": False, "img_per_s": 100.0}
    est = estimate_s(Unit(v, "train", 0), ctx, [row], Budget())
    assert est == pytest.approx((600 + 800 / 3) * 2 / 100 * 1.25 + 5)
    assert estimate_s(Unit(v, "train", 0), ctx, [row], Budget(slowdown=2.0)) == pytest.approx(
        (600 + 800 / 3) * 2 / 100 * 1.25 * 2 + 5)


@needs_data
def test_a_training_unit_estimated_past_the_deadline_is_not_started(tmp_path):
    cfg = _cfg(stages=["train"], seeds=[0])
    variants = expand_grid(cfg)
    slow = tuple({"variant": v.id, "stage": "timing", "status": "ok", "mode": "train_step", "batch_size": 64,
                  "dtype": "fp32", "channels_last": True, "compile": False, "img_per_s": 1.0} for v in variants)
    tally, logs = Tally(), []
    budget = Budget(time.time() + 120, extra_timing=slow)  # 600 images at 1 img/s: ~750 s estimated
    run_suite(cfg, tmp_path, protocol="cpu", progress=False, log=logs.append, ceilings=FIXED, budget=budget,
              tally=tally)
    assert tally.skipped_budget == 2 and tally.done == 0
    assert not [r for r in ResultsDir(tmp_path).read_records() if r["stage"].startswith("train")]
    assert sum("skipped" in m and "would not finish" in m for m in logs) == 2


@needs_data
def test_the_process_pool_packs_two_runs_and_gives_the_local_numbers(tmp_path):
    """The local reference trains in a thread while the pool's two workers start (each a fresh interpreter
    importing torch): the driver of a pool only waits, so the two runs share nothing but the cores."""
    cfg = _cfg(stages=["train"], grid={"model.n_1x1": [1]})
    local, pool = tmp_path / "local", tmp_path / "pool"
    tally = Tally()
    with ThreadPoolExecutor(1) as side:
        reference = side.submit(run_suite, cfg, local, protocol="cpu", progress=False, log=lambda m: None,
                                ceilings=FIXED)
        run_suite(cfg, pool, protocol="cpu", progress=False, log=lambda m: None, ceilings=FIXED, executor="pool",
                  pack=2, order="seed", tally=tally)
        reference.result(timeout=600)

    def accuracies(folder):
        records = ResultsDir(folder).read_records()
        assert len({record_key(r) for r in records}) == len(records)  # every record once
        return {(r["variant"], r["seed"]): r["test_acc"] for r in records if r["stage"] == "train"}

    assert len(accuracies(local)) == 2 and accuracies(pool) == accuracies(local)  # 1 thread: bit-identical
    assert tally.done == 2


def test_pack_choice_and_slowdown_follow_the_measurement():
    trials = [{"pack": 1, "agg_img_per_s": 100.0}, {"pack": 2, "agg_img_per_s": 180.0},
              {"pack": 4, "agg_img_per_s": 190.0}]
    assert choose_pack(trials) == 2  # 4 gains under 15 % over 2
    assert pack_slowdown({"trials": trials}, 2) == pytest.approx(2 / 1.8)
    assert pack_slowdown(None, 3) == 3.0 and pack_slowdown(None, 1) == 1.0


def test_a_failed_self_check_stops_what_depends_on_it():
    timing, training = gs.STEPS[0], gs.STEPS[1]
    assert gs.step_sets(training, {"train_resume": False}, False)[0] is None
    assert gs.step_sets(timing, {"train_resume": False}, False)[0] == list(timing.sets)
    sets, _ = gs.step_sets(timing, {"bf16": False}, False)
    assert sets[-2:] == ["timing.dtypes=[fp32]", "train.dtype=fp32"]
    with pytest.raises(Exception, match="unknown step 'nope'"):
        gs.steps_named("head,nope")
    assert [s.name for s in gs.steps_named(None)] == ["timing-one_by_one", "one_by_one", "head"]


# The whole batch in rehearsal mode, two calls with the second redoing nothing, is `bash scripts/gpu_rehearse.sh`
# (minutes, too long for this suite): its parts are the tests above, tests/test_gpu_call.py and the runner's
# resume-from-committed test (tests/test_runner.py).
