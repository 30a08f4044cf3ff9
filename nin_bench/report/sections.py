"""Report text generated from the data: what was run, the answer, notes on tables, failures."""
from __future__ import annotations

import math
from typing import Any

import pandas as pd

from nin_bench.report import answer, fmt, protocol
from nin_bench.report.load import Run
from nin_bench.report.ratios import ratio_text, stored_ratio
from nin_bench.report.stats import WILSON

SPEED_NOTE = ("Speed vs baseline: the baseline's time ÷ the variant's at the same setting (> 1: faster), the "
              "geometric mean over the timing rounds that measured both back to back, with a 95 % t-interval on the "
              "log per-round ratios; \"not resolved\" when it includes 1; \"no rounds\" for rows timed before "
              "rounds existed (a bare ratio of medians, no interval). ")
VERSION_KEYS = ["nin_bench_version", "python_version", "torch_version", "torchvision_version", "fvcore_version",
                "pandas_version"]


SOURCE_TEXT = {"gemm_blas": "large GEMM, BLAS", "gemm_onednn": "large GEMM, oneDNN", "conv_suite": "the suite's own "
               "fastest convolution", "isa": "ISA peak: cores × clock × FMA width", "row": "lifted to a timing row",
               "given": "handed in"}


def _row_ceilings(timing: pd.DataFrame) -> dict[str, Any]:
    """The ceilings as the timing rows recorded them, for a manifest without them (a run killed before its end,
    made before the manifest was written as soon as the ceilings were measured): per dtype the highest
    `peak_tflops` and its `peak_source`."""
    if timing.empty or "peak_tflops" not in timing or timing["peak_tflops"].isna().all():
        return {}
    best = timing.dropna(subset=["peak_tflops"]).sort_values("peak_tflops").groupby("dtype").tail(1)
    sources = dict(zip(best["dtype"], best["peak_source"])) if "peak_source" in best else {}
    return {"peak_tflops": dict(zip(best["dtype"], best["peak_tflops"])),
            "ceilings": {"peak_source": {k: v for k, v in sources.items() if isinstance(v, str)}}}


def _peaks(manifest: dict[str, Any], timing: pd.DataFrame) -> str:
    """"fp32 0.21 TFLOP/s (large GEMM, oneDNN; candidates ...)" from the manifest: the MFU ceiling per dtype with
    the candidate that set it (folders made before the honest ceiling: the measured matmul peak alone; a
    manifest without them: the timing rows' own, `_row_ceilings`)."""
    if not manifest.get("peak_tflops"):
        manifest = {**manifest, **_row_ceilings(timing)}
    peaks = manifest.get("peak_tflops") or {}
    ceil = manifest.get("ceilings") or {}
    out = []
    for k, v in peaks.items():
        if fmt.missing(v):
            continue
        text = f"{k} {float(v):.3g} TFLOP/s"
        source = (ceil.get("peak_source") or {}).get(k)
        cands = {s: f for s, f in ((ceil.get("candidates_tflops") or {}).get(k) or {}).items() if f is not None}
        if source:
            others = ", ".join(f"{SOURCE_TEXT.get(s, s)} {f:.3g}" for s, f in cands.items() if s != source)
            text += f" ({SOURCE_TEXT.get(source, source)}" + (f"; other candidates: {others}" if others else "") + ")"
        sheet = (ceil.get("datasheet_tflops") or {}).get(k)
        text += f"; datasheet {sheet:.4g} TFLOP/s" if sheet else ""
        out.append(text)
    return ", ".join(out) or fmt.NA


def _bandwidth(layers: pd.DataFrame) -> str:
    """" **Memory bandwidth** (measured copy): 46 GB/s." from the layer-timing rows, or "" without them."""
    if layers.empty or "mem_gb_per_s" not in layers or layers["mem_gb_per_s"].isna().all():
        return ""
    return f" **Memory bandwidth** (measured large copy, the roofline's slope): {layers['mem_gb_per_s'].max():.3g} GB/s."


