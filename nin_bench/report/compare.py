"""`compare DIR_A DIR_B`: what differs between two results folders, then B against A for every timing row and
every trained variant both hold, each with a 95 % CI, marked only when the interval resolves a change.

Timing rows join on (variant, mode, batch_size, dtype, channels_last, compile). The two folders' rounds were not
measured together, so they do not pair: B ÷ A is the ratio of the geometric means of the per-round medians with
a Welch t-interval on their logs (`ratios.welch_ratio`). Accuracies: B − A test accuracy, paired by seed over the
seeds both folders trained (two or more), else Welch over the two sets of seeds. Read-only: no lock is taken
(a run appending meanwhile only adds rows; a torn last line is skipped). No torch.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from nin_bench.errors import UserError
from nin_bench.report.ratios import WELCH, Ratio, Setting, TimingIndex, ratio_text, welch_ratio
from nin_bench.report.stats import Estimate, paired_delta, welch_delta
from nin_bench.store.folder import ResultsDir
from nin_bench.store.records import latest_per_key, parse_jsonl

# Manifest keys a reader checks first, in this order; any other differing key follows, sorted.
FIRST_KEYS = ("device", "device_name", "cpu_model", "gpu_name", "threads", "torch_version", "git_commit",
              "git_dirty", "protocol", "executor", "nin_bench_version", "python_version")
PAIRED_SEEDS = "paired t over shared seeds"
WELCH_SEEDS = "Welch t over seeds"
NO_CI = "none"


@dataclass(frozen=True)
class Folder:
    """What compare reads from a results folder: its manifest, resolved config and current records."""

    root: Path
    manifest: dict[str, Any]
    config: dict[str, Any]
    records: list[dict[str, Any]]

    def frame(self, stage: str) -> pd.DataFrame:
        """The records of one stage."""
        return pd.DataFrame([r for r in self.records if r.get("stage") == stage])


@dataclass
class Comparison:
    """B against A: manifest differences, joined timing rows and accuracy deltas.

    Attributes:
        a: folder A.
        b: folder B.
        differences: (key, A's value, B's value) for every manifest (and `config.timing.*`) key that differs.
        timing: (variant, setting, time ratio B ÷ A, mark) per joined timing row.
        accuracy: (variant, B − A test-accuracy estimate, method, mark) per variant trained in both.
        only_a: timing rows A has and B lacks.
        only_b: timing rows B has and A lacks.
    """

    a: Folder
    b: Folder
    differences: list[tuple[str, Any, Any]] = field(default_factory=list)
    timing: list[tuple[str, Setting, Ratio, str]] = field(default_factory=list)
    accuracy: list[tuple[str, Estimate, str, str]] = field(default_factory=list)
    only_a: int = 0
    only_b: int = 0


def open_folder(path: Path) -> Folder:
    """Read a results folder without taking its lock.

    Raises:
        UserError: (one line) the path is not a results folder: no readable records.jsonl or manifest.json.
    """
    rd = ResultsDir(path)
    try:
        records = latest_per_key(parse_jsonl(rd.records.read_text()))
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not a results folder: no readable records.jsonl ({type(exc).__name__})") from None
    try:
        manifest = json.loads(rd.manifest.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a results folder: no readable manifest.json ({type(exc).__name__})") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a results folder: manifest.json is not a JSON object")
    return Folder(rd.root, manifest, rd.read_config(), records)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(a: Folder, b: Folder) -> list[tuple[str, Any, Any]]:
    """Every manifest key (nested ones dotted) and `config.timing.*` setting whose values differ."""
    fa = _flat(a.manifest) | _flat({"config": {"timing": a.config.get("timing") or {}}})
    fb = _flat(b.manifest) | _flat({"config": {"timing": b.config.get("timing") or {}}})
    keys = [k for k in FIRST_KEYS if k in fa or k in fb]
    keys += sorted(k for k in {*fa, *fb} if k not in FIRST_KEYS)
    return [(k, fa.get(k), fb.get(k)) for k in keys if fa.get(k) != fb.get(k)]


def _mark(resolved: bool, above: bool, words: tuple[str, str]) -> str:
    """words[0] when resolved above the no-change value, words[1] when resolved below, else "~"."""
    return (words[0] if above else words[1]) if resolved else "~"


def timing_lines(a: Folder, b: Folder) -> tuple[list[tuple[str, Setting, Ratio, str]], int, int]:
    """B ÷ A time per joined timing row (Welch on log per-round medians; a bare ratio when a side has < 2 rounds).

    Returns:
        (lines, rows only in A, rows only in B).
    """
    ia, ib = (TimingIndex(f.frame("timing"), f.frame("timing_round")) for f in (a, b))
    lines = []
    for key in [k for k in ia.rows if k in ib.rows]:
        ra, rb = ia.round_ms(*key), ib.round_ms(*key)
        if len(ra) >= 2 and len(rb) >= 2:
            ratio = welch_ratio(ra.to_numpy(), rb.to_numpy())
        else:
            ratio = Ratio(ib.ms(*key) / ia.ms(*key))  # type: ignore[operator]
        lines.append((key[0], key[1], ratio, _mark(ratio.resolved, ratio.value > 1, ("slower", "faster"))))
    return lines, len(set(ia.rows) - set(ib.rows)), len(set(ib.rows) - set(ia.rows))


def _accuracies(f: Folder) -> dict[str, pd.Series]:
    """variant -> seed -> test_acc of the successful train records."""
    out: dict[str, dict[int, float]] = {}
    for r in f.records:
        if r.get("stage") == "train" and r.get("status") == "ok" and r.get("test_acc") is not None:
            out.setdefault(str(r["variant"]), {})[int(r.get("seed") or 0)] = float(r["test_acc"])
    return {v: pd.Series(s).sort_index() for v, s in out.items()}


def accuracy_lines(a: Folder, b: Folder) -> list[tuple[str, Estimate, str, str]]:
    """B − A test accuracy per variant trained in both: paired by seed over >= 2 shared seeds, else Welch."""
    aa, ab = _accuracies(a), _accuracies(b)
    lines = []
    for v in [v for v in aa if v in ab]:
        shared = aa[v].index.intersection(ab[v].index)
        if len(shared) >= 2:
            est, method = paired_delta(ab[v], aa[v]), PAIRED_SEEDS
        else:
            est = welch_delta(ab[v].to_numpy(), aa[v].to_numpy())
            method = WELCH_SEEDS if not math.isnan(est.lo) else NO_CI
        resolved = not math.isnan(est.lo) and (est.lo > 0 or est.hi < 0)
        lines.append((v, est, method, _mark(resolved, est.mean > 0, ("higher", "lower"))))
    return lines


def compare_folders(dir_a: Path, dir_b: Path) -> Comparison:
    """Compare two results folders (read-only).

    Args:
        dir_a: folder A (the reference).
        dir_b: folder B.

    Returns:
        A `Comparison`.

    Raises:
        UserError: a path is not a results folder.
    """
    a, b = open_folder(dir_a), open_folder(dir_b)
    timing, only_a, only_b = timing_lines(a, b)
    return Comparison(a, b, differences(a, b), timing, accuracy_lines(a, b), only_a, only_b)


def _setting_text(s: Setting) -> str:
    """"train_step bs 128 fp32 channels_last compile"."""
    return " ".join([s[0], f"bs {s[1]}", s[2]] + (["channels_last"] if s[3] else []) + (["compile"] if s[4] else []))


def _who(f: Folder) -> str:
    """"results/x (Intel ..., 2 threads, torch 2.14.1, commit abc1234)"."""
    m = f.manifest
    return (f"{f.root} ({m.get('device_name', '?')}, {m.get('threads', '?')} threads, torch "
            f"{m.get('torch_version', '?')}, commit {str(m.get('git_commit', '?'))[:12]})")


def _interval_pp(e: Estimate) -> str:
    """"+0.52 pp [-0.31, +1.35]" (no interval: "+0.52 pp (no interval)")."""
    text = f"{e.mean * 100:+.2f} pp"
    return text + (" (no interval)" if math.isnan(e.lo) else f" [{e.lo * 100:+.2f}, {e.hi * 100:+.2f}]")


def render_text(c: Comparison) -> str:
    """The comparison as the lines `compare` prints."""
    out = [f"A: {_who(c.a)}", f"B: {_who(c.b)}"]
    out.append("What differs (A -> B):" if c.differences else "The manifests and timing settings are the same.")
    out += [f"  {k}: {json.dumps(va)} -> {json.dumps(vb)}" for k, va, vb in c.differences]
    out.append(f"Timing: B ÷ A time per iteration (> 1: B slower), 95 % CI by {WELCH} (unpaired: the folders' "
               f"rounds were not measured together); rows without rounds on either side: bare ratio of medians, "
               f"no interval. `slower`/`faster` only when the CI excludes 1, else `~`.")
    cells = [(v, _setting_text(s), ratio_text(r, digits=3).replace(", not resolved", ""), mark)
             for v, s, r, mark in c.timing]
    widths = [max((len(row[i]) for row in cells), default=0) for i in range(3)]
    out += ["  " + "  ".join(f"{x:<{w}}" for x, w in zip(row[:3], widths)) + f"  {row[3]}" for row in cells]
    counts = {m: sum(1 for *_, mk in c.timing if mk == m) for m in ("slower", "faster", "~")}
    out.append(f"  {len(c.timing)} rows joined: {counts['slower']} slower, {counts['faster']} faster, "
               f"{counts['~']} not resolved (~); {c.only_a} only in A, {c.only_b} only in B.")
    if c.accuracy:
        out.append("Accuracy: B − A test accuracy (percentage points), 95 % CI by paired t over the seeds both "
                   "trained (two or more), else Welch t; `higher`/`lower` only when the CI excludes 0, else `~`.")
        width = max(len(v) for v, *_ in c.accuracy)
        out += [f"  {v:<{width}}  {_interval_pp(e):<28} {method}, n {e.n}  {mark}" for v, e, method, mark in c.accuracy]
    else:
        out.append("Accuracy: no variant has successful train records in both folders.")
    return "\n".join(out)


def to_json(c: Comparison) -> str:
    """The comparison as one JSON object (NaN as null)."""
    def num(x: float) -> float | None:
        return None if math.isnan(x) else x

    return json.dumps({
        "a": str(c.a.root), "b": str(c.b.root),
        "differences": [{"key": k, "a": va, "b": vb} for k, va, vb in c.differences],
        "timing": [{"variant": v, "mode": s[0], "batch_size": s[1], "dtype": s[2], "channels_last": s[3],
                    "compile": s[4], "time_ratio": r.value, "ci_lo": num(r.lo), "ci_hi": num(r.hi), "rounds": r.n,
                    "method": r.method, "mark": mark}
                   for v, s, r, mark in c.timing],
        "accuracy": [{"variant": v, "delta": num(e.mean), "ci_lo": num(e.lo), "ci_hi": num(e.hi), "n": e.n,
                      "method": method, "mark": mark} for v, e, method, mark in c.accuracy],
        "only_a": c.only_a, "only_b": c.only_b}, indent=1)
