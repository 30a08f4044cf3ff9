"""The honest ceiling: the ISA peak read from cpuinfo, datasheet peaks, the suite's convolutions as a candidate,
the best candidate and its source, the lift that keeps every MFU and every compute-bound `attained` at most 1."""
from __future__ import annotations

import pytest
import torch

from nin_bench.measure import ceilings as C
from nin_bench.measure.ceilings import (
    Ceilings,
    Peak,
    add_utilisation,
    roofline,
    utilisation,
)
from nin_bench.measure.conv_ceiling import ConvShape, conv_peak, conv_shapes
from nin_bench.measure.peaks import datasheet_flops, isa_peak
from nin_bench.models.nin import build_model

# what this machine's /proc/cpuinfo says, shortened (a 2-vCPU AMD EPYC: AVX-512 with bf16 dot products)
CPUINFO = """processor\t: 0
model name\t: AMD EPYC
cpu MHz\t\t: 2596.134
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512_bf16 avx512_vnni
processor\t: 1
cpu MHz\t\t: 2400.000
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512_bf16 avx512_vnni
"""


def test_isa_peak_from_cpuinfo_by_hand() -> None:
    p = isa_peak(CPUINFO, cores=2)
    # 2 cores x 2.596134 GHz (the largest cpu MHz) x 16 lanes x 2 (FMA) x 2 units
    assert p.flops_per_s["fp32"] == pytest.approx(2 * 2.596134e9 * 64, rel=1e-12)
    assert p.flops_per_s["bf16"] == pytest.approx(2 * 2.596134e9 * 128, rel=1e-12)  # avx512_bf16: twice
    assert p.flops_per_s["fp16"] == p.flops_per_s["fp32"]  # no fp16 instruction: the fp32 rate at best
    assert (p.isa, p.clock_source, p.fp32_flops_per_cycle, p.cores) == ("avx512f", "cpuinfo_mhz", 64, 2)
    q = isa_peak(CPUINFO, cores=1, max_khz=3_700_000)  # cpufreq's maximum wins over the current clock
    assert q.flops_per_s["fp32"] == pytest.approx(3.7e9 * 64, rel=1e-12) and q.clock_source == "cpufreq_max"
    assert q.describe()["tflops"]["fp32"] == pytest.approx(0.2368, rel=1e-12)


def test_isa_peak_of_other_vector_units_and_of_none() -> None:
    avx2 = CPUINFO.replace(" avx512f avx512_bf16", "")
    assert isa_peak(avx2, cores=4).flops_per_s["fp32"] == pytest.approx(4 * 2.596134e9 * 32, rel=1e-12)
    amx = CPUINFO.replace("avx512_vnni", "avx512_vnni amx_bf16")
    assert isa_peak(amx, cores=1).flops_per_s["bf16"] == pytest.approx(2.596134e9 * 1024, rel=1e-12)
    assert isa_peak("processor : 0\nFeatures : fp asimd sve\n", cores=2) is None  # ARM: not read
    assert isa_peak(CPUINFO.replace("cpu MHz", "bogomips"), cores=2) is None  # no clock: not read


@pytest.mark.parametrize("name, dtype, tf32, tflops", [
    ("NVIDIA H100 80GB HBM3", "fp32", True, 494.5),  # fp32 convs in TF32: the TF32 tensor-core figure
    ("NVIDIA H100 80GB HBM3", "fp32", False, 67.0),
    ("NVIDIA H100 PCIe", "bf16", True, 756.5),
    ("NVIDIA H200", "bf16", True, 989.5),
    ("NVIDIA H200 NVL", "bf16", True, 835.5),
    ("NVIDIA A100-SXM4-80GB", "fp16", True, 312.0),
    ("NVIDIA L4", "bf16", True, 121.0),
    ("NVIDIA GeForce RTX 4090", "fp32", True, 82.6),
    ("Tesla V100-SXM2-16GB", "fp32", True, 15.7),  # no TF32 on a V100
    ("Tesla T4", "bf16", True, None),  # no bf16 tensor cores
    ("NVIDIA A10G", "bf16", True, None),  # not the A10 of the table
    ("Some Future GPU", "fp32", True, None),
])
def test_datasheet_peaks(name, dtype, tf32, tflops) -> None:
    got = datasheet_flops(name, dtype, tf32)
    assert got == (None if tflops is None else pytest.approx(tflops * 1e12, rel=1e-12))


def test_a_row_above_the_ceiling_lifts_it_and_mfu_stays_at_most_one() -> None:
    c = Ceilings("cpu", {"fp32": 1e11}, 1e10)  # a given ceiling, as the tests hand in
    assert c.ceiling("fp32") == Peak(1e11, "given", None)
    rows = [{"mode": "forward", "dtype": "fp32", "img_per_s": 1000.0, "status": "ok"},   # 1e11 x 1.5 attained
            {"mode": "forward", "dtype": "fp32", "img_per_s": 500.0, "status": "ok"},
            {"mode": "forward", "dtype": "fp32", "status": "error"}]
    add_utilisation(rows, c, lambda r: 1.5e8)
    assert c.peak_flops["fp32"] == 1.5e11 and c.source("fp32") == "row"
    assert c.candidates["fp32"] == {"given": 1e11, "row": 1.5e11}
    assert rows[0]["mfu"] == 1.0 and rows[1]["mfu"] == pytest.approx(0.5, rel=1e-12)
    assert {r["peak_tflops"] for r in rows[:2]} == {0.15} and rows[0]["peak_source"] == "row"
    assert "mfu" not in rows[2]  # an error row is left as it is
    below = [{"mode": "train_step", "dtype": "fp32", "img_per_s": 100.0, "status": "ok"}]
    add_utilisation(below, c, lambda r: 3e8)  # 3e10: the lifted ceiling stands for later units
    assert below[0]["mfu"] == pytest.approx(0.2, rel=1e-12) and below[0]["peak_source"] == "row"


