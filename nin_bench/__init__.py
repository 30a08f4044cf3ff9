"""nin_bench: a benchmarking and ablation suite for Network in Network (Lin, Chen & Yan, ICLR 2014).

`build_model` and `REGISTRY` are loaded lazily so that `import nin_bench` (and the report, which reads only
stored records) works where torch cannot be imported.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["REGISTRY", "build_model", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("build_model", "REGISTRY"):
        from nin_bench import models

        return getattr(models, name)
    raise AttributeError(f"module 'nin_bench' has no attribute {name!r}")
