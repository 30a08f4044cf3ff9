"""The CUDA paths' logic, tested on the CPU with real torch: compile (dynamo guards, recompile limit, warm-up),
fp16 with its GradScaler, OOM recognition and clean-up, fp32 precision flags, deterministic mode, the manifest's
CUDA keys and the GPU batch's refusal on a CPU.

Real inductor compiles cost 20-40 s each on 2 cores, so the dynamo logic is tested with dynamo's "eager" backend
(the same capture, guards and recompiles, no code generation); the tests marked `compile` pay for inductor.
"""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from nin_bench.measure.ceilings import Ceilings
from nin_bench.measure.timing import time_model
from nin_bench.models.nin import GlobalMeanPool, build_model, deterministic_gap
from nin_bench.run import timing_stage
from nin_bench.run.manifest import build_manifest
from nin_bench.run.timing_stage import run_timing
from nin_bench.run.unit import RunContext
from nin_bench.runtime import compiled, device
from nin_bench.runtime.train_step import grad_scaler, train_step
from nin_bench.store.folder import ResultsDir
from nin_bench.suite.config import TrainSettings, resolve_protocol, validate
from nin_bench.suite.variants import expand_grid

SHAPE = (3, 16, 16)
TINY = dict(batch_size=64, subset=2000, val_size=500, epochs=2, augment="none", schedule="cosine", lr=0.1,
            warmup_epochs=0.0, time_to_acc=[0.5])

FIXED = Ceilings("cpu", {"fp32": 1e11}, 1e10)  # handed in: these tests do not check the measured ceilings


def _tiny(**kw):
    torch.manual_seed(0)
    return build_model("nin_cifar", width=0.125, batchnorm=True, input_size=16, **kw)


@pytest.fixture
def eager_backend(monkeypatch):
    monkeypatch.setattr(compiled, "BACKEND", "eager")


def _train_tiny(ds, dropout: float = 0.0, n_1x1: int = 2, **overrides):
    """The tiny grey-input NiN trained on `ds` with TINY settings plus `overrides` (seeded as the runner seeds)."""
    from nin_bench.train.loop import train_model

    torch.manual_seed(0)
    model = build_model("nin_cifar", n_1x1=n_1x1, width=0.125, batchnorm=True, in_channels=1, dropout=dropout)
    return train_model(model, ds, TrainSettings(**{**TINY, **overrides}), device="cpu", seed=0, progress=False)


def test_compiled_sweep_past_the_recompile_limit_stays_compiled(eager_backend, caplog):
    # 16 compiled settings of one model: twice dynamo's limit of 8 entries per code object (NiN.forward)
    caplog.set_level(logging.WARNING)
    model = _tiny(n_1x1=0)
    rows = [time_model(model, SHAPE, mode=mode, batch_size=bs, device="cpu", dtype=dtype, channels_last=cl,
                       compile=True, warmup=1, repeats=3)
            for mode in ("forward", "train_step") for dtype in ("fp32", "bf16") for cl in (False, True)
            for bs in (2, 4)]
    assert len(rows) == 16 > torch._dynamo.config.recompile_limit
    assert all(r["compiled_graphs"] == 1 and r["graph_breaks"] == 0 and r["compile_s"] > 0 for r in rows)
    assert not [m for m in caplog.messages if "recompile" in m.lower() or "cache_size_limit" in m]


def test_hitting_the_recompile_limit_raises_instead_of_running_eager(eager_backend):
    net = compiled.compile_fresh(_tiny().eval())
    with torch._dynamo.config.patch(recompile_limit=1), compiled.no_eager_fallback(), torch.no_grad():
        net(torch.randn(2, *SHAPE))
        with pytest.raises(Exception, match="(?i)recompile|limit"):
            net(torch.randn(4, *SHAPE))  # a second batch size would need a second entry