def run_protocol(run: Run) -> str:
    """The run's protocol name from the config, the manifest or the records ("" if none says)."""
    c, m = run.config, run.manifest
    names = run.summary["protocol"].dropna().unique() if "protocol" in run.summary else []
    return str(c.get("protocol") or m.get("protocol") or ", ".join(map(str, names)))


def protocol_line(run: Run) -> str:
    """The "**Protocol:** ..." bullet: stages, model settings off the paper's form, training settings.

    Args:
        run: the loaded results folder.

    Returns:
        Markdown text.
    """
    c, tr = run.config, run.config.get("train") or {}
    stages = c.get("stages") or sorted(s for s, df in run.stages.items() if not df.empty)
    datasets = list(dict.fromkeys(map(str, run.summary["dataset"]))) if "dataset" in run.summary else []
    aug = protocol.augment_text(protocol.augmentation(run.stage("train"), c, datasets))
    model = protocol.model_settings(c)
    epochs = tr.get("epochs", "?")
    lr = "lr per variant (the grid's `train.lr`)" if "train.lr" in (c.get("grid") or {}) else f"lr {tr.get('lr', '?')}"
    train = [f"training {epochs} epoch{'' if epochs == 1 else 's'}", f"batch {tr.get('batch_size', '?')}",
             f"{lr} ({tr.get('schedule', '?')})", aug, *protocol.cut_words(c)]
    parts = [f"**Protocol:** {run_protocol(run) or '?'}", f"stages {', '.join(map(str, stages))}",
             *([f"model {model}"] if model else []), ", ".join(train)]
    return "; ".join(parts) + "."


def _device(m: dict[str, Any], c: dict[str, Any]) -> str:
    """"cpu (Intel Xeon ...); 2 threads", naming the CPU model once when it is also the device name."""
    name, cpu = m.get("device_name", "?"), m.get("cpu_model", "?")
    text = f"{m.get('device', c.get('device', '?'))} ({name})"
    return text + ("" if cpu == name else f"; CPU {cpu}") + f"; {m.get('threads', '?')} threads"


def machines_line(run: Run) -> str | None:
    """Which machines measured a folder continued across machines of one kind (sessions on different CPU
    models): the training runs per `device_name`, and the one machine its timing rows come from; None when one
    machine measured everything."""
    train, timing = run.stage("train"), run.stage("timing")
    names = {str(n) for df in (train, timing) if "device_name" in df for n in df["device_name"].dropna()}
    if not names or names == {run.manifest.get("device_name")}:
        return None
    parts = []
    if "device_name" in train:
        counts = train["device_name"].astype(str).value_counts(sort=False)
        parts.append("training runs on " + ", ".join(f"{n} ({c})" for n, c in counts.items()))
    if "device_name" in timing:
        parts.append("timing on " + ", ".join(dict.fromkeys(timing["device_name"].astype(str))))
    last = run.manifest.get("device_name", "?")
    return ("**Machines:** this folder was measured over several runs on more than one machine of its kind: "
            + "; ".join(parts) + f"; its last run ran on {last}. Accuracies pool over them; speeds are compared "
            "only within one machine (a run continuing on another CPU model re-times every variant), and each "
            "training run's epoch times are its own machine's.")


