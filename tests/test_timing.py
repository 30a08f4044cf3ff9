"""Tests for nin_bench.measure.timing and nin_bench.runtime.train_step (CPU; behaviour and record shape only, never speed)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nin_bench.measure import timing
from nin_bench.measure.ceilings import matmul_peak_flops
from nin_bench.measure.timing import time_model
from nin_bench.runtime import compiled
from nin_bench.runtime import train_step as steps
from nin_bench.runtime.device import set_threads
from nin_bench.runtime.train_step import train_step

KEYS = {
    "mode", "batch_size", "dtype", "channels_last", "compile", "threads", "warmup", "repeats", "ms_median",
    "ms_iqr", "ms_p25", "ms_p75", "ms_min", "img_per_s", "peak_mem_mb", "peak_mem_method", "compile_s",
    "compiled_graphs", "graph_breaks", "cudnn_benchmark", "fp32_conv_precision",
}
SHAPE = (3, 16, 16)


def tiny_net() -> nn.Module:
    """A small NiN-like net: conv, 1x1 conv to class maps, global average pool."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 10, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )


def run(mode: str = "forward", **kw) -> dict:
    kw = {"batch_size": 4, "device": "cpu", "warmup": 1, "repeats": 5, **kw}
    return time_model(tiny_net(), SHAPE, mode=mode, **kw)


@pytest.mark.parametrize("mode", ["forward", "train_step"])
def test_record_keys_types_and_order_statistics(mode: str) -> None:
    row = run(mode)
    assert set(row) == KEYS
    assert (row["mode"], row["batch_size"], row["dtype"], row["warmup"], row["repeats"]) == (mode, 4, "fp32", 1, 5)
    assert row["channels_last"] is False and row["compile"] is False and row["compile_s"] is None
    assert row["threads"] == torch.get_num_threads()
    assert 0 < row["ms_min"] <= row["ms_p25"] <= row["ms_median"] <= row["ms_p75"]
    assert row["ms_iqr"] == pytest.approx(row["ms_p75"] - row["ms_p25"])
    assert row["img_per_s"] == pytest.approx(4 / (row["ms_median"] / 1e3))
    assert row["peak_mem_method"] in ("cpu_vmhwm_delta", "unavailable")
    assert (row["peak_mem_mb"] is None) == (row["peak_mem_method"] == "unavailable")
    if row["peak_mem_mb"] is not None:
        assert row["peak_mem_mb"] >= 0


def test_quartiles_use_linear_interpolation() -> None:
    # numpy/torch.quantile "linear" on [1, 2, 3, 4, 10]: p25 = 2, median = 3, p75 = 4.
    stats = timing._summarise([10.0, 1.0, 3.0, 2.0, 4.0], batch_size=6)
    assert (stats["ms_p25"], stats["ms_median"], stats["ms_p75"], stats["ms_min"]) == (2.0, 3.0, 4.0, 1.0)
    assert stats["ms_iqr"] == 2.0 and stats["img_per_s"] == pytest.approx(2000.0)
    assert timing._summarise([5.0], batch_size=1)["ms_iqr"] == 0.0


def test_train_step_changes_copy_but_not_callers_model(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_net()
    before = [p.detach().clone() for p in model.parameters()]
    seen: list[nn.Module] = []
    real_step = steps.train_step

    def spy(net, optimizer, x, y, **kw):
        seen.append(net)
        return real_step(net, optimizer, x, y, **kw)

    monkeypatch.setattr(timing, "train_step", spy)
    time_model(model, SHAPE, mode="train_step", batch_size=4, device="cpu", warmup=0, repeats=2)
    copy_net = seen[0]
    assert copy_net is not model and copy_net.training
    assert any(not torch.equal(p, b) for p, b in zip(copy_net.parameters(), before))
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())


def test_forward_runs_in_eval_and_inference_mode() -> None:
    model = tiny_net().train()
    flags: list[tuple[bool, bool, bool]] = []
    # deepcopy copies the hook too, so it reports on the device copy that time_model runs.
    model.register_forward_hook(
        lambda m, i, o: flags.append((m.training, torch.is_inference_mode_enabled(), o.requires_grad))
    )
    time_model(model, SHAPE, mode="forward", batch_size=2, device="cpu", warmup=1, repeats=3)
    assert flags == [(False, True, False)] * 6  # warm-up, 2 memory iterations, repeats: eval, inference, no graph
    assert model.training  # the caller's model keeps its mode


def test_channels_last_and_autocast_rows() -> None:
    inputs: list[torch.Tensor] = []
    model = tiny_net()
    model[0].register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    row = time_model(model, SHAPE, mode="train_step", batch_size=4, device="cpu", channels_last=True,
                     dtype="bf16", warmup=0, repeats=2)
    assert row["channels_last"] is True and row["dtype"] == "bf16" and row["ms_median"] > 0
    assert all(x.is_contiguous(memory_format=torch.channels_last) for x in inputs)


def test_compile_time_recorded_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    # dynamo with its "eager" backend: the real capture and guards, without paying for inductor in the suite
    monkeypatch.setattr(compiled, "BACKEND", "eager")
    row = run(compile=True)
    assert row["compile"] is True and row["compile_s"] > 0
    assert row["compiled_graphs"] == 1 and row["graph_breaks"] == 0


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="mode"):
        run("backward")
    with pytest.raises(ValueError, match="dtype"):
        run(dtype="fp8")
    with pytest.raises(ValueError, match="repeats"):
        run(repeats=0)