def test_a_failed_compiled_setting_is_an_error_row_and_the_sweep_goes_on(eager_backend, monkeypatch, tmp_path):
    cfg = validate({"name": "t", "model": {"width": 0.125}, "grid": {"model.n_1x1": [1]},
                    "timing": {"batch_sizes": [2, 4], "reference_batch_size": 4, "compile": [True, False],
                               "warmup": 1, "repeats": 3, "min_window_ms": 0.0, "layer_timing": False}})
    cfg, protocol, _ = resolve_protocol(cfg, cuda=False)
    variant = expand_grid(cfg)[0]
    real = timing_stage.Contender

    def flaky(model, shape, device, setting, *args):
        if setting.compile:
            raise torch._dynamo.exc.FailOnRecompileLimitHit("Hard failure due to fail_on_recompile_limit_hit")
        return real(model, shape, device, setting, *args)

    monkeypatch.setattr(timing_stage, "Contender", flaky)
    ctx = RunContext(ResultsDir(tmp_path), "cpu", "cpu", protocol, ceilings=FIXED)
    rows = [r for r in run_timing([variant], ctx, {variant.id: {"forward": 1.0}}) if r["stage"] == "timing"]
    compiled_rows = [r for r in rows if r["compile"]]
    # compiled rows run at the reference batch only: 2 modes x 1 batch; eager rows at both batches
    assert [(r["mode"], r["batch_size"]) for r in compiled_rows] == [("forward", 4), ("train_step", 4)]
    assert all(r["status"] == "error" and "FailOnRecompileLimitHit" in r["error"] for r in compiled_rows)
    assert [r["status"] for r in rows if not r["compile"]] == ["ok"] * 4


def test_oom_rows_name_their_kind_and_the_next_setting_runs(monkeypatch, tmp_path):
    cfg, protocol, _ = resolve_protocol(validate({
        "name": "t", "model": {"width": 0.125}, "grid": {"model.n_1x1": [0]}, "timing": {
            "batch_sizes": [2, 4], "reference_batch_size": 4, "modes": ["forward"], "warmup": 1, "repeats": 3,
            "min_window_ms": 0.0, "layer_timing": False}}),
        cuda=False)
    real = timing_stage.Contender

    def oom_at_2(model, shape, device, setting, *args):
        if setting.batch_size == 2:  # as torch.compile delivers it: a kernel's OOM inside a backend error
            try:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
            except torch.cuda.OutOfMemoryError as inner:
                raise RuntimeError("backend compiler failed") from inner
        return real(model, shape, device, setting, *args)

    monkeypatch.setattr(timing_stage, "Contender", oom_at_2)
    variant = expand_grid(cfg)[0]
    ctx = RunContext(ResultsDir(tmp_path), "cpu", "cpu", protocol, ceilings=FIXED)
    rows = [r for r in run_timing([variant], ctx, {variant.id: {}}) if r["stage"] == "timing"]
    assert [(r["batch_size"], r["status"], r.get("error_kind")) for r in rows] == [(2, "error", "oom"),
                                                                                  (4, "ok", None)]


def test_is_oom_sees_wrapped_and_textual_ooms():
    assert device.is_oom(torch.cuda.OutOfMemoryError("x"))
    assert device.is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB"))
    try:
        try:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        except torch.cuda.OutOfMemoryError:
            raise ValueError("inductor failed")  # implicit chaining: __context__
    except ValueError as exc:
        assert device.is_oom(exc)
    assert not device.is_oom(ValueError("shape mismatch"))


def test_fp16_train_step_uses_the_grad_scaler():
    model = _tiny().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = grad_scaler("cpu", torch.float16)
    assert scaler is not None and grad_scaler("cpu", torch.bfloat16) is None and grad_scaler("cpu", None) is None
    x, y = torch.randn(8, *SHAPE), torch.randint(0, 10, (8,))
    w0 = model.features.block1.conv1.weight.detach().clone()
    loss = train_step(model, opt, x, y, autocast_dtype=torch.float16, scaler=scaler)
    assert torch.isfinite(loss) and scaler.get_scale() > 0
    assert not torch.equal(model.features.block1.conv1.weight, w0)