def what_was_run(run: Run) -> list[str]:
    """Bullet items describing the run: protocol, device, MFU reference, versions, data, date, seeds, grid.

    Args:
        run: the loaded results folder.

    Returns:
        Markdown bullet texts, the protocol line first.
    """
    c, m = run.config, run.manifest
    tm = c.get("timing") or {}
    items = [protocol_line(run)]
    if m.get("cuda_fallback"):
        items.append(f"**Warning: no GPU was used.** {m['cuda_fallback']}; `device: auto` therefore ran the CPU "
                     "protocol on this machine.")
    timing = run.stage("timing")
    honest = m.get("ceilings") or "peak_source" in timing
    ceiling = ("the best of large GEMMs, the suite's own convolutions and the ISA peak; no row exceeds it"
               if honest else "measured large matmul")
    items.append(f"**Device:** {_device(m, c)}. **MFU ceiling** ({ceiling}): {_peaks(m, timing)}."
                 + _bandwidth(run.stage("layer_timing")))
    machines = machines_line(run)
    if machines:
        items.append(machines)
    if m.get("gpu_name"):
        items.append(_gpu_facts(m))
    if tm:
        items.append(_timing_line(tm))
    repro = _reproducibility(run.stage("train"))
    if repro:
        items.append(repro)
    vers = ", ".join(f"{k.removesuffix('_version')} {m[k]}" for k in VERSION_KEYS if m.get(k))
    dirty = " (uncommitted changes)" if m.get("git_dirty") else ""
    items.append(f"**Versions:** {vers or fmt.NA}; git commit `{m.get('git_commit', '?')}`{dirty}.")
    for ds, src in (m.get("data") or {}).items():
        items.append(f"**Data {ds}:** {src.get('source', '?')}, sha256 `{src.get('sha256', '?')}`.")
    items.append(f"**Date (UTC):** {m.get('date_utc', '?')}. **Seeds:** {_seeds(c, m)}.")
    reused = _reused(run.stage("train"))
    if reused:
        items.append(reused)
    if m.get("command"):
        items.append(f"**Command** (its last invocation on this folder): `{m['command']}`.")
    grid = "; ".join(f"`{k}` ∈ {v}" for k, v in (c.get("grid") or {}).items())
    planned = math.prod(len(v) for v in (c.get("grid") or {}).values() if isinstance(v, list)) \
        * max(1, len(c.get("variants") or []))
    with_records = "" if planned == len(run.variants) else f" ({len(run.variants)} with records so far)"
    items.append(f"**Grid:** {grid or fmt.NA}; {planned} variants{with_records}.")
    return items


def _seeds(c: dict[str, Any], m: dict[str, Any]) -> str:
    """The seeds: the list, or for `seeds: auto` its settings, how many it ran and why it stopped."""
    seeds = c.get("seeds", "?")
    if not (isinstance(seeds, dict) and "auto" in seeds):
        return str(seeds)
    a, done = seeds["auto"], m.get("seeds_auto") or {}
    text = (f"auto, {a.get('min')} to {a.get('max')} per variant, added one at a time while a declared comparison "
            f"({a.get('target')}) was unresolved (95 % CI excluding 0, or TOST equivalence)")
    if not done:
        return text
    text += f"; ran {done.get('seeds')}, stopped: {done.get('stopped')}"
    if done.get("unresolved"):
        text += f" (unresolved: {'; '.join(done['unresolved'])})"
    return text + ". The CIs below are not adjusted for this stopping rule"


def _reused(train: pd.DataFrame) -> str:
    """A line naming the training units copied from other folders (`reused_from`), or ""."""
    if train.empty or "reused_from" not in train:
        return ""
    copied = train[train["reused_from"].notna()]
    if copied.empty:
        return ""
    where = ", ".join(f"`{f}` ({n})" for f, n in copied["reused_from"].value_counts(sort=False).items())
    return (f"**Reused:** {len(copied)} of {len(train)} training runs were trained identically (same model, data, "
            f"protocol, device, threads and seed) in another folder and copied from it: {where}.")


def _gpu_facts(m: dict[str, Any]) -> str:
    """The GPU, driver, CUDA/cuDNN versions and the precision and autotuning settings of a CUDA run."""
    return (f"**GPU:** {m['gpu_name']} ({m.get('gpu_memory_gib', '?')} GiB, compute capability "
            f"{m.get('gpu_capability', '?')}); driver {m.get('driver_version') or '?'}, CUDA "
            f"{m.get('cuda_runtime', '?')}, cuDNN {m.get('cudnn_version', '?')}; fp32 convolutions in "
            f"{m.get('fp32_conv_precision', '?')}, fp32 matmuls in {m.get('fp32_matmul_precision', '?')} (the fp32 "
            f"MFU peak is measured at the convolutions' precision); cudnn.benchmark "
            f"{'on' if m.get('cudnn_benchmark') else 'off'}.")


