"""The train stage: SGD on a whole data set held as uint8 on the device, resumable, paired across variants.

Design (issue 3): the data set lives on the device as uint8; each epoch a CPU generator seeded from (seed, epoch)
draws the order and the augmentation, so every variant trained with one seed sees the same batches and crops
(differences between variants are paired), and a resumed run draws exactly what the uninterrupted run drew. Batches
are gathered by index, augmented, converted to float and normalised on the device. The hot loop never waits for the
device: loss and correct counts accumulate in device tensors and are read once per epoch.

Reproducibility: on the CPU (same machine, same thread count) a run, resumed or not, is bit-identical to the
uninterrupted run. On CUDA it is not by default: cuDNN's autotuned backward algorithms and the GAP's
adaptive-pool backward accumulate with atomic adds, so last bits differ between runs. `train.deterministic: true`
asks for deterministic algorithms (see `device.configure_cuda`, `models.deterministic_gap`) at a speed cost the
GPU self-check measures; every final record says whether its run is `bit_reproducible`.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from nin_bench.data import augment as aug
from nin_bench.data.datasets import Dataset
from nin_bench.models.nin import deterministic_gap
from nin_bench.runtime.compiled import (
    compile_fresh,
    compile_stats,
    no_eager_fallback,
    warm_up,
)
from nin_bench.runtime.device import configure_cuda
from nin_bench.runtime.train_step import (
    amp_dtype,
    grad_scaler,
    resolve_dtype,
    train_step,
)
from nin_bench.store.crash_points import crash_point
from nin_bench.train.checkpoint import load_checkpoint, save_checkpoint
from nin_bench.train.holdout import (
    Split,
    confidence_maps,
    evaluate,
    split_data,
    train_eval_sample,
)
from nin_bench.train.schedule import build_scheduler

ETA_STEPS = 5  # steps timed for the ETA printed at the start of a run


@dataclass
class TrainResult:
    """What one training run produced.

    Attributes:
        epochs: one flat dict per epoch (epoch, lr, train_loss, train_acc, val_loss, val_acc, train_eval_loss,
            train_eval_acc, epoch_time_s, img_per_s).
        final: the run's summary (seed, epochs, batch_size, test_acc, test_loss, best_val_acc, train_time_s,
            loop_img_per_s, time_to_acc_<pct>_s, diverged_epoch, status, train_size, val_size, test_size,
            train_eval_size, augment).
        maps: GAP confidence maps for the report (arrays maps, images, labels, preds, classes) or None.
        preds: the test set's predicted classes and labels (uint8 arrays `pred`, `label` in test-set order; uint16
            beyond 256 classes), or None when the run diverged.
    """

    epochs: list[dict]
    final: dict
    maps: dict | None = None
    preds: dict | None = None


@dataclass
class _State:
    """Everything that changes from epoch to epoch and must survive a restart (checkpointed)."""

    epoch: int = 0  # epochs completed
    history: list[dict] = field(default_factory=list)
    best_val_acc: float | None = None
    elapsed_s: float = 0.0  # training wall time so far (evaluation excluded)
    images: int = 0  # training images stepped so far
    reached_s: dict[str, float | None] = field(default_factory=dict)  # time_to_acc_<pct>_s -> seconds
    diverged_epoch: int | None = None


def epoch_generators(seed: int, epoch: int) -> tuple[torch.Generator, torch.Generator]:
    """Dedicated CPU generators for one epoch's data order and augmentation draws.

    Seeding from (seed, epoch) rather than carrying generator state makes a resumed epoch draw exactly what the
    uninterrupted run drew, and keeps the draws independent of the model (paired variants).

    Args:
        seed: the run's seed.
        epoch: 1-based epoch.

    Returns:
        (order generator, augmentation generator).
    """
    base = (seed * 1_000_003 + epoch) * 2
    return torch.Generator().manual_seed(base), torch.Generator().manual_seed(base + 1)


def _batches(n: int, batch_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each batch; the last incomplete batch is dropped (one shape: no BN on a batch of 1,
    no recompiles), the epoch's random order changes which images it leaves out."""
    if n <= batch_size:
        return [(0, n)]
    return [(i, i + batch_size) for i in range(0, n - batch_size + 1, batch_size)]


