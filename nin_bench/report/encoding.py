"""How a figure shows a grid of variants: each grid axis once, by one visual channel, the same in every figure;
and which few variants stand for the rest where a figure would otherwise need a panel per variant.

The axis with the most levels gets colour (a sequential palette for a numeric axis of three or more levels, so
n_1x1 = 0..3 reads as an order), the next marker shape, the next line style (and, for points without lines, the
marker's fill); axes beyond three share the line-style channel as combinations. A 16-variant grid (4 × 2 × 2)
thus needs a legend of 4 + 2 + 2 entries, not 16 near-identical colours.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<"]
DASHES = ["-", "--", ":", "-."]
FILLS = ["full", "none", "left", "bottom"]
CHANNELS = ("color", "marker", "dash")
MAX_KEY = 3  # variants per data set where a figure shows some for all: the baseline and two extremes


@dataclass(frozen=True)
class Style:
    """How one variant is drawn.

    Attributes:
        color: RGB.
        marker: matplotlib marker.
        dash: line style.
        fill: marker fill style (points without lines carry the line-style axis by their fill).
    """

    color: tuple
    marker: str
    dash: str
    fill: str

    def line(self) -> dict:
        """Keyword arguments of `Axes.plot` for a line with markers."""
        return {"color": self.color, "marker": self.marker, "ls": self.dash, "fillstyle": self.fill, "ms": 5}

    def point(self) -> dict:
        """Keyword arguments of `Axes.errorbar` / `plot` for a point without a line."""
        return {"color": self.color, "marker": self.marker, "ls": "", "fillstyle": self.fill, "ms": 7}


def _is_numeric(levels: list[str]) -> bool:
    try:
        [float(v) for v in levels]
    except ValueError:
        return False
    return True


def _palette(levels: list[str]) -> list[tuple]:
    """Sequential for an ordered (numeric) axis of 3+ levels, else categorical."""
    if len(levels) >= 3 and _is_numeric(levels):
        return sns.color_palette("viridis", len(levels) + 1)[:len(levels)]  # drop the pale yellow end
    return sns.color_palette("tab10" if len(levels) <= 10 else "husl", len(levels))


@dataclass(frozen=True)
class Encoding:
    """Variant -> style, by the grid axes.

    Attributes:
        channel: axis -> "color", "marker" or "dash".
        levels: axis -> its levels (strings) in grid order.
        value: variant -> axis -> level.
        colors: level of the colour axis -> RGB.
    """

    channel: dict[str, str]
    levels: dict[str, list[str]]
    value: dict[str, dict[str, str]]
    colors: dict[str, tuple]

    def style(self, variant: str) -> Style:
        """The style of a variant (grey circles for one the encoding does not know)."""
        if variant not in self.value:
            return Style((0.5, 0.5, 0.5), "o", "-", "full")
        v, ax = self.value[variant], {c: a for a, c in self.channel.items()}
        idx = {c: self.levels[a].index(v[a]) for c, a in ax.items()}
        return Style(self.colors[v[ax["color"]]] if "color" in ax else sns.color_palette("tab10")[0],
                     MARKERS[idx.get("marker", 0) % len(MARKERS)], DASHES[idx.get("dash", 0) % len(DASHES)],
                     FILLS[idx.get("dash", 0) % len(FILLS)])

    def level_style(self, axis: str, level: str, index: int = 0) -> dict:
        """Keyword arguments of `Axes.plot` for the line of one level of one axis (a figure that draws a line per
        level, e.g. an interaction plot), in that axis's channel; a categorical colour for an axis it lacks."""
        ch = self.channel.get(axis)
        i = self.levels[axis].index(level) if ch and level in self.levels[axis] else 0
        if ch == "color":
            return {"color": self.colors[level], "marker": "o", "ls": "-"}
        if ch == "marker":
            return {"color": "0.25", "marker": MARKERS[i % len(MARKERS)], "ls": "-"}
        if ch == "dash":
            return {"color": "0.25", "marker": "o", "ls": DASHES[i % len(DASHES)]}
        return {"color": sns.color_palette("tab10")[index % 10], "marker": "o", "ls": "-"}

    def handles(self, points: bool = False) -> list[list[plt.Line2D]]:
        """Legend entries, a column per axis and one entry per level ("n_1x1 = 2" in its colour, "head = fc" as
        its marker, "dropout = 0.0" as its line style).

        Args:
            points: the figure draws points without lines (the line-style axis shows as marker fill).
        """
        out = []
        for axis, ch in self.channel.items():
            column = []
            for i, lv in enumerate(self.levels[axis]):
                name = lv if axis == "variant" else f"{axis} = {lv}"
                if ch == "color":
                    column.append(plt.Line2D([], [], color=self.colors[lv], marker="o", ls="", label=name))
                elif ch == "marker":
                    column.append(plt.Line2D([], [], color="0.25", marker=MARKERS[i % len(MARKERS)], ls="",
                                             label=name))
                elif points:
                    column.append(plt.Line2D([], [], color="0.25", marker="o", ls="", label=name,
                                             fillstyle=FILLS[i % len(FILLS)]))
                else:
                    column.append(plt.Line2D([], [], color="0.25", ls=DASHES[i % len(DASHES)], label=name))
            out.append(column)
        return out