def _timing_line(tm: dict[str, Any]) -> str:
    """The "**Timing:** ..." bullet: the sweep's settings, and where compiled rows ran."""
    keys = ["batch_sizes", "reference_batch_size", "dtypes", "channels_last", "compile", "warmup", "repeats",
            "rounds", "round_seed"]
    text = "**Timing:** " + ", ".join(f"{k} {tm[k]}" for k in keys if k in tm)
    text += (" (the variants timed side by side in interleaved rounds of `repeats` iterations each; a row is the "
             "median over rounds of each round's median)." if "rounds" in tm
             else " (median per-iteration time reported).")
    compile_ = tm.get("compile") or []
    if True in compile_:
        sizes = tm.get("compile_batch_sizes") or ([tm.get("reference_batch_size")] if False in compile_
                                                  else tm.get("batch_sizes") or [])
        text += (f" Compiled rows (torch.compile, inductor, static shapes, a fresh dynamo state per row, no eager "
                 f"fallback) run at batch {', '.join(map(str, sizes))} only; `compile_s` is each row's first call.")
    return text


def _reproducibility(train: pd.DataFrame) -> str | None:
    """Whether the training runs are bit-reproducible on their device, from the records (None: not recorded)."""
    if train.empty or "bit_reproducible" not in train or train["bit_reproducible"].isna().all():
        return None
    flags = train["bit_reproducible"].dropna().astype(bool)
    if flags.all():
        return ("**Reproducibility:** every training run is bit-reproducible on its device: re-running a (variant, "
                "seed) with the same thread count on the same kind of machine gives the same numbers, resumed or "
                "not.")
    return (f"**Reproducibility:** {int((~flags).sum())} of {len(flags)} training runs are not bit-reproducible: "
            "on CUDA, cuDNN's autotuned backward algorithms and the GAP's adaptive-pool backward accumulate with "
            "atomic adds, so a re-run differs in the last bits and, after many steps, in the test accuracy by "
            "about as much as a seed does (`train.deterministic: true` makes CUDA runs reproducible, slower).")


def _ratio(a: Any, b: Any) -> str:
    """"1.23×" (a / b), or "–": for counts (params, MACs), exact numbers with no interval to give."""
    return fmt.NA if fmt.missing(a) or fmt.missing(b) or float(b) == 0 else f"{float(a) / float(b):.2f}×"


def _cost(best: pd.Series, base: pd.Series) -> str:
    """Cost sentence: params, MACs and train throughput of `best`, relative to `base`."""
    s = (f"It has {fmt.params(best['params'])} params ({_ratio(best['params'], base['params'])} the baseline's), "
         f"{fmt.macs(best['macs'])} MACs per image ({_ratio(best['macs'], base['macs'])})")
    if not fmt.missing(best["train_img_per_s"]):
        speed = stored_ratio(best, "train_speedup")
        s += f" and trains at {fmt.rate(best['train_img_per_s'])} img/s"
        s += f" ({ratio_text(speed)} the baseline's train-step speed)" if speed is not None else ""
    return s + "."


def answer_for(ds: str, t: pd.DataFrame, comparisons: pd.DataFrame, margin: float) -> str:
    """The answer sentence(s) for one data set's full-precision table rows.

    Args:
        ds: data set name.
        t: its rows of `tables.results_table`.
        comparisons: `comparisons.compare_run` of the run.
        margin: equivalence margin (fraction).

    Returns:
        `answer.verdict`'s text (a best variant only when the seeds resolve it from every other, else the group
        that cannot be told apart), and the cost of a resolved best variant against the baseline.
    """
    text, best = answer.verdict(ds, t, comparisons, margin)
    base = t[t["is_baseline"]]
    if best is None or base.empty or best == base.iloc[0]["variant"]:
        return text
    return text + " " + _cost(t[t["variant"] == best].iloc[0], base.iloc[0])


