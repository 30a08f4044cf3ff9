"""The training protocol as the report states it: resolved augmentation, model settings beside the paper's form,
and the config's note on why the protocol is what it is."""
from __future__ import annotations

from typing import Any

import pandas as pd

from nin_bench.suite.presets import auto_augment

AUGMENT_WORDS = {"none": "off", "flip": "horizontal flips", "crop": "random crops (pad 4)",
                 "crop_flip": "random crops (pad 4) + horizontal flips", "on": "on"}


def _resolve(value: Any, dataset: str) -> str:
    """A config `train.augment` value as the train stage resolves it for `dataset`."""
    if isinstance(value, bool):  # configs before the named choices stored a flag
        return "on" if value else "none"
    value = str(value)
    return auto_augment(dataset) if value == "auto" else value


def augmentation(train: pd.DataFrame, config: dict[str, Any], datasets: list[str]) -> dict[str, str]:
    """The augmentation each data set was trained with.

    Args:
        train: "train" records; their `augment` column is the resolved choice ("none" | "flip" | "crop" |
            "crop_flip") and wins where present.
        config: resolved config; `train.augment` is used for data sets whose records lack the column
            ("auto": crop_flip for cifar10 / imagefolder, crop for fashion_mnist).
        datasets: the run's data sets, in order.

    Returns:
        dataset -> choice ("a/b" when a grid varied it); data sets with neither source are absent.
    """
    out: dict[str, str] = {}
    if not train.empty and "augment" in train:
        for ds, g in train[train["augment"].notna()].groupby("dataset", sort=False):
            out[str(ds)] = "/".join(dict.fromkeys(map(str, g["augment"])))
    value = (config.get("train") or {}).get("augment")
    for ds in datasets:
        if ds not in out and value is not None:
            out[ds] = _resolve(value, ds)
    return out


def is_on(choice: str | None) -> bool:
    """Whether a resolved choice (or "a/b" mix) augments at all."""
    return choice is not None and any(c != "none" for c in choice.split("/"))


def augment_words(choice: str) -> str:
    """"random crops (pad 4) + horizontal flips", "off", ... for a resolved choice (or "a/b" mix)."""
    return " / ".join(AUGMENT_WORDS.get(c, c) for c in choice.split("/"))


def augment_text(choices: dict[str, str]) -> str:
    """"augmentation off", or per data set where they differ: "augmentation random crops (cifar10), off (...)"."""
    if not choices:
        return "augmentation ?"
    if len(set(choices.values())) == 1:
        return "augmentation " + augment_words(next(iter(choices.values())))
    return "augmentation " + ", ".join(f"{augment_words(c)} ({ds})" for ds, c in choices.items())


def model_settings(config: dict[str, Any]) -> str:
    """The model settings that differ from the paper's form, from config `model` (grid axes left out).

    Args:
        config: resolved config.

    Returns:
        e.g. "width 0.25, BatchNorm, init kaiming"; "" when nothing applies.
    """
    m = config.get("model") or {}
    grid = {str(k) for k in (config.get("grid") or {})}
    parts = []
    if "model.width" not in grid and m.get("width") is not None and float(m["width"]) != 1.0:
        parts.append(f"width {float(m['width']):g}")
    if "model.batchnorm" not in grid and m.get("batchnorm"):
        parts.append("BatchNorm")
    if "model.init" not in grid and m.get("init"):
        parts.append(f"init {m['init']}")
    return ", ".join(parts)


def cut_words(config: dict[str, Any]) -> list[str]:
    """The data cuts a run made, in words (none when it trained and scored on the whole sets).

    Args:
        config: resolved config (`train.subset`, `train.test_subset`; `data.subset` where the first version kept
            the training cut).

    Returns:
        e.g. ["training subset 2000", "test accuracy on the first 1,000 test images only"].
    """
    tr = config.get("train") or {}
    subset = tr.get("subset") or (config.get("data") or {}).get("subset")
    return ([f"training subset {subset}"] if subset else []) + (
        [f"test accuracy on the first {tr['test_subset']:,} test images only"] if tr.get("test_subset") else [])


def protocol_note(config: dict[str, Any], protocol: str | None) -> str | None:
    """The "**Why this protocol:** ..." paragraph from config `protocol_notes`, or None without an entry.

    Args:
        config: resolved config (`protocol_notes`: protocol name -> text).
        protocol: the run's protocol.

    Returns:
        The paragraph text, or None.
    """
    note = (config.get("protocol_notes") or {}).get(protocol) if protocol else None
    return f"**Why this protocol:** {str(note).strip()}" if note else None