def test_utilisation_never_exceeds_one_and_names_the_datasheet() -> None:
    u = utilisation(50.0, 1e9, Peak(1e11, "gemm_blas", 4e11))  # 5e10 FLOP/s attained
    assert u["mfu"] == pytest.approx(0.5, rel=1e-12) and u["peak_source"] == "gemm_blas"
    assert u["datasheet_tflops"] == 0.4 and u["mfu_datasheet"] == pytest.approx(0.125, rel=1e-12)
    over = utilisation(200.0, 1e9, 1e11 / 2)  # a bare figure the row exceeds: the row is its ceiling
    assert over["mfu"] == 1.0 and over["peak_tflops"] == 0.2 and over["peak_source"] == "row"
    unknown = utilisation(200.0, None, 1e11)
    assert unknown["mfu"] is None and unknown["peak_source"] is None and unknown["mfu_datasheet"] is None


def test_roofline_roof_is_lifted_to_the_best_layer() -> None:
    rows = [{"kind": "conv_kxk", "flops": 4e9, "bytes": 1e7, "intensity": 400.0, "fwd_ms": 10.0},  # 4e11 FLOP/s
            {"kind": "conv_1x1", "flops": 1e9, "bytes": 1e7, "intensity": 100.0, "fwd_ms": 10.0},
            {"kind": "rest", "flops": 0, "bytes": 0, "intensity": None, "fwd_ms": 1.0}]
    conv, one, rest = roofline(rows, Peak(2e11, "gemm_onednn"), 1e10)
    assert conv["peak_tflops"] == 0.4 and conv["peak_source"] == "row" and conv["attained"] == 1.0
    assert one["bound"] == "compute" and one["attained"] == pytest.approx(0.25, rel=1e-12)
    assert rest["peak_source"] == "row" and rest["attained"] is None
    kept = roofline(rows, Peak(8e11, "isa"), 1e10)[0]
    assert kept["peak_source"] == "isa" and kept["attained"] == pytest.approx(0.5, rel=1e-12)


def test_conv_shapes_of_a_model_and_their_flops_by_hand() -> None:
    torch.manual_seed(0)
    model = build_model("nin_cifar", width=0.125, input_size=16, batchnorm=True, n_1x1=2)
    shapes = conv_shapes(model, (3, 16, 16), batch=8)
    assert len(shapes) == 9 and model.training  # 3 blocks x (kxk + two 1x1); the model's mode is kept
    first = shapes[0]
    assert first == ConvShape(8, 3, 16, 16, 24, (5, 5), (1, 1), (2, 2), 1, True)
    assert first.flops() == 2 * 8 * 24 * 16 * 16 * 3 * 25  # 2 x batch x out channels x pixels x (in x k x k)
    strided = ConvShape(2, 4, 9, 9, 6, (3, 3), (2, 2), (0, 0))
    assert strided.flops() == 2 * 2 * 6 * 4 * 4 * 4 * 9  # 4x4 outputs
    best = conv_peak(shapes[:2], "cpu", "fp32")
    assert best is not None and best > 0


def test_ceiling_is_the_best_candidate_and_says_which(monkeypatch) -> None:
    monkeypatch.setattr(C, "gemm_peaks", lambda device, dtype: {"gemm_blas": 2e11, "gemm_onednn": 3e11})
    monkeypatch.setattr(C, "conv_peak", lambda shapes, device, dtype: 3.5e11)
    monkeypatch.setattr(C, "isa_peak_now", lambda: isa_peak(CPUINFO, cores=2))
    c = C.measure_ceilings("cpu", ["fp32", "bf16"], bandwidth=False, convs=[ConvShape(1, 1, 4, 4, 1, (1, 1),
                                                                                       (1, 1), (0, 0))] * 2)
    assert len(c.convs) == 1  # duplicates are timed once
    assert c.ceiling("fp32") == Peak(3.5e11, "conv_suite", None)  # the suite's conv beats the ISA's 3.32e11
    assert c.ceiling("bf16").source == "isa"  # 6.6e11 from avx512_bf16
    d = c.describe()
    assert d["peak_source"] == {"fp32": "conv_suite", "bf16": "isa"}
    assert d["candidates_tflops"]["fp32"] == {"gemm_blas": 0.2, "gemm_onednn": 0.3, "conv_suite": 0.35,
                                              "isa": pytest.approx(0.332305152, rel=1e-12)}
    assert d["isa"]["clock_source"] == "cpuinfo_mhz" and d["datasheet_tflops"] == {}