def test_fp16_timing_row_and_training_run_with_the_scaler(fashion):
    row = time_model(_tiny(), SHAPE, mode="train_step", batch_size=4, device="cpu", dtype="fp16", warmup=1,
                     repeats=3)
    assert row["dtype"] == "fp16" and row["img_per_s"] > 0
    # fp16 on the CPU runs ~20x slower than fp32 (~30 ms an image here): 256 images in 16 steps of 16, not
    # TINY's 2,000, still lift the tiny model to 0.415 (measured with torch 2.14.1; 2,000 images gave 0.56)
    result = _train_tiny(fashion, epochs=1, dtype="fp16", subset=256, batch_size=16, lr=0.05)
    assert result.final["grad_scaler"] is True and result.final["status"] == "ok"
    assert result.final["test_acc"] > 0.3  # chance is 0.1


def test_compile_warm_up_leaves_the_run_bit_identical_and_bills_no_epoch(eager_backend, fashion):
    plain, comp = (_train_tiny(fashion, dropout=0.5, n_1x1=0), _train_tiny(fashion, dropout=0.5, n_1x1=0,
                                                                          compile=True))
    # eager backend: the same ops, so any change the warm-up made (RNG draws, BN statistics, grads) would show
    assert [e["train_loss"] for e in comp.epochs] == [e["train_loss"] for e in plain.epochs]
    assert comp.final["test_acc"] == plain.final["test_acc"]
    assert comp.final["compile_s"] > 0 and plain.final["compile_s"] is None
    # train, eval at 500 (validation) and 1000 (test): all compiled before the clock, none during the epochs
    assert comp.final["compiled_graphs"] == 3 and comp.final["late_graphs"] == 0


@pytest.fixture
def scalar_inductor():
    """Real inductor code generation and C++ compiles, without the CPU SIMD variants of the kernels: what these
    tests check (capture, warm-up, graph counts, results) is the same, and a cold cache compiles in about half
    the time (measured on 2 cores: 26 s against 46 s for the training test's 23 kernels). The CUDA path does
    not use inductor's C++ kernels at all."""
    import torch._inductor.config as inductor_config

    with inductor_config.patch({"cpp.vec_isa_ok": False}):
        yield


@pytest.mark.compile
def test_inductor_training_matches_eager_within_a_point(fashion, scalar_inductor):
    # without 1x1 convs: the same capture, warm-up and graph count for about half the C++ code to compile
    # (measured on a cold inductor cache, 2 cores: 95 s for this pair against 169 s with two 1x1 convs); every
    # evaluation in batches of 500 (validation 500, test 1,000, training sample 1,500): one eval graph, not two
    # (22.6 s of compiling against 26.1 s; the warm-up of several eval shapes is the eager-backend test's)
    plain, comp = (_train_tiny(fashion, n_1x1=0, eval_batch_size=500),
                   _train_tiny(fashion, n_1x1=0, compile=True, eval_batch_size=500))
    assert comp.final["late_graphs"] == 0 and comp.final["compiled_graphs"] == 2  # training step, evaluation
    assert comp.final["compile_s"] > 0
    # inductor fuses and reorders reductions, so the 62 steps drift apart a little: measured 0.7124 vs 0.7126 on
    # these 1,000 test images (with two 1x1 convs 0.705 vs 0.695); a point or two is the expected spread of so
    # short a run
    assert abs(comp.final["test_acc"] - plain.final["test_acc"]) <= 0.02


@pytest.mark.compile
def test_inductor_timing_row_is_really_compiled(scalar_inductor):
    row = time_model(_tiny(n_1x1=0), SHAPE, mode="forward", batch_size=4, device="cpu", compile=True, warmup=1,
                     repeats=3)
    assert row["compiled_graphs"] == 1 and row["graph_breaks"] == 0
    # the first call holds the compile (or inductor's on-disk cache load): longer than a compiled iteration
    assert row["compile_s"] > row["ms_median"] / 1e3


