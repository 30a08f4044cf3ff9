"""The three stages of a suite, each turning one variant (and seed) into flat records.

The runner calls these; each depends only on its arguments and the `RunContext` (no module state).
"""
from __future__ import annotations

import itertools
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nin_bench.data import Dataset, load_dataset
from nin_bench.models import build_model
from nin_bench.profile import profile_model
from nin_bench.steps import resolve_dtype
from nin_bench.timing import matmul_peak_flops, time_model
from nin_bench.variants import DATASETS, Variant, input_size_of

# A quick timing of the training step, for loop_efficiency when the timing stage did not measure that setting.
_EFFICIENCY_WARMUP, _EFFICIENCY_REPEATS = 3, 10


@dataclass
class RunContext:
    """What the stages of one run share: where to write, which device, and per-run caches."""

    out_dir: Path
    device: str
    device_name: str
    protocol: str
    progress: bool = True
    datasets: dict[str, Dataset] = field(default_factory=dict)
    peak_flops: dict[str, float] = field(default_factory=dict)  # dtype -> FLOP/s of the matmul reference
    train_step_img_per_s: dict[tuple, float] = field(default_factory=dict)

    def dataset(self, variant: Variant) -> Dataset:
        """Load (once per run) the variant's data set."""
        d = variant.config.data
        key = d.path if d.dataset == "imagefolder" else d.dataset
        if key not in self.datasets:
            self.datasets[key] = load_dataset(d.dataset, root=d.root, download=d.download, path=d.path)
        return self.datasets[key]

    def peak(self, dtype: str) -> float:
        """The device's matmul FLOP/s in `dtype`, measured once per run (the MFU reference)."""
        if dtype not in self.peak_flops:
            self.peak_flops[dtype] = matmul_peak_flops(torch.device(self.device), dtype)
        return self.peak_flops[dtype]


def shape_of(variant: Variant, ctx: RunContext) -> tuple[int, int, int]:
    """(channels, side, num_classes) the model sees: native data shape, or data.input_size / preset size."""
    d = variant.config.data
    if d.dataset == "imagefolder":
        ds = ctx.dataset(variant)
        c, side, n = ds.train_x.shape[1], ds.train_x.shape[2], len(ds.classes)
    else:
        c, side, n = DATASETS[d.dataset]
    return c, input_size_of(variant.config) or side, n


def make_model(variant: Variant, ctx: RunContext) -> torch.nn.Module:
    """Build the variant's model for its data shape (CPU, float32)."""
    m = variant.config.model
    c, side, n = shape_of(variant, ctx)
    return build_model(m.preset, n_1x1=m.n_1x1, head=m.head, dropout=m.dropout, in_channels=c, num_classes=n,
                       width=m.width, batchnorm=m.batchnorm, fc_hidden=m.fc_hidden, input_size=side, init=m.init)


def base_record(variant: Variant, ctx: RunContext, stage: str) -> dict[str, Any]:
    """The keys every record carries: variant axes, stage, protocol, device."""
    c, side, n = shape_of(variant, ctx)
    return {**variant.axes(c, side, n), "stage": stage, "status": "ok", "error": None, "protocol": ctx.protocol,
            "device": ctx.device, "device_name": ctx.device_name}


