"""Shared test set-up. This folder is on sys.path (pytest's prepend import mode puts a conftest's folder
there), so tests and benchmarks import helpers such as `synthetic_run` by module name."""


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: pays for real inductor compiles (20-40 s each on 2 cores)")
