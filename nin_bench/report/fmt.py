"""Numbers rounded for reading (the CSVs keep full precision): 967k params, 222.5M MACs, 88.31 %."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

NA = "–"


def missing(x: Any) -> bool:
    """True for None, NaN and pandas NA."""
    if x is None or x is pd.NA:
        return True
    try:
        return bool(math.isnan(float(x)))
    except (TypeError, ValueError):
        return False


def params(n: Any) -> str:
    """Parameter count with 3 significant digits: 966986 -> "967k", 1992166 -> "1.99M"."""
    if missing(n):
        return NA
    n = float(n)
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.0f}"


def macs(n: Any) -> str:
    """MAC / FLOP count in millions with one decimal (222486528 -> "222.5M"); G with 2 decimals from 1e9."""
    if missing(n):
        return NA
    n = float(n)
    if abs(n) >= 1e9:
        return f"{n / 1e9:.2f}G"
    if abs(n) >= 1e5:
        return f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.1f}k"


def rate(x: Any) -> str:
    """Throughput in img/s: thousands separators from 100 up, 3 significant digits below."""
    if missing(x):
        return NA
    x = float(x)
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def pct(x: Any, digits: int = 2, scale: float = 100.0) -> str:
    """A fraction as a percentage: 0.8831 -> "88.31 %"."""
    return NA if missing(x) else f"{float(x) * scale:.{digits}f} %"


def mfu(x: Any) -> str:
    """Model FLOP utilisation as a percentage with 2 significant digits: 0.0342 -> "3.4 %"."""
    return NA if missing(x) else f"{float(x) * 100:.2g} %"


def acc_pm(mean: Any, std: Any) -> str:
    """Accuracy "88.31 ± 0.42 %" (no ± with a single seed)."""
    if missing(mean):
        return NA
    return f"{mean * 100:.2f} %" if missing(std) else f"{mean * 100:.2f} ± {std * 100:.2f} %"


def interval(lo: Any, hi: Any, signed: bool = False, unit: str = "%") -> str:
    """A CI "[87.90, 88.72] %" of fractions (signed: "[+0.12, +1.30] pp"); "n/a" when undefined."""
    if missing(lo) or missing(hi):
        return "n/a"
    f = "+.2f" if signed else ".2f"
    return f"[{lo * 100:{f}}, {hi * 100:{f}}] {unit}"


def delta(x: Any) -> str:
    """A difference of accuracies in percentage points: 0.0123 -> "+1.23 pp"."""
    return NA if missing(x) else f"{x * 100:+.2f} pp"


def seconds(x: Any) -> str:
    """A duration: "42 s", "12.5 min", "3.1 h"."""
    if missing(x):
        return NA
    x = float(x)
    if x < 120:
        return f"{x:.0f} s"
    return f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.1f} h"
