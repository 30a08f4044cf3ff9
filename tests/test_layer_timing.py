"""Per-layer time (torch.profiler attribution), bytes, FLOPs and the roofline: structure and exact arithmetic.

Times are only checked to be measured (> 0) and to add up by construction; how the layers' sum compares with the
timing stage's end-to-end forward is what the committed reports show, not something a noisy machine can assert.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nin_bench.measure.ceilings import memory_bandwidth, roofline
from nin_bench.measure.counts import profile_model
from nin_bench.measure.layer_timing import format_layer_times, time_layers
from nin_bench.models.nin import build_model

SHAPE = (3, 16, 16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: these tests check structure, and on a shared 2-core machine two spinning OpenMP
    threads beside another job make each tiny op take milliseconds (20x slower tests, same rows)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(**kw):
    torch.manual_seed(0)
    return build_model("nin_cifar", width=0.125, input_size=16, **{"batchnorm": True, **kw})


def _rows(model, warmup=0, repeats=1, **kw):
    return time_layers(model, SHAPE, batch_size=4, device="cpu", warmup=warmup, repeats=repeats, **kw)


@pytest.fixture(scope="module")
def rows_n2():
    """Rows of the paper's block shape (two 1x1 convs, BatchNorm, GAP head), by layer."""
    return {r["layer"]: r for r in _rows(_model(n_1x1=2), warmup=1, repeats=3)}