def encode(summary: pd.DataFrame, axes: list[str]) -> Encoding:
    """Give each varying grid axis (the data set aside: figures facet by it) one channel.

    Args:
        summary: one row per variant (its axis columns).
        axes: the grid's axis columns (`load.grid_axes`), in grid order.

    Returns:
        An `Encoding`; with no varying axis, each variant id is a level of one colour axis "variant".
    """
    s = summary.astype({a: str for a in axes if a in summary})
    vary = [a for a in axes if a != "dataset" and a in s and s[a].nunique() > 1]
    levels = {a: list(dict.fromkeys(s[a])) for a in vary}
    value = {str(r["variant"]): {a: r[a] for a in vary} for _, r in s.iterrows()}
    if not vary:
        levels = {"variant": list(dict.fromkeys(s["variant"].astype(str)))}
        value = {v: {"variant": v} for v in levels["variant"]}
        vary = ["variant"]
    order = sorted(vary, key=lambda a: -len(levels[a]))  # stable: grid order among equals
    if len(order) > len(CHANNELS):  # the rest shares the last channel, as combinations
        rest = order[len(CHANNELS) - 1:]
        name = " · ".join(rest)
        for v in value.values():
            v[name] = ", ".join(f"{a}={v[a]}" for a in rest)
        levels[name] = list(dict.fromkeys(v[name] for v in value.values()))
        order = [*order[:len(CHANNELS) - 1], name]
    channel = dict(zip(order, CHANNELS))
    colour_axis = order[0]
    return Encoding(channel, {a: levels[a] for a in order}, value,
                    dict(zip(levels[colour_axis], _palette(levels[colour_axis]))))


def key_variants(table: pd.DataFrame, by: str, bases: dict[str, str | None],
                 limit: int = MAX_KEY) -> list[str]:
    """The variants that stand for a data set's grid in a figure of one panel per variant: the baseline, then
    the lowest and the highest `by` (e.g. MACs), in grid order.

    Args:
        table: rows with `variant`, `dataset` and the `by` column, in grid order.
        by: the column whose extremes to show.
        bases: dataset -> baseline variant.
        limit: at most this many per data set.

    Returns:
        Variant ids, data set by data set, each in grid order.
    """
    out: list[str] = []
    for ds, g in table.groupby("dataset", sort=False):
        pick = [bases.get(str(ds))]
        vals = pd.to_numeric(g[by], errors="coerce") if by in g else pd.Series(dtype=float)
        if vals.notna().any():
            pick += [g.loc[vals.idxmin(), "variant"], g.loc[vals.idxmax(), "variant"]]
        pick = [v for v in dict.fromkeys(pick) if v in set(g["variant"])][:limit]
        out += [v for v in g["variant"] if v in pick]
    return out