def error_text(exc: BaseException) -> str:
    """A one-line error with the innermost frame, for a record."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"


def run_profile(variant: Variant, ctx: RunContext) -> list[dict[str, Any]]:
    """Params, MACs and FLOPs of the variant at batch 1."""
    c, side, _ = shape_of(variant, ctx)
    model = make_model(variant, ctx)
    return [{**base_record(variant, ctx, "profile"), **profile_model(model, (c, side, side))}]


def run_timing(variant: Variant, ctx: RunContext, flops: dict[str, float]) -> list[dict[str, Any]]:
    """Throughput over every timing setting; one row each, an error row where a setting fails (e.g. OOM).

    Args:
        variant: the grid point.
        ctx: the run context.
        flops: {"forward": FLOPs per image, "train_step": fwd+bwd FLOPs per image} for MFU.
    """
    t = variant.config.timing
    c, side, n = shape_of(variant, ctx)
    model = make_model(variant, ctx)
    rows = []
    for mode, dtype, cl, comp, bs in itertools.product(t.modes, t.dtypes, t.channels_last, t.compile, t.batch_sizes):
        row = {**base_record(variant, ctx, "timing"), "mode": mode, "dtype": dtype, "channels_last": cl,
               "compile": comp, "batch_size": bs}
        try:
            row.update(time_model(model, (c, side, side), mode=mode, batch_size=bs, device=torch.device(ctx.device),
                                  dtype=dtype, channels_last=cl, compile=comp, warmup=t.warmup, repeats=t.repeats,
                                  num_classes=n))
            row.update(utilisation(row["img_per_s"], flops.get(mode), ctx.peak(dtype)))
        except Exception as exc:  # one failing setting (OOM, compile failure) is recorded; the sweep goes on
            row.update(status="error", error=error_text(exc))
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


def utilisation(img_per_s: float, flops_per_img: float | None, peak_flops: float) -> dict[str, Any]:
    """Achieved TFLOP/s and MFU (achieved / the run's matmul peak in the same dtype)."""
    achieved = None if flops_per_img is None else img_per_s * flops_per_img
    return {"flops_per_img": flops_per_img, "achieved_tflops": None if achieved is None else achieved / 1e12,
            "peak_tflops": peak_flops / 1e12, "mfu": None if achieved is None else achieved / peak_flops}


def save_maps(maps: dict[str, Any] | None, ctx: RunContext, name: str) -> str | None:
    """Write the GAP confidence maps of one run as npz (the report reads them without torch)."""
    if maps is None:
        return None
    rel = Path("maps") / f"{name}.npz"
    (ctx.out_dir / "maps").mkdir(parents=True, exist_ok=True)
    tmp = ctx.out_dir / "maps" / f".{name}.tmp.npz"
    np.savez_compressed(tmp, **{k: np.asarray(v) for k, v in maps.items()})
    tmp.replace(ctx.out_dir / rel)
    return str(rel)


def checkpoint_path(out_dir: Path, variant_id: str, seed: int) -> Path:
    """Where one training run checkpoints (git-ignored; removed once the run is recorded)."""
    return out_dir / ".cache" / "checkpoints" / f"{variant_id}-seed{seed}.pt"


def train_dtype(variant: Variant, device: str) -> str:
    """The training dtype: `train.dtype`, where "auto" is bf16 autocast on CUDA and fp32 on the CPU."""
    return resolve_dtype(variant.config.train.dtype, device)


def reference_train_step(variant: Variant, ctx: RunContext, timing_rows: list[dict[str, Any]]) -> float:
    """The timing harness's train-step img/s for the training setting (batch, dtype, layout, compile).

    Taken from the timing stage's records when it measured that setting, else measured here once per variant.
    """
    tr = variant.config.train
    want = {"mode": "train_step", "batch_size": tr.batch_size, "dtype": train_dtype(variant, ctx.device),
            "channels_last": tr.channels_last, "compile": tr.compile}
    for r in timing_rows:
        if r.get("status") == "ok" and all(r.get(k) == v for k, v in want.items()):
            return r["img_per_s"]
    key = (variant.id, *want.values())
    if key not in ctx.train_step_img_per_s:
        c, side, n = shape_of(variant, ctx)
        res = time_model(make_model(variant, ctx), (c, side, side), mode="train_step", batch_size=tr.batch_size,
                         device=torch.device(ctx.device), dtype=want["dtype"], channels_last=tr.channels_last,
                         compile=tr.compile, warmup=_EFFICIENCY_WARMUP, repeats=_EFFICIENCY_REPEATS, num_classes=n)
        ctx.train_step_img_per_s[key] = res["img_per_s"]
    return ctx.train_step_img_per_s[key]


def run_train(variant: Variant, seed: int, ctx: RunContext, timing_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train one (variant, seed), resuming from its checkpoint; per-epoch rows plus one final row.

    Args:
        variant: the grid point.
        seed: seeds the model's init here, and the data order and augmentation inside the loop.
        ctx: the run context.
        timing_rows: this variant's timing records (for loop_efficiency).
    """
    from nin_bench.train import (
        train_model,  # the heaviest stage; imported only when training runs
    )

    data = ctx.dataset(variant)
    c, side, _ = shape_of(variant, ctx)
    name = f"{variant.id}-seed{seed}"
    ckpt = checkpoint_path(ctx.out_dir, variant.id, seed)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = make_model(variant, ctx)
    result = train_model(model, data, variant.config.train, device=torch.device(ctx.device), seed=seed,
                         input_size=side, checkpoint_path=ckpt, progress=ctx.progress)
    base = {**base_record(variant, ctx, "train"), "seed": seed}
    rows = [{**base, "stage": "train_epoch", **e} for e in result.epochs]
    final = {**base, **result.final, "status": result.final.get("status", "ok"),
             "data_source": data.source, "data_sha256": data.source_sha256, "dtype": train_dtype(variant, ctx.device),
             "maps_file": save_maps(result.maps, ctx, name)}
    reference = reference_train_step(variant, ctx, timing_rows)
    final["timing_train_img_per_s"] = reference
    final["loop_efficiency"] = final["loop_img_per_s"] / reference if final.get("loop_img_per_s") else None
    if final["status"] == "diverged":
        final["error"] = f"loss became non-finite in epoch {final.get('diverged_epoch')}"
    rows.append(final)
    return rows
