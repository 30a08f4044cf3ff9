"""Everything a session with a lent GPU should run, as one resumable batch under a time budget.

In order: the CUDA self-check (`gpucheck`), the timing stage of `full.yaml` and `d2l.yaml`, the per-layer timing
of `one_by_one` and `d2l`, then the GPU-protocol training of `one_by_one`, `head` and `dropout`. Every step is a
results folder under `results/gpu-*`; each resumes from what the folder holds (finished units skipped, a training
run from its last epoch checkpoint), so a second call with the same folders continues where the first stopped.
`scripts/gpu_session.sh` wraps this for the device machine (install, run, tar the folders into $OUT).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from nin_bench.errors import ConfigError, UserError

# (results folder under results/, suite file under ablations/, --set overrides); run in this order.
STEPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("gpu-timing-full", "full.yaml", ("stages=[profile,timing]",)),
    ("gpu-timing-d2l", "d2l.yaml", ("stages=[profile,timing]",)),
    ("gpu-layer-timing/one_by_one", "one_by_one.yaml",
     ("stages=[timing]", "timing.dtypes=[fp32,bf16]", "timing.batch_sizes=[128,1024]",
      "timing.layer_timing_batch_sizes=[128,1024]")),
    ("gpu-layer-timing/d2l", "d2l.yaml",
     ("stages=[timing]", "timing.dtypes=[fp32,bf16]", "timing.batch_sizes=[128,1024]",
      "timing.reference_batch_size=128", "timing.layer_timing_batch_sizes=[128,1024]")),
    ("gpu-one_by_one", "one_by_one.yaml", ()),
    ("gpu-head", "head.yaml", ()),
    ("gpu-dropout", "dropout.yaml", ()),
)
SELFCHECK = "gpu-selfcheck"


def require_cuda() -> None:
    """Raise a one-line UserError on a machine without a usable CUDA device (the CLI exits 2)."""
    import torch

    from nin_bench.suite.machine import resolve_device

    try:
        resolve_device("cuda", torch.cuda.is_available(), asked_as="gpu-session's cuda")
    except ConfigError:
        from nin_bench.runtime.device import cuda_fallback_reason

        why = cuda_fallback_reason() or f"torch {torch.__version__} was built without CUDA"
        raise UserError(f"gpu-session needs a CUDA device: {why}") from None


def run_selfcheck(folder: Path, log: Callable[[str], None]) -> bool:
    """Run the self-check once into `folder` (selfcheck.json, selfcheck.md, manifest.json); True if all passed.

    A folder that already holds a self-check is kept (the batch moves on to the measurements).
    """
    import torch

    from nin_bench.data.datasets import load_dataset
    from nin_bench.run.manifest import build_manifest, device_name
    from nin_bench.run.selfcheck import run_checks
    from nin_bench.store.folder import ResultsDir

    rd = ResultsDir(folder)
    if rd.selfcheck_json.exists():
        checks = json.loads(rd.selfcheck_json.read_text())["checks"]
        log(f"self-check: kept the one in {rd.selfcheck_json} ({sum(c['passed'] for c in checks)}/{len(checks)} "
            "passed)")
        return all(c["passed"] for c in checks)
    rd.scratch.mkdir(parents=True, exist_ok=True)
    results = run_checks(torch.device("cuda"), load_dataset("fashion_mnist"), rd.scratch, log)
    manifest = build_manifest(device="cuda", device_name=device_name("cuda"), threads=torch.get_num_threads(),
                              protocol="selfcheck")
    rows = [asdict(r) for r in results]
    rd.write(rd.manifest, json.dumps(manifest, indent=2) + "\n")
    table = "\n".join(f"| {r['name']} | {'pass' if r['passed'] else 'FAIL'} | {r['figure']} | {r['detail']} |"
                      for r in rows)
    rd.write(rd.selfcheck_md, f"# CUDA self-check on {manifest['gpu_name']}\n\n"
             "| check | result | figure | detail |\n|---|---|---|---|\n" + table + "\n")
    rd.write(rd.selfcheck_json, json.dumps({"checks": rows}, indent=2) + "\n")
    return all(r.passed for r in results)


def gpu_session(results: Path, suites: Path, budget_s: float, log: Callable[[str], None] = print) -> int:
    """Run the batch until it is done or the budget is spent.

    Args:
        results: the results root (folders results/gpu-* are made in it).
        suites: the folder holding the suite YAMLs (ablations/).
        budget_s: wall seconds after which no new unit or epoch starts.
        log: one-line messages.

    Returns:
        0 when every step is complete, 3 when the budget ran out first (run the same command again).
    """
    require_cuda()
    from nin_bench.run.runner import run_suite
    from nin_bench.suite.config import load_config, resolve_protocol

    deadline = time.time() + budget_s
    run_selfcheck(results / SELFCHECK, log)
    for folder, suite, sets in STEPS:
        if time.time() >= deadline:
            log(f"time budget spent before {folder}; run the same command again to continue")
            return 3
        step = f"{folder}: {suite} --device cuda" + "".join(f" --set {s}" for s in sets)
        log(f"== {step}")
        cfg = load_config(suites / suite, [*sets, "device=cuda"])
        cfg, protocol, _ = resolve_protocol(cfg, cuda=True, sets=list(sets))
        run_suite(cfg, results / folder, protocol=protocol, progress=False, log=log, deadline=deadline,
                  command=f"python -m nin_bench gpu-session (step {step})")
    if time.time() >= deadline:
        return 3  # the last step may have stopped at the deadline; its run said how many units are left
    log("gpu-session: every step is complete")
    return 0
