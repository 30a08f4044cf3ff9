"""Shared test set-up. This folder is on sys.path (pytest's prepend import mode puts a conftest's folder
there), so tests and benchmarks import helpers such as `synthetic_run` by module name."""
import dataclasses
import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: pays for real inductor compiles (20-40 s each on 2 cores)")


@pytest.fixture(autouse=True)
def _torch_threads():
    """Each test ends with torch's thread count as it began: a run in-process sets its config's `threads` (often
    1) and leaves it set, which would slow (or change the fork-safety of) the tests after it."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


# The smallest valid PNG (1x1 grey): what `no_figures` writes in place of a drawn figure.
_PIXEL_PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010800000000"
                           "3a7e9b550000000a49444154789c63600000000200015d0f0b2e0000000049454e44ae426082")


@pytest.fixture
def no_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every report figure stood in for by a 1-pixel PNG, drawn by nobody: for tests of a report's text, tables
    and files (or of a run that ends in one), not of its figures. Drawing and saving them (PNG + SVG, tight
    boxes) is most of a report's cost; tests/test_report.py draws every figure of a full run and checks each."""
    import matplotlib.pyplot as plt

    from nin_bench.report import curves, effects, layers, maps, plots

    def stand_in(fig, out, name):
        plt.close(fig)
        png = out.figure(name, "png")
        png.parent.mkdir(parents=True, exist_ok=True)
        out.write(png, _PIXEL_PNG)
        return png

    for module in (plots, layers, maps, curves, effects):
        monkeypatch.setattr(module, "save", stand_in)


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
