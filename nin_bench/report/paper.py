"""Our CIFAR-10 errors beside the NiN paper's (Lin, Chen & Yan, ICLR 2014), for the settings the run covers."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from nin_bench.report import fmt
from nin_bench.report.protocol import augment_words, cut_words, is_on

PAPER_PROTOCOL = ("Paper: full CIFAR-10 training set (50k; hyper-parameters tuned on its last 10k images), global "
                  "contrast normalisation and ZCA whitening as in Maxout networks, SGD on mini-batches of 128 with the "
                  "learning rate cut 10x whenever training accuracy stopped improving; augmentation (translation and "
                  "horizontal flips) only in the 8.81 % row.")


@dataclass(frozen=True)
class PaperRow:
    """One reported CIFAR-10 test error and the axes of the model it belongs to.

    Attributes:
        source: where in the paper.
        setting: the paper's wording.
        error_pct: test error in percent.
        head: "gap" or "fc".
        dropout: whether the trunk had dropout (between the mlpconv blocks).
        head_dropout: whether the FC head had dropout (None for GAP, which has no head layer to drop).
        augment: whether the training data were augmented.
        assumes: what taking one of our variants for this row assumes, in words ({p}: the variant's trunk dropout,
            {hp}: its FC-head dropout).
    """

    source: str
    setting: str
    error_pct: float
    head: str
    dropout: bool
    head_dropout: bool | None
    augment: bool
    assumes: str


_FC = ("FC head = flatten → Linear → ReLU → Linear(10) in place of the GAP (hidden width: the preset's, 1024 for "
       "nin_cifar; the paper gives none); trunk dropout {p} (the paper's NiN: 0.5)")
# The paper's Table 5 replaces GAP by a fully connected layer "with the rest of the network unchanged" (the trunk
# keeps its dropout) and compares that head with and without dropout in it; section 4.2 removes all dropout.
PAPER = [
    PaperRow("Sec. 4.6, Table 5", "mlpconv + fully connected", 11.59, "fc", True, False, False,
             _FC + ", none in the head"),
    PaperRow("Sec. 4.6, Table 5", "mlpconv + fully connected + dropout", 10.88, "fc", True, True, False,
             _FC + ", dropout {hp} in the head (after its hidden layer)"),
    PaperRow("Sec. 4.6, Table 5; Sec. 4.2", "mlpconv + global average pooling (NIN with dropout)", 10.41, "gap",
             True, None, False, "the paper's NiN: dropout {p} (the paper's 0.5) after the first two blocks, GAP over the "
             "class maps"),
    PaperRow("Sec. 4.2 / Fig. 4", "NIN without dropout", 14.51, "gap", False, None, False,
             "the paper's NiN with no dropout anywhere"),
    PaperRow("Table 1", "NIN + dropout + data augmentation", 8.81, "gap", True, None, True,
             "the paper's NiN with dropout {p} (the paper's 0.5), trained on augmented data"),
]
PAPER_REFERENCE_PCT = 10.41  # the paper's NiN (GAP + dropout): every row's paper Δ is taken against it


def head_dropout_of(ours: pd.DataFrame) -> pd.Series:
    """Each variant's FC-head dropout p: its `head_dropout`, or for a summary without that column (written before
    it existed, when `dropout` switched the trunk's and the head's dropout together) its `dropout` for an FC
    head and 0 for GAP."""
    derived = ours["dropout"].astype(float).where(ours["head"] == "fc", 0.0)
    if "head_dropout" not in ours:
        return derived
    return pd.to_numeric(ours["head_dropout"], errors="coerce").fillna(derived)


def matches(ours: pd.DataFrame, row: PaperRow) -> tuple[pd.DataFrame, str]:
    """Our variants that stand for a paper row, and what taking them for it assumes.

    A variant matches when its head, trunk dropout (on or off) and, for an FC head, head dropout are the row's.
    When no variant does, an FC row takes the FC variants with its head dropout but the other trunk setting (a
    folder made before `head_dropout` existed holds FC without dropout anywhere), saying so.

    Returns:
        (matching rows of `ours`, the assumption text for the table).
    """
    same_head = ours[ours["head"] == row.head]
    trunk_on = same_head["dropout"].astype(float) > 0
    head_ok = (head_dropout_of(same_head) > 0) == row.head_dropout if row.head == "fc" else True
    exact = same_head[(trunk_on == row.dropout) & head_ok]
    if len(exact) or row.head != "fc":
        return exact, row.assumes
    other = same_head[(trunk_on != row.dropout) & head_ok]
    trunk = "with" if not row.dropout else "without"
    return other, (f"only an FC variant {trunk} trunk dropout ran (the paper's row {'has' if row.dropout else 'lacks'}"
                   " it): its difference mixes the head's effect with the trunk dropout's")


def paper_variants(summary: pd.DataFrame) -> pd.DataFrame:
    """Our trained CIFAR-10 variants of the paper's layer structure: nin_cifar with two 1x1 convs (any width or
    BatchNorm: `is_paper_form` says whether they are the paper's model itself)."""
    s = summary
    keep = (s["dataset"] == "cifar10") & (s["preset"] == "nin_cifar") & (s["n_1x1"] == 2) \
        & s["test_acc"].notna()
    return s[keep]


