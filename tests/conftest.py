"""Shared test set-up. This folder is on sys.path (pytest's prepend import mode puts a conftest's folder
there), so tests and benchmarks import helpers such as `synthetic_run` by module name."""
import dataclasses
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: pays for real inductor compiles (20-40 s each on 2 cores)")


@pytest.fixture(scope="session")
def fashion(tmp_path_factory: pytest.TempPathFactory):
    """Fashion-MNIST cut to 2,500 training and 1,000 test images (a fresh cache dir: no shared state)."""
    root = os.environ.get("NIN_BENCH_DATA")
    if not root:
        pytest.skip("NIN_BENCH_DATA is not set (point it at a folder with fashion-mnist/, e.g. ../shared/data)")
    from nin_bench.data.datasets import load_dataset

    ds = load_dataset("fashion_mnist", root=root, cache_dir=tmp_path_factory.mktemp("cache"))
    return dataclasses.replace(ds, train_x=ds.train_x[:2500], train_y=ds.train_y[:2500],
                               test_x=ds.test_x[:1000], test_y=ds.test_y[:1000])
