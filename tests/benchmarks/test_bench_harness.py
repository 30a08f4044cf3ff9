"""Speed of the harness itself: the profile stage, loading a data set from the cache, building a report."""
from __future__ import annotations

import os

import pytest
from bench_info import record

from nin_bench.measure.counts import profile_model
from nin_bench.models.nin import build_model


def test_profile_stage(benchmark):
    benchmark.group = "harness"
    model = build_model("nin_cifar")
    prof = benchmark.pedantic(profile_model, args=(model, (3, 32, 32)), rounds=15, warmup_rounds=2)
    assert prof["macs"] == 222_486_528 and prof["counts_agree"]
    record(benchmark, params=prof["params"], macs=prof["macs"])


@pytest.mark.skipif(not os.environ.get("NIN_BENCH_DATA"), reason="set NIN_BENCH_DATA (CI: ../shared/data)")
def test_load_from_cache(benchmark):
    from nin_bench.data.datasets import load_dataset

    benchmark.group = "harness"
    load_dataset("fashion_mnist")  # decode once into the cache; the benchmark times warm loads
    ds = benchmark.pedantic(load_dataset, args=("fashion_mnist",), rounds=15, warmup_rounds=1)
    assert ds.train_x.shape == (60000, 1, 28, 28)
    record(benchmark, images=len(ds.train_x) + len(ds.test_x))


def test_report_generation(benchmark, tmp_path):
    from synthetic_run import make_full_run

    from nin_bench.report import build_report

    benchmark.group = "harness"
    root = make_full_run(tmp_path)
    # measured (--benchmark-enable): the whole report, figures included. Run once as a correctness test (the
    # default): its text and tables, the figures of the same synthetic run being drawn and checked by
    # tests/test_report.py (drawing them twice cost this suite ~12 s)
    path = benchmark.pedantic(build_report, args=(root,), kwargs={"figures": not benchmark.disabled}, rounds=3,
                              iterations=1)
    assert path.exists() and "## Answer" in path.read_text()
    record(benchmark)
