"""The timing stage: variants timed side by side in interleaved rounds, rows from rounds, resumable rounds."""
from __future__ import annotations

import statistics

import pytest

from nin_bench.measure import timing
from nin_bench.measure.ceilings import Ceilings
from nin_bench.run.timing_stage import RoundsCheckpoint, run_timing, setting_key
from nin_bench.run.unit import RunContext
from nin_bench.store.folder import ResultsDir
from nin_bench.suite.config import resolve_protocol, validate
from nin_bench.suite.variants import expand_grid

FIXED = Ceilings("cpu", peak_flops={"fp32": 1e11}, bytes_per_s=1e10)
RAW = {"name": "t", "threads": 1, "model": {"width": 0.125, "batchnorm": True},
       "grid": {"model.dropout": [0.0, 0.5]},
       "timing": {"batch_sizes": [2], "reference_batch_size": 2, "warmup": 1, "repeats": 8, "rounds": 4,
                  "round_seed": 7, "modes": ["forward", "train_step"], "layer_timing": False,
                  "min_window_ms": 0.0}}  # windows of exactly repeats / rounds iterations


def _run(tmp_path, **timing_over):
    cfg = resolve_protocol(validate({**RAW, "timing": {**RAW["timing"], **timing_over}}), cuda=False)[0]
    variants = expand_grid(cfg)
    ctx = RunContext(ResultsDir(tmp_path), "cpu", "cpu", "cpu", progress=False, ceilings=FIXED)
    flops = {v.id: {"forward": 1e6, "train_step": 3e6} for v in variants}
    return variants, run_timing(variants, ctx, flops)


def test_rows_are_the_median_of_their_rounds_and_rounds_pair_across_variants(tmp_path):
    variants, records = _run(tmp_path)
    rows = [r for r in records if r["stage"] == "timing"]
    rounds = [r for r in records if r["stage"] == "timing_round"]
    assert len(rows) == 2 * 2 and len(rounds) == 2 * 2 * 4  # 2 variants x 2 modes (x 4 rounds)
    for row in rows:
        mine = [r for r in rounds if r["variant"] == row["variant"] and r["mode"] == row["mode"]]
        assert [r["round"] for r in mine] == [0, 1, 2, 3] and all(r["repeats"] == 2 for r in mine)  # 8 / 4 rounds
        assert row["ms_median"] == statistics.median(r["ms_median"] for r in mine)
        assert row["rounds"] == 4 and row["round_seed"] == 7 and row["repeats"] == 8
        assert row["round_ms_min"] == min(r["ms_median"] for r in mine) and 0 < row["mfu"]
    for mode in ("forward", "train_step"):
        for i in range(4):  # every round holds both variants, at the places the recorded seed gave them
            pos = {r["variant"]: r["round_pos"] for r in rounds if r["mode"] == mode and r["round"] == i}
            order = timing.round_order(sorted(v.id for v in variants), 7, i,
                                       setting_key({**rows[0], "mode": mode}))
            assert sorted(pos.values()) == [0, 1] and [v for v, _ in sorted(pos.items(), key=lambda kv: kv[1])] \
                == order


def test_a_run_cut_mid_setting_goes_on_from_the_rounds_it_kept(tmp_path, monkeypatch):
    real, windows = timing.Contender.window, []

    def killed_in_round_2(self, repeats):
        windows.append(self.setting.mode)
        if len(windows) == 5:  # rounds 0 and 1 of the forward setting are saved; round 2 is in flight
            raise KeyboardInterrupt
        return real(self, repeats)

    monkeypatch.setattr(timing.Contender, "window", killed_in_round_2)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    monkeypatch.setattr(timing.Contender, "window", lambda self, repeats: (windows.append(self.setting.mode),
                                                                           real(self, repeats))[1])
    _variants, records = _run(tmp_path)
    assert windows.count("forward") == 5 + 2 * 2 and windows.count("train_step") == 2 * 4
    assert len([r for r in records if r["stage"] == "timing_round"]) == 16


def test_the_checkpoint_keeps_finished_settings_and_the_current_rounds(tmp_path):
    cfg = resolve_protocol(validate(RAW), cuda=False)[0]
    variants = expand_grid(cfg)
    ctx = RunContext(ResultsDir(tmp_path), "cpu", "cpu", "cpu", progress=False, ceilings=FIXED)
    ck = RoundsCheckpoint(ctx, variants)
    ck.save_setting("a", [{"x": 1}])
    ck.save_round("b", [{"order": ["v"], "ms": {"v": [1.0]}}])
    again = RoundsCheckpoint(ctx, list(reversed(variants)))  # the same group in any order
    assert again.finished == {"a": [{"x": 1}]} and again.rounds_of("b") == [{"order": ["v"], "ms": {"v": [1.0]}}]
    assert again.rounds_of("a") == []