@dataclass
class _Loop:
    """The fixed parts of one run's training loop."""

    net: nn.Module  # the model, or its torch.compile wrapper
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    split: Split
    settings: Any
    augment: str
    amp: torch.dtype | None
    seed: int
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    # the fixed sample of training images evaluated beside the validation set (`holdout.train_eval_sample`)
    train_eval: tuple[torch.Tensor, torch.Tensor] | None = None
    bar: Any = None  # tqdm, set once the start epoch is known
    logits: list = field(default_factory=list)  # filled by a forward hook: train accuracy without a 2nd forward

    @property
    def steps_per_epoch(self) -> int:
        return len(_batches(self.split.train_x.shape[0], self.settings.batch_size))


def _batch(split: Split, idx: torch.Tensor, draws: aug.Draws) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: gathered by index, augmented, normalised (the network input and its labels)."""
    return split.prep(aug.apply(split.train_x[idx], draws)), split.train_y[idx]


def _train_epoch(loop: _Loop, epoch: int, eta: Callable[[float], None] | None) -> tuple[float, float, int, float]:
    """Run one epoch of SGD steps.

    Args:
        loop: the run's loop parts.
        epoch: 1-based epoch (seeds the order and the augmentation).
        eta: called once as eta(seconds_per_step) after a few steps, or None.

    Returns:
        (mean train loss, train accuracy, images stepped, lr of the epoch's last step).
    """
    split, device = loop.split, loop.split.train_x.device
    order_gen, aug_gen = epoch_generators(loop.seed, epoch)
    n = split.train_x.shape[0]
    order = torch.randperm(n, generator=order_gen).to(device)  # one transfer per epoch, not per step
    draws = aug.draw(n, loop.augment, aug_gen).to(device)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    images, t_first, lr = 0, 0.0, 0.0
    for step, (start, stop) in enumerate(_batches(n, loop.settings.batch_size)):
        x, y = _batch(split, order[start:stop], draws.slice(start, stop))
        loss = train_step(loop.net, loop.optimizer, x, y, autocast_dtype=loop.amp,
                          label_smoothing=loop.settings.label_smoothing, scaler=loop.scaler)
        lr = loop.optimizer.param_groups[0]["lr"]  # the lr this step used (a Python float: no sync)
        loop.scheduler.step()
        crash_point("train:step")  # test-only fault injection (no-op unless NIN_BENCH_CRASH_AT is set)
        loss_sum += loss * (stop - start)
        correct += (loop.logits.pop().argmax(1) == y).sum()
        images += stop - start
        loop.bar.update(1)
        if eta is not None and step in (1, 1 + ETA_STEPS):  # step 0 warms up; time the next ETA_STEPS
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # twice per run, for the ETA only
            if step == 1:
                t_first = time.perf_counter()
            else:
                eta((time.perf_counter() - t_first) / ETA_STEPS)
    return loss_sum.item() / images, correct.item() / images, images, lr


def _fingerprint(model: nn.Module, settings: Any, seed: int, split: Split, source_sha256: str) -> str:
    """What must match for a checkpoint to belong to this run (settings, seed, model shape, data)."""
    dump = settings.model_dump() if hasattr(settings, "model_dump") else vars(settings)
    return json.dumps({"settings": dump, "seed": seed, "spec": getattr(model, "spec", None),
                       "train_size": int(split.train_x.shape[0]), "input_size": split.input_size,
                       "data": source_sha256}, sort_keys=True, default=str)


def _acc_key(fraction: float) -> str:
    """time_to_acc key for an accuracy fraction: 0.85 -> "time_to_acc_85_s"."""
    return f"time_to_acc_{round(fraction * 100)}_s"


def _record_epoch(state: _State, settings: Any, epoch: int, train: tuple[float, float, int, float],
                  seconds: float, val: tuple[float | None, float | None],
                  train_eval: tuple[float | None, float | None] = (None, None)) -> dict:
    """Update the run's counters with one finished epoch and return its flat record.

    Args:
        state: updated in place.
        settings: TrainSettings (time_to_acc).
        epoch: 1-based epoch.
        train: (_train_epoch's loss, accuracy, images, lr).
        seconds: the epoch's training wall time (evaluation excluded).
        val: (val loss, val accuracy), Nones when not evaluated this epoch.
        train_eval: (loss, accuracy) in eval mode on the fixed training sample, Nones when not evaluated.

    Returns:
        The epoch record (a non-finite train loss is stored as None, which JSON can hold).
    """
    loss, acc, images, lr = train
    state.epoch, state.elapsed_s, state.images = epoch, state.elapsed_s + seconds, state.images + images
    if val[1] is not None:
        state.best_val_acc = max(val[1], state.best_val_acc or 0.0)
        for fraction in settings.time_to_acc:
            if state.reached_s.get(_acc_key(fraction)) is None and val[1] >= fraction:
                state.reached_s[_acc_key(fraction)] = state.elapsed_s
    row = {"epoch": epoch, "lr": lr, "train_loss": loss if math.isfinite(loss) else None, "train_acc": acc,
           "val_loss": val[0], "val_acc": val[1], "train_eval_loss": train_eval[0], "train_eval_acc": train_eval[1],
           "epoch_time_s": seconds, "img_per_s": images / seconds}
    state.history.append(row)
    return row


def _eta_printer(loop: _Loop, state: _State) -> Callable[[float], None]:
    """A callback that prints the run's ETA from a measured step time (before most of the training runs)."""
    settings = loop.settings
    steps = (settings.epochs - state.epoch) * loop.steps_per_epoch
    evals = math.ceil((settings.epochs - state.epoch) / settings.eval_every)
    per_eval = loop.split.val_x.shape[0] + (loop.train_eval[0].shape[0] if loop.train_eval else 0)
    eval_images = per_eval * evals + loop.split.test_x.shape[0]

    def show(sec_per_step: float) -> None:
        # a forward pass costs about a third of a training step per image
        eval_s = eval_images * sec_per_step / settings.batch_size / 3
        loop.bar.write(f"seed {loop.seed}: ETA ~{(steps * sec_per_step + eval_s) / 60:.1f} min "
                       f"({sec_per_step * 1e3:.0f} ms/step x {steps} steps + ~{eval_s:.0f} s eval)")

    return show


def _run_epochs(loop: _Loop, model: nn.Module, state: _State, checkpoint: Path | None, fingerprint: str,
                on_epoch: Callable[[dict], None] | None, show_eta: bool) -> None:
    """Train from state.epoch + 1 to the last epoch, evaluating, checkpointing and reporting each epoch.

    A non-finite train loss stops the run (state.diverged_epoch set, no checkpoint of the broken weights).
    on_epoch is called after the epoch's checkpoint is on disk.
    """
    settings = loop.settings
    eta = _eta_printer(loop, state) if show_eta else None
    for epoch in range(state.epoch + 1, settings.epochs + 1):
        t0 = time.perf_counter()
        train = _train_epoch(loop, epoch, eta if epoch == state.epoch + 1 else None)
        seconds = time.perf_counter() - t0  # the .item() in _train_epoch has waited for the device
        diverged = not math.isfinite(train[0])
        evaluate_now = not diverged and (epoch % settings.eval_every == 0 or epoch == settings.epochs)
        val = (evaluate(loop.net, loop.split, loop.split.val_x, loop.split.val_y, settings.eval_batch_size,
                        loop.amp) if evaluate_now else (None, None))
        # eval mode draws nothing from the global generator (no dropout): the trajectory stays what it was
        train_eval = (evaluate(loop.net, loop.split, *loop.train_eval, settings.eval_batch_size, loop.amp)
                      if evaluate_now and loop.train_eval else (None, None))
        row = _record_epoch(state, settings, epoch, train, seconds, val, train_eval)
        loop.bar.set_postfix(loss=f"{train[0]:.3f}", acc=f"{train[1]:.3f}",
                             val=f"{val[1]:.3f}" if val[1] is not None else "-")
        if diverged:
            state.diverged_epoch = epoch
        elif checkpoint is not None:
            save_checkpoint(checkpoint, model=model, optimizer=loop.optimizer, scheduler=loop.scheduler,
                            scaler=loop.scaler, state=vars(state), fingerprint=fingerprint)
        if on_epoch is not None:
            on_epoch(row)
        if diverged:
            return


def _make_loop(model: nn.Module, split: Split, settings: Any, dataset_name: str, device: torch.device,
               seed: int) -> _Loop:
    """Put the model on the device and build the optimizer, the per-iteration scheduler and the loop parts."""
    model.to(device).train()
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    # compile_fresh shares the parameters the optimizer steps, and resets dynamo so this run's graphs count alone
    net = compile_fresh(model) if settings.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                                nesterov=settings.nesterov and settings.momentum > 0,
                                weight_decay=settings.weight_decay)
    steps = len(_batches(split.train_x.shape[0], settings.batch_size))
    amp = amp_dtype(resolve_dtype(settings.dtype, device.type))
    sample = train_eval_sample(split, settings.train_eval_size) if settings.train_eval_size else None
    return _Loop(net, optimizer, build_scheduler(optimizer, settings, steps), split, settings,
                 aug.resolve_augment(settings.augment, dataset_name), amp, seed, grad_scaler(device.type, amp),
                 train_eval=sample)


def _needs_warm_up(settings: Any, device: torch.device, force: bool | None) -> bool:
    """Whether an untimed warm-up step runs before the clock: when compiling (the compile), on CUDA with cuDNN
    autotuning on (the autotuning of every convolution shape), or when `force` says so (True / False)."""
    if force is not None:
        return force
    return bool(settings.compile) or (device.type == "cuda" and torch.backends.cudnn.benchmark)


def _warm_up(loop: _Loop, model: nn.Module) -> float:
    """Run one untimed train step's forward and backward and every evaluation shape before the run's clock starts,
    so the compile (torch.compile) and cuDNN's autotuning (`cudnn.benchmark`) are not billed to epoch 1 and
    time-to-accuracy; the RNG states, BatchNorm statistics and gradients are restored after (see warm_up), so the
    run then trains exactly as it would have without it.

    The warm-up batches are made exactly as the run makes its own (same gather, augmentation and normalisation;
    evaluation through `evaluate` itself, under inference mode): dynamo guards on strides and dispatch keys, and
    cuDNN autotunes per shape and layout, so a batch built any other way would leave the run one to do.

    Returns:
        Wall seconds the warm-up took.
    """
    split, settings = loop.split, loop.settings
    n = min(settings.batch_size, split.train_x.shape[0])
    idx = torch.arange(n, device=split.train_x.device)
    draws = aug.draw(n, loop.augment, torch.Generator().manual_seed(0))  # its own generator: no global draws
    train_batch = _batch(split, idx, draws.to(idx.device))

    sets = [(split.val_x, split.val_y), (split.test_x, split.test_y), *([loop.train_eval] if loop.train_eval else [])]

    def evaluate_every_shape() -> None:
        for x, y in sets:
            total, bs = x.shape[0], settings.eval_batch_size
            for k in {min(bs, total), total % bs if total > bs else 0} - {0}:
                evaluate(loop.net, split, x[:k], y[:k], bs, loop.amp)

    return warm_up(loop.net, model, train_batch, evaluate_every_shape, loop.amp)


def _final(loop: _Loop, state: _State, test: tuple[float | None, float | None]) -> dict:
    """The run's summary record (see TrainResult.final)."""
    settings = loop.settings
    return {
        "seed": loop.seed, "epochs": state.epoch, "batch_size": settings.batch_size,
        "test_acc": test[1], "test_loss": test[0], "best_val_acc": state.best_val_acc,
        "train_time_s": state.elapsed_s,
        "loop_img_per_s": state.images / state.elapsed_s if state.elapsed_s > 0 else None,
        **{_acc_key(f): state.reached_s.get(_acc_key(f)) for f in settings.time_to_acc},
        "diverged_epoch": state.diverged_epoch, "status": "diverged" if state.diverged_epoch else "ok",
        "train_size": int(loop.split.train_x.shape[0]), "val_size": int(loop.split.val_x.shape[0]),
        "test_size": int(loop.split.test_x.shape[0]),
        "train_eval_size": int(loop.train_eval[0].shape[0]) if loop.train_eval else 0,
        "augment": loop.augment,
    }


def _run_facts(loop: _Loop, device: torch.device, compile_s: float | None, warm_graphs: int | None) -> dict:
    """How the run ran: compile time apart from the epochs (and graphs compiled after the warm-up, which an epoch
    paid for: 0 when the warm-up did its job), cuDNN autotuning, fp16 loss scaling, reproducibility."""
    settings = loop.settings
    graphs = compile_stats() if settings.compile else {"compiled_graphs": None, "graph_breaks": None}
    late = None if warm_graphs is None else graphs["compiled_graphs"] - warm_graphs
    return {"compile": settings.compile, "compile_s": compile_s, **graphs, "late_graphs": late,
            "cudnn_benchmark": torch.backends.cudnn.benchmark if device.type == "cuda" else None,
            "grad_scaler": loop.scaler is not None, "deterministic": settings.deterministic,
            # the CPU path is deterministic for a fixed thread count; CUDA only in deterministic mode
            "bit_reproducible": device.type == "cpu" or settings.deterministic}


def train_model(model: nn.Module, dataset: Dataset, settings: Any, *, device: str | torch.device, seed: int,
                input_size: int | None = None, checkpoint_path: str | os.PathLike | None = None,
                on_epoch: Callable[[dict], None] | None = None, progress: bool = True,
                warm_up_step: bool | None = None) -> TrainResult:
    """Train `model` on `dataset` with SGD under `settings`, then test it once.

    Args:
        model: a freshly built model (the caller seeds its init: torch.manual_seed(seed) before build_model).
        dataset: the decoded data set (uint8).
        settings: TrainSettings.
        device: "cpu", "cuda", ...
        seed: seeds the data order and augmentation (per epoch, dedicated generators): the same seed gives every
            variant the same batches and draws.
        input_size: network input side; when it differs from the data's, batches are resized on the device.
        checkpoint_path: written atomically after every epoch; if it exists at the start (and matches this run),
            training resumes from it and ends as the uninterrupted run would.
        on_epoch: called with each epoch's record, after that epoch's checkpoint is written.
        progress: show a tqdm bar and print the ETA.
        warm_up_step: run the untimed warm-up step before the clock (`_warm_up`): None when compiling or when
            cuDNN autotuning is on (CUDA), True / False to force it (the tests force it on the CPU to check that
            it leaves the run bit-identical). Its seconds are the final record's `warmup_s` (None: none ran).

    Returns:
        TrainResult with per-epoch records, the final record and (GAP head, not diverged) the confidence maps.
    """
    device = torch.device(device)
    if device.type == "cuda":
        configure_cuda(settings.deterministic)
    if settings.deterministic:
        deterministic_gap(model)
    split = split_data(dataset, settings, device, input_size)
    loop = _make_loop(model, split, settings, dataset.name, device, seed)
    checkpoint = Path(checkpoint_path) if checkpoint_path is not None else None
    fingerprint = _fingerprint(model, settings, seed, split, dataset.source_sha256)
    saved = load_checkpoint(checkpoint, model=model, optimizer=loop.optimizer, scheduler=loop.scheduler,
                            scaler=loop.scaler, fingerprint=fingerprint) if checkpoint else None
    state = _State(**saved) if saved else _State()
    loop.bar = tqdm(total=settings.epochs * loop.steps_per_epoch, initial=state.epoch * loop.steps_per_epoch,
                    desc=f"train seed {seed}", unit="step", disable=not progress, leave=False)
    if state.epoch:
        tqdm.write(f"seed {seed}: resumed from {checkpoint} after epoch {state.epoch} of {settings.epochs}")
    guard = no_eager_fallback() if settings.compile else contextlib.nullcontext()
    with guard:
        # before any clock starts: epoch 1 and time-to-accuracy are billed for neither compile nor autotuning
        warmup_s = _warm_up(loop, model) if _needs_warm_up(settings, device, warm_up_step) else None
        compile_s = warmup_s if settings.compile else None
        warm_graphs = compile_stats()["compiled_graphs"] if settings.compile else None
        # Train accuracy from the step's own logits: a hook on the network, only in train mode.
        hook = loop.net.register_forward_hook(
            lambda m, i, out: loop.logits.append(out.detach()) if m.training else None)
        try:
            _run_epochs(loop, model, state, checkpoint, fingerprint, on_epoch, show_eta=progress)
        finally:
            hook.remove()
            loop.bar.close()
        ok = state.diverged_epoch is None
        predicted: list[torch.Tensor] = []
        test = (evaluate(loop.net, split, split.test_x, split.test_y, settings.eval_batch_size, loop.amp,
                         preds=predicted) if ok else (None, None))
    gap = getattr(model, "spec", {}).get("head") == "gap"
    maps = confidence_maps(model, split, dataset.classes) if ok and gap else None
    final = {**_final(loop, state, test), **_run_facts(loop, device, compile_s, warm_graphs), "warmup_s": warmup_s}
    preds = prediction_arrays(predicted, split.test_y, len(dataset.classes)) if ok else None
    return TrainResult(epochs=list(state.history), final=final, maps=maps, preds=preds)


def prediction_arrays(predicted: list[torch.Tensor], labels: torch.Tensor,
                      num_classes: int) -> dict[str, np.ndarray]:
    """The test set's predicted classes and labels as compact arrays (what `preds_file` stores).

    Args:
        predicted: the test pass's per-batch predicted classes, in test-set order.
        labels: the test labels.
        num_classes: the data set's classes (uint8 holds up to 256, uint16 beyond).

    Returns:
        {"pred": ..., "label": ...}: arrays of one unsigned dtype and the test set's length.
    """
    dtype = np.uint8 if num_classes <= 256 else np.uint16
    return {"pred": torch.cat(predicted).cpu().numpy().astype(dtype),
            "label": labels.cpu().numpy().astype(dtype)}
