"""The timing's self-check: variants whose eval forward is the same computation must time equal.

Dropout is the identity in eval mode, so two variants identical in every axis but `dropout` (and `head_dropout`
where a suite has that column) run the same forward. Their measured forward speed ratio, per setting, with its CI
over paired rounds, is a check on the timing itself: a pair more than 7 % apart means whatever the machine did
between measurements is in the comparisons, and no speed ratio of the run can be trusted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from nin_bench.report.ratios import Ratio, Setting, TimingIndex, ratio_text
from nin_bench.store.schema import VARIANT_COLUMNS

BAND = (0.93, 1.07)  # equal computations must time within 7 % of each other
IGNORED = ("variant", "dropout", "head_dropout")  # what an eval forward does not depend on (and the id)
DIFFERS = "DIFFERS by more than 7 %"
EQUAL = "equal within 7 %"
WIDE = "interval wider than ±7 %: not confirmed"
NO_INTERVAL = "within 7 % (no rounds: no interval)"


@dataclass(frozen=True)
class PairCheck:
    """One identical-computation pair at one forward setting.

    Attributes:
        ref: the pair's first variant (the lower dropout).
        other: the second variant.
        setting: (mode, batch_size, dtype, channels_last, compile) of the forward rows.
        ratio: forward speed of `other` ÷ `ref` (1 when the timing holds).
        verdict: `DIFFERS`, `EQUAL`, `WIDE` or `NO_INTERVAL`.
    """

    ref: str
    other: str
    setting: Setting
    ratio: Ratio
    verdict: str

    @property
    def untrusted(self) -> bool:
        """Whether this pair says the run's timing cannot be trusted."""
        return self.verdict == DIFFERS


def _verdict(r: Ratio) -> str:
    """Where a ratio stands against the ±7 % band."""
    lo, hi = BAND
    if not lo <= r.value <= hi:
        return DIFFERS
    if not r.has_ci:
        return NO_INTERVAL
    return EQUAL if lo <= r.lo and r.hi <= hi else WIDE


def _dropout(row: dict[str, Any]) -> tuple[float, float]:
    """(dropout, head_dropout) of a variant's row, missing as 0, to order a group's members."""
    values = [row.get(k) for k in ("dropout", "head_dropout")]
    return tuple(0.0 if v is None or pd.isna(v) else float(v) for v in values)  # type: ignore[return-value]


def same_computation_pairs(timing: pd.DataFrame, config: dict[str, Any]) -> list[tuple[str, str]]:
    """Pairs of variants identical in every axis but dropout: the lowest dropout of a group against each other.

    Args:
        timing: records of the "timing" stage (one variant's first row carries its axes).
        config: resolved config (its grid keys' last parts are axes too).

    Returns:
        (ref, other) variant ids, in the order variants first appear.
    """
    if timing.empty or "variant" not in timing:
        return []
    grid = [str(k).split(".")[-1] for k in (config.get("grid") or {})]
    axes = [c for c in dict.fromkeys([*VARIANT_COLUMNS, *grid]) if c in timing and c not in IGNORED]
    firsts = timing.drop_duplicates("variant").to_dict("records")
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in firsts:
        groups.setdefault(tuple(str(row.get(a)) for a in axes), []).append(row)
    pairs = []
    for members in groups.values():
        ordered = sorted(members, key=_dropout)
        ref = ordered[0]
        pairs += [(str(ref["variant"]), str(m["variant"])) for m in ordered[1:] if _dropout(m) != _dropout(ref)]
    return pairs


def check_pairs(timing: pd.DataFrame, rounds: pd.DataFrame, config: dict[str, Any]) -> list[PairCheck]:
    """The forward speed ratio of every identical-computation pair at every forward setting both have.

    Args:
        timing: records of the "timing" stage.
        rounds: records of the "timing_round" stage (empty for folders written before rounds).
        config: resolved config.

    Returns:
        One `PairCheck` per pair and setting, pairs in order, settings by rising batch size.
    """
    idx = TimingIndex(timing, rounds)
    out = []
    for ref, other in same_computation_pairs(timing, config):
        settings = sorted({s for v, s in idx.rows if v == ref and s[0] == "forward" and (other, s) in idx.rows},
                          key=lambda s: (s[1], s[2], s[3], s[4]))
        for s in settings:
            ratio = idx.speed_ratio(other, ref, s)
            if ratio is not None:
                out.append(PairCheck(ref, other, s, ratio, _verdict(ratio)))
    return out


def setting_text(s: Setting) -> str:
    """"batch 128, fp32", with channels_last and compile named when on."""
    parts = [f"batch {s[1]}", s[2]] + (["channels_last"] if s[3] else []) + (["compile"] if s[4] else [])
    return ", ".join(parts)


def warning(checks: list[PairCheck]) -> str | None:
    """The loud line for the top of the report, or None when no pair differs by more than 7 %."""
    bad = [c for c in checks if c.untrusted]
    if not bad:
        return None
    worst = max(bad, key=lambda c: abs(c.ratio.value - 1))
    return (f"**Warning: the timing of this run cannot be trusted.** {len(bad)} of {len(checks)} forward timings of "
            f"variants that run the same computation (they differ only in dropout, the identity in eval mode) "
            f"differ by more than 7 % (worst: {ratio_text(worst.ratio, digits=3)} at {setting_text(worst.setting)}); every "
            "speed ratio in this report carries that error. See \"Timing self-check\"; `run CONFIG --retime` on "
            "a quiet machine measures the timing again and keeps the rest.")


def table(checks: list[PairCheck], labels: dict[str, str]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the self-check table."""
    header = ["pair (second ÷ first)", "setting", "forward speed ratio (95 % CI)", "verdict"]
    rows = [[f"{labels.get(c.other, c.other)} ÷ {labels.get(c.ref, c.ref)}", setting_text(c.setting),
             ratio_text(c.ratio, digits=3), f"**{c.verdict}**" if c.untrusted else c.verdict] for c in checks]
    return header, rows