def is_paper_form(ours: pd.DataFrame) -> bool:
    """Whether every compared variant is the paper's model: full width, no BatchNorm."""
    width = ours["width"].astype(float) == 1.0 if "width" in ours else True
    plain = ~ours["batchnorm"].fillna(False).astype(bool) if "batchnorm" in ours else True
    return bool((width & plain).all())


def our_protocol(config: dict[str, Any], manifest: dict[str, Any], augment: str | None) -> str:
    """One sentence stating our training protocol and data source.

    Args:
        config: resolved config.
        manifest: run manifest.
        augment: the resolved CIFAR-10 augmentation (`protocol.augmentation`), None if unknown.

    Returns:
        e.g. "Ours: 10 epochs, batch 128, augmentation off, training subset 5000; data CIFAR-10 (...) sha256 ab12…".
    """
    tr = config.get("train") or {}
    parts = [f"{tr.get('epochs', '?')} epochs", f"batch {tr.get('batch_size', '?')}",
             f"augmentation {augment_words(augment) if augment else '?'}"]
    parts += cut_words(config)
    src = ((manifest.get("data") or {}).get("cifar10")) or {}
    data = f"; data: {src.get('source', 'cifar10')}" + (f", sha256 {src['sha256'][:12]}…" if src.get("sha256")
                                                        else "")
    return f"Ours ({config.get('protocol', '?')} protocol): " + ", ".join(parts) + data + "."


def paper_table(summary: pd.DataFrame, augment: str | None) -> tuple[list[str], list[list[str]]] | None:
    """Rows of the paper comparison for the paper settings our variants cover.

    Args:
        summary: one row per variant (`test_acc`, `test_acc_std`, `n_seeds` and the axes).
        augment: our resolved CIFAR-10 augmentation ("none" | "flip" | "crop" | "crop_flip"; None if unknown).

    Returns:
        (header, rows) of strings, or None when no trained variant matches a paper setting.
    """
    ours = paper_variants(summary)
    if ours.empty:
        return None
    on = is_on(augment)
    ours_aug = "yes" if on else "no"
    if on and augment not in ("crop_flip", "on"):  # the paper's is translation + flips: name a partial match
        ours_aug = f"yes ({augment_words(augment)})"
    header = ["Paper setting", "Source", "Paper error", "Our variant", "Our error (mean ± std)", "n",
              "Augmentation (paper / ours)", "Paper Δ vs GAP + dropout", "Our Δ vs GAP + dropout",
              "What the match assumes"]
    ref = ours[(ours["head"] == "gap") & (ours["dropout"].astype(float) > 0)]
    ref_err = 1 - float(ref["test_acc"].iloc[0]) if len(ref) else None
    rows = []
    for pr in PAPER:
        if pr.augment and not on:
            continue  # compare an augmented result only to an augmented run
        match, assumes = matches(ours, pr)
        for _, r in match.iterrows():
            err = fmt.acc_pm(1 - r["test_acc"], r["test_acc_std"])
            paper_delta = f"{pr.error_pct - PAPER_REFERENCE_PCT:+.2f} pp" if not pr.augment else fmt.NA
            our_delta = (f"{100 * ((1 - r['test_acc']) - ref_err):+.2f} pp" if ref_err is not None
                         and not pr.augment else fmt.NA)
            rows.append([pr.setting, pr.source, f"{pr.error_pct:.2f} %", str(r["variant"]), err,
                         str(int(r["n_seeds"])), f"{'yes' if pr.augment else 'no'} / {ours_aug}", paper_delta,
                         our_delta, assumes.format(p=f"{float(r['dropout']):g}",
                                                   hp=f"{float(head_dropout_of(match).loc[r.name]):g}")])
    return (header, rows) if rows else None