def _expected_kind(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        return "conv_1x1" if m.kernel_size == (1, 1) else "conv_kxk"
    return {nn.BatchNorm2d: "batchnorm", nn.ReLU: "relu", nn.MaxPool2d: "maxpool", nn.AvgPool2d: "avgpool",
            nn.AdaptiveAvgPool2d: "gap", nn.Dropout: "dropout", nn.Flatten: "flatten", nn.Linear: "linear"}[type(m)]


def _forward_order(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The leaf modules in the order a forward calls them (hooks, independent of the module under test)."""
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: calls.append((n, m)))
             for n, m in model.named_modules() if not list(m.children())]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *SHAPE))
    for h in hooks:
        h.remove()
    return calls


@pytest.mark.parametrize("n_1x1", [0, 1, 2])
@pytest.mark.parametrize("head", ["gap", "fc"])
@pytest.mark.parametrize("batchnorm", [False, True])
def test_every_leaf_once_in_forward_order_with_its_kind(n_1x1, head, batchnorm):
    model = _model(n_1x1=n_1x1, head=head, batchnorm=batchnorm, fc_hidden=[16])
    rows = _rows(model)
    calls = _forward_order(model)
    assert [r["layer"] for r in rows] == [n for n, _ in calls] + ["rest"]
    assert [r["kind"] for r in rows[:-1]] == [_expected_kind(m) for _, m in calls]
    kinds = {r["kind"] for r in rows}
    assert ("conv_1x1" in kinds) == (n_1x1 > 0) and ("batchnorm" in kinds) == batchnorm
    assert ("gap" in kinds) == (head == "gap") and ("linear" in kinds) == (head == "fc")
    assert sum(r["macs"] for r in rows) == profile_model(model, SHAPE)["macs"]
    for r in rows[:-1]:
        assert r["block"] == ("head" if r["layer"].startswith("head.") else r["layer"].split(".")[1])
        assert r["fwd_ms"] > 0 and r["fwd_train_ms"] > 0
        # every leaf makes an autograd node in train mode (in-place ReLU and flatten's view too), so backward
        # time reaching each of them shows the sequence_nr correlation found its layer
        assert r["bwd_ms"] > 0, r["layer"]
    assert rows[-1]["layer"] == rows[-1]["block"] == rows[-1]["kind"] == "rest"


class _ConvThenPeek(nn.Module):
    """A conv followed by non-differentiable work that already sees the next autograd node's sequence number."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.detach().abs().sum()  # no node: records the number the ReLU's node will take
        return y


def test_backward_goes_to_the_layer_whose_op_made_the_node():
    model = nn.Sequential(_ConvThenPeek(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    model[0].conv.register_forward_hook(lambda m, i, o: (o.detach().sum(), None)[1])  # the same inside the range
    rows = time_layers(model, (3, 8, 8), batch_size=2, device="cpu", warmup=0, repeats=1, channels_last=False)
    assert [r["layer"] for r in rows] == ["0.conv", "1", "2", "3", "rest"]
    # the ReLU's node shares its number with the conv's trailing ops; it must still reach the ReLU
    assert all(r["bwd_ms"] > 0 for r in rows[:-1])


def test_bytes_flops_and_intensity_by_hand(rows_n2):
    conv = rows_n2["features.block1.conv1"]  # 3 -> 24 channels (192 x 0.125), 5x5 pad 2, 16x16 maps, batch 4
    assert conv["macs"] == 24 * 3 * 25 * 16 * 16 == 460_800 and conv["macs_batch"] == 4 * 460_800
    assert conv["flops"] == 2 * 4 * 460_800 == 3_686_400
    # input 4x3x16x16 + weight 24x3x5x5 + bias 24 + output 4x24x16x16, 4 bytes each (fp32)
    assert conv["bytes"] == (3072 + 1800 + 24 + 24_576) * 4 == 117_888
    assert conv["intensity"] == 3_686_400 / 117_888
    bn = rows_n2["features.block1.bn1"]  # 2 FLOPs per element; weight, bias, running mean and var: 4 x 24 floats
    assert bn["macs"] == 0 and bn["flops"] == 2 * 24_576 == 49_152
    assert bn["bytes"] == (24_576 + 96 + 24_576) * 4 == 196_992 and bn["intensity"] == 49_152 / 196_992
    one = rows_n2["features.block1.conv2"]  # 1x1, 24 -> 20 channels
    assert one["kind"] == "conv_1x1" and one["flops"] == 2 * 4 * 20 * 24 * 256 == 983_040
    assert one["bytes"] == (24_576 + 480 + 20 + 4 * 20 * 256) * 4 == 182_224
    relu, pool = rows_n2["features.block1.relu1"], rows_n2["features.pool1"]
    assert relu["flops"] == 24_576 and relu["bytes"] == 2 * 24_576 * 4
    assert pool["flops"] == 4 * 12 * 8 * 8 * 9  # 3x3 max pool, stride 2, pad 1: 8x8 outputs of 12 channels
    gap = rows_n2["head.gap"]  # 1 FLOP per input element: 10 class maps of 4x4 (16 -> 8 -> 4)
    assert gap["flops"] == 4 * 10 * 4 * 4 and rows_n2["head.flatten"]["flops"] == 0


def test_rest_row_closes_the_sums(rows_n2):
    rows = list(rows_n2.values())
    rest = rows_n2["rest"]
    assert rest["flops"] == rest["bytes"] == rest["macs"] == 0 and rest["intensity"] is None and rest["note"]
    assert all(r["e2e_fwd_ms"] == rest["e2e_fwd_ms"] for r in rows)
    assert sum(r["fwd_ms"] for r in rows) == pytest.approx(rest["e2e_fwd_ms"], rel=1e-9)
    assert sum(r["fwd_train_ms"] for r in rows) == pytest.approx(rest["e2e_train_fwd_ms"], rel=1e-9)
    assert sum(r["fwd_train_ms"] + r["bwd_ms"] for r in rows) == pytest.approx(rest["e2e_train_step_ms"], rel=1e-9)
    assert rest["e2e_fwd_ms"] > 0 and rest["e2e_train_step_ms"] > rest["e2e_train_fwd_ms"] > 0
    convs = [r for r in rows if r["kind"].startswith("conv")]
    assert all(r["fwd_ms"] > 0 and r["bwd_ms"] > 0 for r in convs)


def test_bf16_rows_count_two_bytes_per_element():
    rows = {r["layer"]: r for r in _rows(_model(n_1x1=2), dtype="bf16")}
    conv, bn = rows["features.block1.conv1"], rows["features.block1.bn1"]
    assert conv["dtype"] == "bf16" and conv["bytes"] == 117_888 // 2 and bn["bytes"] == 196_992 // 2
    assert conv["intensity"] == 3_686_400 / 58_944 and conv["fwd_ms"] > 0 and conv["bwd_ms"] > 0


def test_roofline_bound_and_attainment_by_hand():
    rows = [{"kind": "conv_kxk", "flops": 4e9, "bytes": 1e8, "intensity": 40.0, "fwd_ms": 40.0},
            {"kind": "relu", "flops": 1e6, "bytes": 8e6, "intensity": 0.125, "fwd_ms": 2.0},
            {"kind": "conv_1x1", "flops": 1e9, "bytes": 1e8, "intensity": 10.0, "fwd_ms": 0.0},
            {"kind": "rest", "flops": 0, "bytes": 0, "intensity": None, "fwd_ms": 1.0}]
    conv, relu, one, rest = roofline(rows, peak_flops=2e11, bytes_per_s=1e10)  # ridge at 20 FLOP/byte
    assert conv["bound"] == "compute" and conv["roofline_ms"] == pytest.approx(20.0, rel=1e-12)  # 4e9 / 2e11 s
    assert conv["attained"] == pytest.approx(0.5, rel=1e-12)  # 20 of its 40 ms
    assert relu["bound"] == "memory" and relu["roofline_ms"] == pytest.approx(0.8, rel=1e-12)  # 8e6 / 1e10 s
    assert relu["attained"] == pytest.approx(0.4, rel=1e-12)
    assert one["bound"] == "memory" and one["roofline_ms"] == pytest.approx(10.0, rel=1e-12)  # 1e8 / 1e10 s
    assert one["attained"] is None  # no time measured
    assert rest["bound"] is None and rest["roofline_ms"] is None and rest["attained"] is None
    assert conv["peak_tflops"] == pytest.approx(0.2) and conv["mem_gb_per_s"] == pytest.approx(10.0)
    assert rows[0].keys() == {"kind", "flops", "bytes", "intensity", "fwd_ms"}  # the input rows are not changed


def test_memory_bandwidth_is_measured():
    bw = memory_bandwidth("cpu", nbytes=2**24)
    assert math.isfinite(bw) and bw > 0


def test_callers_model_untouched_and_table_prints():
    model = _model(n_1x1=1)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = _rows(model, warmup=1, repeats=2)  # two SGD steps on the copy
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(v.is_contiguous() for v in model.state_dict().values())  # channels_last went to the copy only
    lines = format_layer_times(roofline(rows, 1e11, 1e10)).splitlines()
    assert "end-to-end forward" in lines[0] and lines[1].split() == [
        "layer", "kind", "MACs", "MACs", "%", "fwd", "ms", "fwd", "%", "bwd", "ms", "bwd", "%", "FLOP/B", "bound"]
    assert [ln.split()[0] for ln in lines[3:-3]] == [r["layer"] for r in rows[:-1]]
    assert lines[-2].startswith("rest ") and lines[-1].split()[:3] == ["total", f"{sum(r['macs'] for r in rows):,}",
                                                                        "100.0"]
    assert lines[-1].split()[3] == f"{rows[0]['e2e_fwd_ms']:.3f}"


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="dtype='fp8'"):
        time_layers(_model(), SHAPE, batch_size=2, device="cpu", dtype="fp8")
    with pytest.raises(ValueError, match="repeats=0"):
        time_layers(_model(), SHAPE, batch_size=2, device="cpu", repeats=0)


class _Ev:
    """A stand-in for a profiler FunctionEvent (what `_attribute` reads of one)."""

    def __init__(self, name, start, end, kernels_us=(), parent=None, seq=-1, thread=1, total_us=None):
        self.name, self.cpu_parent, self.sequence_nr, self.thread = name, parent, seq, thread
        self.time_range = type("R", (), {"start": start, "end": end})()
        self.device_type = torch.autograd.DeviceType.CPU
        self.kernels = [type("K", (), {"duration": d})() for d in kernels_us]
        self.device_time_total = sum(kernels_us) if total_us is None else total_us  # the children's kernels too
        self.cpu_time_total = (end - start)


def test_cuda_rows_sum_to_busy_time_and_idle_is_apart():
    """On CUDA the end to end is the unprofiled time, the rows sum to the kernels' busy time and the rest row's
    idle holds the difference (fake events: the logic, which the CPU cannot exercise with real kernels)."""
    from nin_bench.measure.layer_timing import _attribute, _rest_row

    it0 = _Ev("iter::0", 0, 100)
    conv = _Ev("layer::conv", 10, 40, parent=it0, total_us=3000)
    events = [it0, conv, _Ev("aten::conv2d", 11, 39, kernels_us=(3000,), parent=conv),  # 3 ms in the layer
              _Ev("aten::add", 50, 60, kernels_us=(500, 250), parent=it0),  # 0.75 ms in no layer
              _Ev("aten::mul", 150, 160, kernels_us=(9000,))]  # between windows: no iteration's
    (it,) = _attribute(events, [5.0], cuda=True)
    assert it["busy_ms"] == pytest.approx(3.75, rel=1e-12) and it["fwd"] == {"conv": pytest.approx(3.0)}
    (cpu,) = _attribute(events, [5.0], cuda=False)
    assert cpu["busy_ms"] == 0.0  # the CPU has no busy time apart from the end to end
    rows = [{"fwd_ms": 3.0, "fwd_train_ms": 3.0, "bwd_ms": 4.0}]
    e2e = {"e2e_fwd_ms": 5.0, "e2e_train_step_ms": 12.0, "e2e_train_fwd_ms": 3.5}
    step = [{"busy_ms": 9.0}]
    rest = _rest_row(rows, [it], step, e2e, {}, cuda=True)
    assert rest["fwd_ms"] == pytest.approx(0.75) and rest["idle_fwd_ms"] == pytest.approx(1.25)
    assert rows[0]["fwd_ms"] + rest["fwd_ms"] + rest["idle_fwd_ms"] == pytest.approx(e2e["e2e_fwd_ms"])
    assert rest["bwd_ms"] == pytest.approx(9.0 - 3.5 - 4.0) and rest["idle_train_step_ms"] == pytest.approx(3.0)
    total = sum(r["fwd_train_ms"] + r["bwd_ms"] for r in (rows[0], rest)) + rest["idle_train_step_ms"]
    assert total == pytest.approx(e2e["e2e_train_step_ms"])
    on_cpu = _rest_row(rows, [it], step, e2e, {}, cuda=False)
    assert on_cpu["fwd_ms"] == pytest.approx(2.0) and on_cpu["idle_fwd_ms"] is None