def test_out_of_memory_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args, **kw):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(timing, "train_step", boom)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="Tried to allocate"):
        run("train_step")


def test_train_step_returns_detached_loss_and_steps() -> None:
    model = tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(4, *SHAPE), torch.tensor([0, 1, 2, 3])
    w0 = model[0].weight.detach().clone()
    loss = train_step(model, opt, x, y, label_smoothing=0.1)
    assert loss.ndim == 0 and not loss.requires_grad and math.isfinite(loss.item())
    assert not torch.equal(model[0].weight, w0)


def test_matmul_peak_flops_positive_finite() -> None:
    flops = matmul_peak_flops("cpu", n=128)
    assert math.isfinite(flops) and flops > 0


def test_set_threads_sets_and_returns() -> None:
    old = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 == torch.get_num_threads()
        assert set_threads(None) == torch.get_num_threads() >= 1
    finally:
        torch.set_num_threads(old)


# ---- interleaved rounds -------------------------------------------------------------------------------------


def test_summarise_rounds_takes_the_median_of_round_medians_and_pools_the_quartiles():
    stats = timing.summarise_rounds([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [10.0, 10.0, 10.0]], batch_size=10)
    # round medians 2, 4, 10; pooled, sorted: 1 2 2 3 4 6 10 10 10 (inclusive quartiles at positions 2, 4, 6)
    assert stats["ms_median"] == 4.0 and stats["img_per_s"] == 2500.0 and stats["rounds"] == 3
    assert (stats["round_ms_min"], stats["round_ms_max"], stats["round_spread_pct"]) == (2.0, 10.0, 200.0)
    assert (stats["ms_p25"], stats["ms_p75"], stats["ms_iqr"], stats["ms_min"]) == (2.0, 10.0, 8.0, 1.0)


def test_round_orders_are_permutations_fixed_by_the_seed_and_shuffled_per_round():
    keys = ["a", "b", "c"]
    orders = [timing.round_order(keys, seed=0, round_index=r, salt="s") for r in range(8)]
    assert all(sorted(o) == keys for o in orders)
    assert len({tuple(o) for o in orders}) > 1  # not one order for every round
    assert orders == [timing.round_order(keys, seed=0, round_index=r, salt="s") for r in range(8)]
    assert orders != [timing.round_order(keys, seed=1, round_index=r, salt="s") for r in range(8)]


class _Fake:
    """A contender whose window records the call and returns fixed times (or fails)."""

    def __init__(self, name: str, calls: list[str], fail_at: int | None = None) -> None:
        self.name, self.calls, self.fail_at = name, calls, fail_at

    def window(self, repeats: int) -> list[float]:
        self.calls.append(self.name)
        if self.fail_at is not None and self.calls.count(self.name) > self.fail_at:
            raise RuntimeError("out of memory")
        return [1.0] * repeats

    def close(self) -> None:
        pass


def test_interleave_runs_every_round_in_its_recorded_order_from_the_start_round():
    calls: list[str] = []
    seen: list[tuple[int, list[str]]] = []
    fakes = {k: _Fake(k, calls) for k in "abc"}
    timing.interleave(fakes, windows=[2] * 5, seed=3, salt="x", start=2,
                      on_round=lambda r, times, order: seen.append((r, order)))
    expected = [timing.round_order(["a", "b", "c"], 3, r, "x") for r in (2, 3, 4)]
    assert seen == list(zip((2, 3, 4), expected)) and calls == [k for o in expected for k in o]


def test_interleave_drops_a_contender_whose_window_fails_and_goes_on():
    calls: list[str] = []
    fakes = {"a": _Fake("a", calls), "b": _Fake("b", calls, fail_at=1)}
    failed, timed = [], []
    timing.interleave(fakes, windows=[1, 1, 1], seed=0, on_round=lambda r, t, o: timed.append(sorted(t)),
                      on_fail=lambda key, exc: (failed.append(key), fakes.pop(key)))
    assert failed == ["b"] and timed == [["a", "b"], ["a"], ["a"]]


def test_the_repeats_are_split_over_the_rounds():
    assert timing.round_windows(50, 5) == [10] * 5 and timing.round_windows(20, 3) == [7, 7, 6]
    assert timing.round_windows(3, 3) == [1, 1, 1]
    with pytest.raises(ValueError, match="cannot fill"):
        timing.round_windows(3, 4)


def test_a_window_lasts_at_least_min_window_ms(monkeypatch):
    setting = timing.Setting("forward", 2)
    plain = timing.Contender(tiny_net(), SHAPE, torch.device("cpu"), setting, warmup=0)
    assert plain.min_iters == 1 and len(plain.window(3)) == 3
    monkeypatch.setattr(timing, "_MAX_WINDOW_ITERS", 7)  # a day-long window, capped
    long = timing.Contender(tiny_net(), SHAPE, torch.device("cpu"), setting, warmup=0, min_window_ms=8.64e7)
    assert long.min_iters == 7 and len(long.window(3)) == 7 and len(long.window(9)) == 9
