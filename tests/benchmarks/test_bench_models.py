"""Forward and train-step speed of every `one_by_one` variant (its CPU protocol) at two batch sizes on the CPU.

Compare runs with `--benchmark-compare --benchmark-compare-fail=median:50%` (README); grouped by variant.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bench_info import record

from nin_bench.measure.counts import profile_model
from nin_bench.models.build import build_variant_model
from nin_bench.runtime.device import set_threads
from nin_bench.runtime.train_step import train_step
from nin_bench.suite.config import load_config, resolve_protocol
from nin_bench.suite.variants import expand_grid

SUITE = Path(__file__).parents[2] / "ablations" / "one_by_one.yaml"
BATCH_SIZES = (8, 32)  # batch 1 times ~1 ms here, where this shared VM's noise reached 67 % run to run
VARIANTS = expand_grid(resolve_protocol(load_config(SUITE), cuda=False)[0])


@pytest.fixture(scope="module", params=VARIANTS, ids=lambda v: v.id)
def variant_model(request):
    """(variant, channels_last model, input shape, profile) for one variant; built once per module."""
    set_threads(None)
    variant = request.param
    shape = variant.data_shape()
    model = build_variant_model(variant, shape)
    prof = profile_model(model, shape.input_shape)
    return variant, model.to(memory_format=torch.channels_last), shape.input_shape, shape.num_classes, prof


def _batch(shape, n_classes, bs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bs, *shape, generator=g).contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, n_classes, (bs,), generator=g)


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_forward(benchmark, variant_model, batch_size):
    variant, model, shape, n, prof = variant_model
    x, _ = _batch(shape, n, batch_size)
    model.eval()
    benchmark.group = variant.id
    with torch.inference_mode():
        logits = benchmark(model, x)
    assert logits.shape == (batch_size, n) and torch.isfinite(logits).all()
    record(benchmark, batch_size=batch_size, mode="forward", params=prof["params"],
           macs=prof["macs"])


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_train_step(benchmark, variant_model, batch_size):
    variant, model, shape, n, prof = variant_model
    x, y = _batch(shape, n, max(batch_size, 2))  # BatchNorm in train mode needs two samples
    model.train()
    benchmark.group = variant.id
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss = benchmark(train_step, model, opt, x, y)
    assert torch.isfinite(loss)
    record(benchmark, batch_size=x.shape[0], mode="train_step", params=prof["params"],
           macs=prof["macs"])