def test_deterministic_gap_is_the_same_function_and_trains(fashion):
    model = build_model("nin_cifar", width=0.125, batchnorm=True).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        deterministic_gap(model)
        after = model(x)
    assert isinstance(model.head.gap, GlobalMeanPool)
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)
    try:
        result = _train_tiny(fashion, epochs=1, deterministic=True)
    finally:
        torch.use_deterministic_algorithms(False)
    assert result.final["deterministic"] is True and result.final["bit_reproducible"] is True


def test_fp32_precision_reads_without_mixing_apis():
    assert device.fp32_precision("conv") in ("tf32", "ieee")
    assert device.fp32_precision("matmul") in ("tf32", "ieee")
    before = torch.backends.cuda.matmul.fp32_precision if hasattr(torch.backends.cuda.matmul,
                                                                  "fp32_precision") else None
    with device.matmul_precision_like_convs() as used:
        assert used == device.fp32_precision("conv") == device.fp32_precision("matmul")
    if before is not None:
        assert torch.backends.cuda.matmul.fp32_precision == before
    torch.backends.cuda.matmul.allow_tf32  # noqa: B018  the legacy getter raises once the two APIs were mixed


def test_manifest_carries_cuda_keys_null_on_the_cpu():
    m = build_manifest(device="cpu", device_name="cpu", threads=1, protocol="cpu", cuda_fallback="no driver")
    for key in ("cuda_runtime", "cudnn_version", "driver_version", "gpu_name", "gpu_memory_gib", "cudnn_benchmark",
                "fp32_matmul_precision", "fp32_conv_precision"):
        assert key in m and m[key] is None, key
    assert m["torch_cuda_build"] == torch.version.cuda and m["cuda_fallback"] == "no driver"


def test_manifest_names_the_version_of_a_source_tree_that_is_not_installed(monkeypatch):
    """A lent GPU runs the source tree without installing it: the manifest still names nin_bench's version."""
    import importlib.metadata as md

    from nin_bench.run import manifest

    assert build_manifest(device="cpu", device_name="cpu", threads=1, protocol="cpu")["nin_bench_version"] == "0.1.0"

    def not_installed(dist):
        if dist == "nin_bench":
            raise md.PackageNotFoundError(dist)
        return "1.0"

    monkeypatch.setattr(manifest.md, "version", not_installed)
    assert build_manifest(device="cpu", device_name="cpu", threads=1, protocol="cpu")["nin_bench_version"] == "0.1.0"


def test_cuda_fallback_is_named_on_a_cuda_build_without_a_device():
    reason = device.cuda_fallback_reason()
    if torch.cuda.is_available() or torch.version.cuda is None:
        assert reason is None
    else:
        assert "CUDA" in reason and "sees no CUDA device" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_session_exits_2_with_one_line_without_cuda(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "nin_bench", "gpu-session", "--results", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "needs a CUDA device" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_steady_cpu_heap_on_glibc():
    import platform

    text = device.steady_cpu_heap()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert text is not None and "M_MMAP_MAX=0" in text


def test_compiled_rows_alone_cover_every_batch_beside_eager_only_the_reference():
    from nin_bench.run.timing_stage import timing_settings
    from nin_bench.suite.config import TimingSettings

    both = TimingSettings(batch_sizes=[1, 8, 32], reference_batch_size=8, compile=[False, True], modes=["forward"])
    assert [(s["compile"], s["batch_size"]) for s in timing_settings(both)] == [(False, 1), (False, 8), (False, 32),
                                                                               (True, 8)]
    alone = both.model_copy(update={"compile": [True]})
    assert [s["batch_size"] for s in timing_settings(alone)] == [1, 8, 32]
    chosen = both.model_copy(update={"compile_batch_sizes": [1, 32]})
    assert [s["batch_size"] for s in timing_settings(chosen) if s["compile"]] == [1, 32]


def test_the_self_checks_resume_check_passes_on_the_cpu(fashion, tmp_path):
    from nin_bench.run.selfcheck import check_resume

    try:
        result = check_resume(torch.device("cpu"), fashion, tmp_path, subset=600, val_size=500, width=0.125)
    finally:
        torch.use_deterministic_algorithms(False)
    assert result.passed, result
    assert "test_acc" in result.figure and "deterministic mode" in result.detail
