"""Peaks that are read, not measured: the CPU's ISA peak (cores x clock x FMA width x FMA units) from
/proc/cpuinfo and cpufreq, and a GPU's datasheet peak from a small table keyed by its name.

Both are upper bounds a measurement is compared with, never measured themselves, so each says what it read:
the ISA peak assumes two FMA units per core at the full vector width (an upper bound: some CPUs have one, some
split a 512-bit FMA over two 256-bit halves), and its clock is cpufreq's maximum where the kernel exposes it,
else the largest "cpu MHz" line (the clock at the moment of reading: turbo can exceed it, so the ISA peak can
under-read and a measured GEMM then sets the ceiling). The datasheet figures are dense (sparsity figures halved).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# fp32 FLOPs per cycle per core: vector lanes x 2 (an FMA is a multiply and an add) x 2 FMA units (assumed).
_FP32_PER_CYCLE = (("avx512f", 16 * 2 * 2), ("fma", 8 * 2 * 2))  # fma implies avx2-width FMA on x86
_AVX_NO_FMA = 8 * 2  # AVX without FMA: one 8-lane multiply and one 8-lane add per cycle
_AMX_PER_CYCLE = 1024  # Intel AMX (TMUL): 1024 bf16/fp16 FLOPs per cycle per core
# bf16/fp16: AMX, else a dot-product / native instruction at twice the fp32 rate, else the fp32 rate at best
_HALF_FLAGS = {"bf16": ("amx_bf16", "avx512_bf16"), "fp16": ("amx_fp16", "avx512_fp16")}


@dataclass(frozen=True)
class IsaPeak:
    """The CPU's ISA peak and what it was read from.

    Attributes:
        flops_per_s: dtype -> FLOP/s for the cores counted.
        cores: cores counted (the threads the run uses, at most the CPUs it may run on).
        clock_ghz: the clock used.
        clock_source: "cpufreq_max" (cpuinfo_max_freq) or "cpuinfo_mhz" (the current clock: turbo may exceed it).
        isa: the vector extension counted ("avx512f", "avx2_fma", "avx").
        fp32_flops_per_cycle: per core, with 2 FMA units assumed.
    """

    flops_per_s: dict[str, float]
    cores: int
    clock_ghz: float
    clock_source: str
    isa: str
    fp32_flops_per_cycle: int

    def describe(self) -> dict:
        """A JSON-ready dict for the manifest (TFLOP/s per dtype and every figure read)."""
        return {"tflops": {d: f / 1e12 for d, f in self.flops_per_s.items()}, "cores": self.cores,
                "clock_ghz": self.clock_ghz, "clock_source": self.clock_source, "isa": self.isa,
                "fp32_flops_per_cycle": self.fp32_flops_per_cycle, "fma_units": "2 assumed (an upper bound)"}


def _flags(cpuinfo: str) -> set[str]:
    m = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    return set(m.group(1).split()) if m else set()


def isa_peak(cpuinfo: str, cores: int, max_khz: int | None = None) -> IsaPeak | None:
    """The ISA peak of `cores` cores from a /proc/cpuinfo text (x86 flags only).

    Args:
        cpuinfo: the text of /proc/cpuinfo.
        cores: cores the run computes on.
        max_khz: cpufreq's cpuinfo_max_freq in kHz, None when the kernel does not expose it.

    Returns:
        The peak, or None when no x86 vector flag or no clock can be read (e.g. an ARM CPU, a bare container).
    """
    flags = _flags(cpuinfo)
    per_cycle, isa = next(((n, f) for f, n in _FP32_PER_CYCLE if f in flags), (None, None))
    if per_cycle is None and "avx" in flags:
        per_cycle, isa = _AVX_NO_FMA, "avx"
    if per_cycle is None or cores < 1:
        return None
    isa = {"fma": "avx2_fma"}.get(isa, isa)
    if max_khz:
        clock_ghz, source = max_khz / 1e6, "cpufreq_max"
    else:
        mhz = [float(v) for v in re.findall(r"^cpu MHz\s*:\s*([0-9.]+)", cpuinfo, re.MULTILINE)]
        if not mhz:
            return None
        clock_ghz, source = max(mhz) / 1e3, "cpuinfo_mhz"
    per_s = cores * clock_ghz * 1e9
    flops = {"fp32": per_s * per_cycle}
    for dtype, (amx, native) in _HALF_FLAGS.items():
        cycle = _AMX_PER_CYCLE if amx in flags else 2 * per_cycle if native in flags else per_cycle
        flops[dtype] = per_s * cycle
    return IsaPeak(flops, cores, clock_ghz, source, isa, per_cycle)


def read_isa_peak(cores: int) -> IsaPeak | None:
    """`isa_peak` of this machine: /proc/cpuinfo and cpu0's cpufreq maximum (None where they cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    try:
        max_khz = int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        max_khz = None
    return isa_peak(text, cores, max_khz)


# Dense datasheet peaks in TFLOP/s (NVIDIA's product pages; figures "with sparsity" halved): "fp32" on the CUDA
# cores, "tf32" / "bf16" / "fp16" on the tensor cores with fp32 accumulation. Keys are matched as whole words in
# the device name, most specific first (an H100 NVL before an H100, the A100 is not an A10).
DATASHEET_TFLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    ("H200", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 417.5, "bf16": 835.5, "fp16": 835.5}),
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "bf16": 756.5, "fp16": 756.5}),
    ("H100", {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5}),  # SXM ("H100 80GB HBM3")
    ("A100", {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "bf16": 362.05, "fp16": 362.05}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "bf16": 121.0, "fp16": 121.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "bf16": 125.0, "fp16": 125.0}),
    ("RTX 4090", {"fp32": 82.6, "tf32": 82.6, "bf16": 165.2, "fp16": 165.2}),
    ("V100", {"fp32": 15.7, "fp16": 125.0}),  # SXM2; no TF32, no bf16 tensor cores
    ("T4", {"fp32": 8.1, "fp16": 65.0}),
)


def datasheet_flops(device_name: str, dtype: str, fp32_tf32: bool = True) -> float | None:
    """The datasheet's dense peak of a GPU in `dtype`, in FLOP/s.

    Args:
        device_name: torch.cuda.get_device_name(), e.g. "NVIDIA H100 80GB HBM3".
        dtype: "fp32", "bf16" or "fp16".
        fp32_tf32: fp32 convolutions run in TF32 (cuDNN's default): the fp32 figure is then the TF32 one.

    Returns:
        FLOP/s, or None for a card the table does not hold or a dtype it has no figure for.
    """
    for key, peaks in DATASHEET_TFLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(key)}(?![A-Za-z0-9])", device_name):
            name = "tf32" if dtype == "fp32" and fp32_tf32 and "tf32" in peaks else dtype
            return peaks[name] * 1e12 if name in peaks else None
    return None
