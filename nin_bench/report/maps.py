"""GAP class-confidence maps: one test image per class beside the last block's map for every class.

The NiN paper (Sec. 4.7) argues that with global average pooling the last mlpconv layer's maps are category
confidence maps; this figure shows whether ours are. The train stage saved the maps as arrays, so no torch here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from nin_bench.report.plots import save  # noqa: E402
from nin_bench.store.folder import ResultsDir  # noqa: E402

MAP_KEYS = ("maps", "images", "labels", "preds", "classes")


def choose_maps(train: pd.DataFrame, summary: pd.DataFrame, baseline: str | None,
                out: ResultsDir) -> tuple[str, Path] | None:
    """The variant whose maps to show for one data set, and its .npz file.

    Args:
        train: the data set's "train" records.
        summary: the data set's summary rows (for head and test accuracy).
        baseline: the data set's baseline variant.
        out: the results folder (records name their maps files in it).

    Returns:
        (variant, npz path): the baseline if it is a GAP variant with a saved map file, else the GAP variant with
        the best mean test accuracy that has one; None if no map file exists.
    """
    if train.empty or "maps_file" not in train:
        return None
    gap = summary[summary["head"] == "gap"].sort_values("test_acc", ascending=False, na_position="last")
    order = ([baseline] if baseline in set(gap["variant"]) else []) + list(gap["variant"])
    for variant in order:
        rows = train[(train["variant"] == variant) & (train["status"] == "ok") & train["maps_file"].notna()]
        for rel in rows.sort_values("seed")["maps_file"]:
            path = out.map_file(str(rel))
            if path.exists():
                return variant, path
    return None


def read_maps(path: Path) -> dict[str, Any]:
    """Load a maps .npz (keys: maps [K, C, h, w], images uint8 [K, ch, H, W], labels, preds, classes)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in MAP_KEYS if k in z}


def _to_rgb(img: np.ndarray) -> np.ndarray:
    """CHW uint8 (1 or 3 channels) -> HWC float in [0, 1]."""
    x = np.transpose(np.asarray(img, float) / 255.0, (1, 2, 0))
    return np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x


def _mosaic(maps: np.ndarray, gap: int = 1) -> np.ndarray:
    """Tile maps [K, C, h, w] into one array (row i = image i, column j = class j), NaN between tiles.

    Each row is divided by its own maximum so the maps of one image share a colour scale.
    """
    k, c, h, w = maps.shape
    out = np.full((k * (h + gap) - gap, c * (w + gap) - gap), np.nan)
    for i in range(k):
        row = maps[i] / max(float(maps[i].max()), 1e-12)
        for j in range(c):
            out[i * (h + gap):i * (h + gap) + h, j * (w + gap):j * (w + gap) + w] = row[j]
    return out


def plot_maps(data: dict[str, Any], title: str, out: ResultsDir, name: str) -> Path:
    """Grid: a row per test image (image, then its map for each class); true class framed green.

    Drawn in one axes (each test image placed in the first column, one mosaic of all maps beside it) rather
    than K x C axes: the same picture, ten times faster to render.

    Args:
        data: `read_maps` output.
        title: figure title.
        out: the results folder (figures go to its figures/).
        name: file stem.

    Returns:
        PNG path.
    """
    maps = np.asarray(data["maps"], float)
    labels = np.asarray(data["labels"]).astype(int)
    preds = np.asarray(data.get("preds", data["labels"])).astype(int)
    classes = [str(c) for c in data.get("classes", range(maps.shape[1]))]
    k, c, h, w = maps.shape
    fig, ax = plt.subplots(figsize=(1.5 + 0.8 * (c + 1), 0.75 * k + 1.3), layout="constrained")
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="white")
    im = ax.imshow(_mosaic(maps), cmap=cmap, vmin=0, vmax=1, interpolation="nearest",
                   extent=(-0.5, c * (w + 1) - 1.5, k * (h + 1) - 1.5, -0.5))
    for i, img in enumerate(data["images"]):  # test image i in the column left of the maps, same tile size
        top = i * (h + 1) - 0.5
        ax.imshow(_to_rgb(img), extent=(-(w + 1) - 0.5, -1.5, top + h, top), interpolation="nearest")
        ax.add_patch(plt.Rectangle((labels[i] * (w + 1) - 0.75, top - 0.25), w + 0.5, h + 0.5, fill=False,
                                   edgecolor="lime", linewidth=2, clip_on=False))
        if preds[i] != labels[i]:  # a wrong prediction: its map dashed cyan
            ax.add_patch(plt.Rectangle((preds[i] * (w + 1) - 0.75, top - 0.25), w + 0.5, h + 0.5, fill=False,
                                       edgecolor="cyan", linewidth=1.5, linestyle="--", clip_on=False))
    ax.set_xlim(-(w + 1) - 0.6, c * (w + 1) - 1.4)
    ax.set_ylim(k * (h + 1) - 1.4, -0.6)
    ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(-1, c)], ["test image", *classes], fontsize=7,
                  rotation=45, ha="left")
    ax.xaxis.tick_top()
    ax.set_yticks([i * (h + 1) + (h - 1) / 2 for i in range(k)],
                  [f"{classes[labels[i]]}\npred {classes[preds[i]]} {'✓' if preds[i] == labels[i] else '✗'}"
                   for i in range(k)], fontsize=7)
    ax.set_xlabel(f"class map (last block output, {h}×{w} cells each; true class framed green, wrong "
                  "prediction dashed cyan)", fontsize=8)
    ax.spines[:].set_visible(False)
    cbar = fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    cbar.set_label("map value ÷ row maximum (ReLU output, unitless)", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save(fig, out, name)


def gap_map_figures(run_train: pd.DataFrame, summary: pd.DataFrame, bases: dict[str, str | None],
                    out: ResultsDir) -> list[tuple[str, str, Path]]:
    """One confidence-map figure per data set that has saved maps.

    Args:
        run_train: all "train" records.
        summary: the run's summary.
        bases: dataset -> baseline variant.
        out: the results folder (figures go to its figures/).

    Returns:
        (dataset, variant, png path) per figure written.
    """
    figures = []
    for ds, group in summary.groupby("dataset", sort=False):
        train = run_train[run_train["dataset"] == ds] if not run_train.empty else run_train
        choice = choose_maps(train, group, bases.get(str(ds)), out)
        if choice is None:
            continue
        variant, path = choice
        png = plot_maps(read_maps(path), f"{variant}: last-block class maps ({path.name})", out,
                        f"gap_maps_{ds}")
        figures.append((str(ds), variant, png))
    return figures