def size_answer(t: pd.DataFrame) -> str:
    """Answer for a run without training: the size (and speed) extremes.

    Args:
        t: `tables.results_table` rows.

    Returns:
        A sentence saying training has not run, with the smallest and largest variants.
    """
    text = "Training has not run for this results folder, so there is no accuracy answer yet."
    s = t[t["params"].notna()]
    if not s.empty:
        lo, hi = s.loc[s["params"].astype(float).idxmin()], s.loc[s["params"].astype(float).idxmax()]
        text += (f" Sizes range from {lo['variant']} ({fmt.params(lo['params'])} params, {fmt.macs(lo['macs'])} "
                 f"MACs) to {hi['variant']} ({fmt.params(hi['params'])}, {fmt.macs(hi['macs'])}).")
    f = t[t["train_img_per_s"].notna()]
    if not f.empty:
        top = f.loc[f["train_img_per_s"].astype(float).idxmax()]
        text += f" The fastest train step is {top['variant']} at {fmt.rate(top['train_img_per_s'])} img/s."
    return text


def table_note(t: pd.DataFrame, ref_bs: int | None, dtype: Any) -> str:
    """The explanation line under a data set's table (what the columns mean, single-seed caveat).

    Args:
        t: the data set's rows of `tables.results_table`.
        ref_bs: reference batch size.
        dtype: timing dtype reported.

    Returns:
        Text.
    """
    note = ("Params and MACs per image (fvcore, conv + linear multiply-adds); FLOPs fwd from "
            "torch.utils.flop_counter. ")
    if t[["fwd_img_per_s", "train_img_per_s"]].notna().any().any():
        note += (f"Throughput at batch {ref_bs} in {dtype} (another batch is named where that one failed); MFU = "
                 "achieved FLOP/s ÷ the run's ceiling (see What was run). " + SPEED_NOTE)
    if t["test_acc_mean"].notna().any():
        note += ("Test accuracy: mean ± std (ddof 1) over seeds; 95 % CI = mean ± t(0.975, n−1)·std/√n; "
                 "Δ = paired difference to the baseline over the seeds both have, with its t-CI. ")
        note += _single_seed_note(t)
    else:
        note += "**Training has not run** for this results folder: accuracy columns are omitted. "
    return note.strip()


def _single_seed_note(t: pd.DataFrame) -> str:
    """What the CI columns mean for rows with one seed: test-set intervals where the test-set size is stored."""
    one = t[t["n"] == 1]
    if one.empty:
        return ""
    if not (one["ci_method"] == WILSON).any():
        return "Rows with n = 1 have a single seed: no spread, so their CI is n/a. "
    sizes = ", ".join(f"{int(x):,}" for x in dict.fromkeys(one["test_size"].dropna()))
    text = (f"Rows with n = 1 have a single seed, so no seed-to-seed interval: their CIs, marked (test set), cover "
            f"test-set sampling only ({sizes} test images), not seed-to-seed variation. The accuracy CI is a Wilson "
            "score interval; the Δ CI a normal interval for the difference of two independent proportions "
            "(unpaired, so conservative: both variants are scored on the same images, which a paired interval "
            "would use). ")
    if (one["ci_method"] != WILSON).any():
        text += "Rows without a stored test-set size have CI n/a. "
    return text


def head_share(profile: pd.DataFrame, summary: pd.DataFrame) -> str:
    """The share of parameters in the head, per head type: "Head share of parameters: gap 0.0 %, fc 93.1 %."

    Args:
        profile: "profile" records (`params`, `params_head`).
        summary: one row per variant (`head`).

    Returns:
        The sentence, or "" without per-group columns.
    """
    if profile.empty or "params_head" not in profile:
        return ""
    p = profile[profile["status"] == "ok"].drop_duplicates("variant")
    share = (p["params_head"].astype(float) / p["params"].astype(float)).groupby(p["head"]).agg(["min", "max"])
    parts = [f"{h} {fmt.pct(r['min'], 1)}" if r["max"] - r["min"] < 5e-4 else
             f"{h} {fmt.pct(r['min'], 1)}–{fmt.pct(r['max'], 1)}" for h, r in share.iterrows()]
    return "Head share of parameters: " + ", ".join(parts) + "."


def failures(summary: pd.DataFrame) -> list[str]:
    """Bullet items for variants with any failed or diverged record.

    Args:
        summary: one row per variant (`status` is "ok" or the failure text).

    Returns:
        "`variant`: failure text" per failing variant.
    """
    bad = summary[summary["status"] != "ok"]
    return [f"`{r['variant']}`: {r['status']}" for _, r in bad.iterrows()]
