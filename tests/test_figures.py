"""The report's figures: which exist for which folder and why the others are not drawn; every PNG of a 16-variant
grid fits a screen or two at the report's 150 dpi; each grid axis is encoded once; the forest plot draws
compare_run's intervals; the interaction cells add up to compare_run's interaction."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from synthetic_run import (
    GRID16,
    HEAD_ACC,
    grid16_vid,
    head_vid,
    make_grid16_run,
    make_head_grid,
)

from nin_bench.report import build_report, comparisons, curves, effects, plots
from nin_bench.report.encoding import encode, key_variants
from nin_bench.report.figures import Figure, not_drawn
from nin_bench.report.load import baselines, grid_axes, load_run
from nin_bench.report.stats import seed_accuracies
from nin_bench.report.tables import results_table

DPI = 30  # drawn small to stay fast; sizes are scaled to the report's 150 dpi (text scales with the dpi too)
MAX_PX = 2400  # a screen or two
T975_DF2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # Student's t quantile, 2 degrees of freedom, closed form
GRID16_FIGURES = ["accuracy_forest", "accuracy_vs_cost", "interaction_cifar10", "layer_time_vs_macs",
                  "learning_curves", "paper_deltas", "roofline", "size_by_block", "throughput_vs_batch",
                  "train_vs_val"]


@pytest.fixture(scope="module")
def grid16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 16-variant grid's folder with its report built (small PNGs, no SVG)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "DPI", DPI)
    mp.setattr(plots, "SVG", False)
    root = make_grid16_run(tmp_path_factory.mktemp("grid16"))
    build_report(root)
    mp.undo()
    return root


def test_grid16_figures_all_drawn_and_fit_a_screen(grid16: Path) -> None:
    pngs = sorted((grid16 / "figures").glob("*.png"))
    assert [p.stem for p in pngs] == GRID16_FIGURES
    for p in pngs:
        with Image.open(p) as im:
            w, h = (x * plots.DPI / DPI for x in im.size)
        assert h <= MAX_PX and w <= MAX_PX, (p.name, w, h)
    md = (grid16 / "report.md").read_text()
    assert "Not drawn" not in md and md.count("](figures/") == len(GRID16_FIGURES)


def test_grid16_layer_figure_shows_three_and_the_table_all(grid16: Path) -> None:
    run = load_run(grid16)
    keys = key_variants(results_table(run), "macs", baselines(run.summary, run.config))
    assert keys == [grid16_vid(0, "gap", 0.5), grid16_vid(2, "gap", 0.5), grid16_vid(3, "gap", 0.5)]
    md = (grid16 / "report.md").read_text()
    shares = md.split("| Variant | k×k conv (% fwd) |")[1].split("\n\n")[0]
    assert shares.count("\n| n_1x1=") == 16
    # the gap table: every variant at its last epoch; no dropout: 10 pp, dropout 0.5: 4 pp (synthetic_run)
    gaps = md.split("| Train acc (eval mode) |")[1].split("\n\n")[0]
    assert gaps.count("\n| cifar10 |") == 16
    assert "| cifar10 | n_1x1=0, head=gap, dropout=0.0 | 4 | 71.00 % | 61.00 % | +10.00 pp |" in gaps
    assert "| cifar10 | n_1x1=2, head=gap, dropout=0.5 | 4 | 70.00 % | 66.00 % | +4.00 pp |" in gaps


def test_each_axis_encoded_once(grid16: Path) -> None:
    run = load_run(grid16)
    enc = encode(run.summary, grid_axes(run.config, run.summary))
    assert enc.channel == {"n_1x1": "color", "head": "marker", "dropout": "dash"}
    assert [len(c) for c in enc.handles()] == [4, 2, 2]  # a legend of 8 entries, not 16
    styles = {(s.color, s.marker, s.dash) for s in map(enc.style, run.summary["variant"])}
    assert len(styles) == 16 and len(GRID16["model.n_1x1"]) * 2 * 2 == 16


def hand_ci(d: np.ndarray) -> tuple[float, float, float]:
    half = T975_DF2 * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_forest_draws_compare_runs_intervals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_run(make_head_grid(tmp_path))  # baseline: FC without dropout
    cmp = comparisons.compare_run(run)
    rows = effects.forest_rows(cmp, results_table(run)).set_index("variant")
    base = np.array(HEAD_ACC[("fc", 0.0)])
    assert sorted(rows.index) == sorted(head_vid(h, d) for h, d in HEAD_ACC if (h, d) != ("fc", 0.0))
    for (h, d), accs in HEAD_ACC.items():
        if (h, d) == ("fc", 0.0):
            continue
        m, lo, hi = hand_ci(np.array(accs) - base)  # e.g. GAP, 0.5: -6, -5, -6 pp
        r = rows.loc[head_vid(h, d)]
        assert (r["delta_mean"], r["ci_lo"], r["ci_hi"]) == (pytest.approx(m, abs=1e-12),
                                                              pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    drawn = {}

    def keep(fig, out, name):
        drawn[name] = fig
        return Path(name)

    monkeypatch.setattr(effects, "save", keep)
    effects.forest_figure(rows.reset_index(), None)
    ax = drawn["accuracy_forest"].axes[0]
    bars = [tuple(line.get_xdata()) for line in ax.lines  # horizontal CI bars (the zero line is vertical)
            if len(line.get_xdata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1]]
    want = sorted(zip(100 * rows["ci_lo"], 100 * rows["ci_hi"]))
    assert sorted(bars) == [pytest.approx(w, abs=1e-9) for w in want]
    points = [line for line in ax.lines if len(line.get_xdata()) == 1]
    assert [p.get_fillstyle() == "full" for p in points] == list(rows["resolved"])
    assert [p.get_xdata()[0] for p in points] == pytest.approx(list(100 * rows["delta_mean"]))
    assert any(tuple(line.get_xdata()) == (0, 0) for line in ax.lines)  # the zero line


def test_interaction_cells_add_up_to_compare_runs_interaction(tmp_path: Path) -> None:
    run = load_run(make_head_grid(tmp_path))
    cmp = comparisons.compare_run(run)
    bases = baselines(run.summary, run.config)
    design = comparisons.design(run.summary, run.config, bases["cifar10"])
    cells = effects.interaction_cells(seed_accuracies(run.stage("train")), design, "head", "dropout")
    d = cells.set_index(["a_level", "b_level"])["delta_mean"]
    assert d[("fc", "0.0")] == 0.0  # the reference cell (the baseline's levels)
    assert d[("gap", "0.0")] == pytest.approx(0.01, abs=1e-12)  # GAP − FC without dropout: 1, 0, 2 pp
    inter = cmp[(cmp["kind"] == "interaction")]["delta_mean"].iloc[0]
    assert d[("gap", "0.5")] - d[("fc", "0.5")] - d[("gap", "0.0")] == pytest.approx(inter, abs=1e-12)


def test_what_is_not_drawn_and_why() -> None:
    same_cost = pd.DataFrame({"dataset": ["cifar10"] * 2, "variant": ["a", "b"], "test_acc_mean": [0.7, 0.65],
                              "ci_lo": [0.69, 0.64], "ci_hi": [0.71, 0.66], "params": [64_500] * 2,
                              "macs": [16_700_000] * 2})
    enc = encode(same_cost.assign(dropout=[0.0, 0.5]), ["dropout"])
    skip = plots.accuracy_vs_cost(same_cost, enc, None)  # dropout changes neither params nor MACs
    assert isinstance(skip, plots.Skip) and "same parameters and MACs" in skip.reason
    old = pd.DataFrame({"variant": ["a"], "dataset": ["cifar10"], "status": ["ok"], "seed": [0], "epoch": [1],
                        "val_acc": [0.5], "train_loss": [1.0], "train_acc": [0.45]})  # before train_eval_acc
    assert curves.train_vs_val(old, enc, {}, [], None) == plots.Skip(curves.NO_TRAIN_EVAL)
    assert curves.final_gaps(old).empty
    one_seed = pd.DataFrame([{"dataset": "cifar10", "variant": "b", "label": "b", "n": 1, "delta_mean": -0.05,
                              "ci_lo": math.nan, "ci_hi": math.nan, "resolved": False}])
    assert isinstance(effects.forest_figure(one_seed, None), plots.Skip)
    line = not_drawn([Figure("accuracy_vs_cost", None, skip.reason), Figure("roofline", Path("r.png"), "...")])
    assert line == f"**Not drawn:** `accuracy_vs_cost` ({skip.reason})."
