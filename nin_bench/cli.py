"""Command line: parse arguments, call one library function, map user errors to exit code 2.

    python -m nin_bench run CONFIG [--out DIR] [--stages profile,timing] [--set k=v]... [--device auto|cpu|cuda]
                                   [--quick] [--full] [--no-progress] [--no-reuse] [--executor local|ray]
                                   [--ray-address ADDR]
    python -m nin_bench list CONFIG [--set k=v]... [--quick] [--full] [--explain]
    python -m nin_bench inspect PRESET|CONFIG [--set k=v]... [--time [--batch N] [--dtype D] [--device D]
                                                              [--trace FILE]]
    python -m nin_bench report DIR
    python -m nin_bench compare DIR_A DIR_B [--json]
    python -m nin_bench gpu-session [--results DIR] [--suites DIR] [--budget-s S] [--rehearse] [--steps A,B|list]
                                    [--pack N]
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nin_bench.errors import UserError
from nin_bench.store.folder import RESULTS_ROOT, ResultsDir
from nin_bench.store.schema import STAGES

if TYPE_CHECKING:  # the suite schema (pydantic) is imported only by the commands that load a suite
    from nin_bench.suite.config import SuiteConfig

EXIT_USAGE = 2


NO_FIGURES_HELP = ("write the report's text and tables without drawing its figures (seconds faster; the report "
                   "says they were not drawn; `report` draws them later)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nin_bench", description="Network in Network ablation and benchmark suite.")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="profile, time and train every variant of a suite YAML")
    run.add_argument("config", type=Path)
    run.add_argument("--out", type=Path, help="results folder (default: results/<name>)")
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)} (default: the YAML's)")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the YAML's device")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    run.add_argument("--executor", choices=["local", "ray"], default="local",
                     help="local: unit after unit in this process (default); ray: one Ray task per unit")
    run.add_argument("--no-figures", action="store_true", help=NO_FIGURES_HELP)
    run.add_argument("--no-reuse", action="store_true",
                     help="train every unit here, even one another folder of the results root trained identically "
                          "(default: copy it from there, with reused_from on its records)")
    run.add_argument("--retime", action="store_true",
                     help="measure the folder's speed records (timing, layer timing) again; its training and "
                          "profile records stand (the old ones are copied aside). For a report that says its "
                          "timing cannot be trusted: re-run on a quiet machine")
    run.add_argument("--ray-address", help="with --executor ray: 'auto', HOST:PORT (the head's GCS) or "
                                           "ray://HOST:PORT (Ray Client) joins a running cluster (default: start "
                                           "a local Ray instance on this machine)")
    for cmd in (run, sub.add_parser("list", help="print the expanded grid (no work)")):
        cmd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
        cmd.add_argument("--quick", action="store_true", help="smoke protocol: 1 epoch, small subset, few repeats")
        cmd.add_argument("--full", action="store_true", help="on a CPU-only machine, run the YAML's full protocol")
    lst = sub.choices["list"]
    lst.add_argument("config", type=Path)
    lst.add_argument("--explain", action="store_true",
                     help="also print every effective setting and where it came from (default, protocol, suite, ...)")
    ins = sub.add_parser("inspect", help="per-layer table (output shape, params, MACs) of a preset or a config; "
                                         "--time adds measured per-layer time")
    ins.add_argument("target", help="a preset name (nin_bench.suite.presets.REGISTRY) or a suite YAML")
    ins.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    ins.add_argument("--time", action="store_true", help="measure forward and train-step time per layer "
                                                          "(torch.profiler) beside the share of MACs")
    ins.add_argument("--batch", type=int, help="batch size for --time (default: timing.reference_batch_size)")
    ins.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="for --time (autocast)")
    ins.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="for --time")
    ins.add_argument("--trace", type=Path, metavar="FILE",
                     help="with --time: write the profiled forward's Chrome/Perfetto trace (with the per-layer "
                          "ranges) to FILE, one file per variant (FILE-<variant>.json) for a suite of several")
    rep = sub.add_parser("report", help="(re)build report.md/html, tables and figures from stored records")
    rep.add_argument("results_dir", type=Path)
    rep.add_argument("--no-figures", action="store_true", help=NO_FIGURES_HELP)
    cmp = sub.add_parser("compare", help="B against A: what differs, every shared timing row's B ÷ A time and "
                                         "every shared variant's B − A accuracy, with 95 %% CIs (read-only)")
    cmp.add_argument("dir_a", type=Path, help="results folder A (the reference)")
    cmp.add_argument("dir_b", type=Path, help="results folder B")
    cmp.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    gpu = sub.add_parser("gpu-session", help="on a CUDA machine: self-check, then the GPU timing and training "
                                             "batch, resumable, under a time budget")
    gpu.add_argument("--results", type=Path, default=RESULTS_ROOT, help="results root (default: results)")
    gpu.add_argument("--suites", type=Path, default=Path("ablations"), help="suite YAMLs (default: ablations)")
    gpu.add_argument("--budget-s", type=float, default=480.0,
                     help="seconds of work this call may take: nothing (unit, timing setting, epoch) starts after "
                          "them, and a unit estimated not to finish within them is skipped (default 480)")
    gpu.add_argument("--rehearse", action="store_true",
                     help="run the same steps on this CPU, shrunk to minutes (no CUDA needed)")
    gpu.add_argument("--steps", metavar="NAME,...",
                     help="steps to run, in the batch's order (default: the default batch); 'list' describes them")
    gpu.add_argument("--pack", type=int, metavar="N",
                     help="training runs at once on the device (default: measured on the first call, then reused)")
    return p


def _sets(args: argparse.Namespace) -> list[str]:
    """The command line's `--set` items, with `--stages` and `--device` (run only) as two more."""
    sets = list(args.set)
    if getattr(args, "stages", None):
        sets.append(f"stages=[{args.stages}]")
    if getattr(args, "device", None):
        sets.append(f"device={args.device}")
    return sets


def _resolved(args: argparse.Namespace, cfg: SuiteConfig):
    """Apply the protocol blocks to a suite loaded with `_sets(args)`; torch says whether CUDA is there.

    Returns:
        (config, protocol, device, cuda_fallback): the last is why `device: auto` fell back to the CPU on a CUDA
        build of torch (None when it did not).
    """
    import torch

    from nin_bench.runtime.device import cuda_fallback_reason, use_deterministic_cublas
    from nin_bench.suite.config import resolve_protocol

    if cfg.train.deterministic:  # before anything (the run's GEMM peak included) touches the GPU
        use_deterministic_cublas()

    cuda = torch.cuda.is_available()
    fallback = cuda_fallback_reason() if cfg.device == "auto" and not cuda else None
    cfg, protocol, device = resolve_protocol(cfg, cuda=cuda, quick=args.quick, full=args.full, sets=args.set)
    return cfg, protocol, device, fallback


def cmd_run(args: argparse.Namespace) -> int:
    if args.executor == "ray":
        _require_ray(args.ray_address)
        if args.ray_address:  # an address nothing answers: one line in a second, before torch is imported
            from nin_bench.run.ray_address import probe

            probe(args.ray_address)
    elif args.ray_address:
        raise UserError("--ray-address needs --executor ray")
    from nin_bench.suite.config import load_config

    cfg = load_config(args.config, _sets(args))  # torch-free: a malformed suite is refused before anything
    rd = ResultsDir(args.out or ResultsDir.for_suite(cfg.name).root)
    made = rd.missing_top()
    # the folder's lock before torch's import: a second run on a busy folder is refused in a second, not after
    # the imports; `run_suite` takes it again (held once)
    with rd.lock("run"):
        with rd.unmade_on_error(made):  # refused here (say, no CUDA for device: cuda): no folder left behind
            cfg, protocol, _, fallback = _resolved(args, cfg)
            from nin_bench.run.runner import run_suite
        run_suite(cfg, rd.root, protocol=protocol, progress=not args.no_progress, executor=args.executor,
                  ray_address=args.ray_address, cuda_fallback=fallback, command=args.invocation,
                  reuse=not args.no_reuse, figures=not args.no_figures, retime=args.retime)
    return 0


def _require_ray(address: str | None = None) -> None:
    """Fail with one line when Ray, an optional extra, is not installed, or Ray Client (grpcio) is missing for a
    ray:// address (an address that does not answer is `ray_address.probe`'s to refuse)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UserError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install 'ray[client]>=2.9')")
    if address and address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise UserError(f"--ray-address {address} needs Ray Client: pip install -e '.[ray]' "
                        "(or pip install 'ray[client]>=2.9')")


def cmd_list(args: argparse.Namespace) -> int:
    """Print the expanded grid (and with --explain every setting and its origin); never imports torch."""
    from nin_bench.suite.explain import explain
    from nin_bench.suite.machine import GUESSED_BY, guess_cuda
    from nin_bench.suite.variants import expand_grid, input_size_of

    told = explain(args.config, _sets(args), cuda=guess_cuda(), quick=args.quick, full=args.full,
                   seen_by=GUESSED_BY)
    cfg, variants = told.config, expand_grid(told.config)
    print(f"{cfg.name}: {len(variants)} variants x seeds {cfg.seeds_text()}; stages {', '.join(cfg.stages)}; "
          f"{told.protocol} protocol on {told.device} (device guessed without torch; `run` asks torch)")
    for v in variants:
        m, t = v.config.model, v.config.train
        print(f"  {v.id:<58} width={m.width:g} bn={m.batchnorm} input={input_size_of(v.config) or 'native'} "
              f"epochs={t.epochs} subset={t.subset or 'all'}")
    if args.explain:
        width = max(len(s.key) for s in told.settings)
        print("settings (key = value, from):")
        for s in told.settings:
            print(f"  {s.key:<{width}} = {json.dumps(s.value)}  ({s.origin})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from nin_bench.run.inspect_model import inspect_target

    if args.batch is not None and args.batch < 1:
        raise UserError(f"--batch must be a positive integer, got {args.batch}")
    if args.trace is not None and not args.time:
        raise UserError("--trace needs --time (the trace is the timed forward's)")
    print(inspect_target(args.target, args.set, time=args.time, batch=args.batch, dtype=args.dtype,
                         device=args.device, trace=args.trace))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from nin_bench.report import rebuild

    rd = ResultsDir(args.results_dir)
    if not rd.records.exists():
        raise FileNotFoundError(f"no {rd.records.name} in {rd.root}: run `python -m nin_bench run CONFIG` first")
    with rd.lock("report"):
        print(rebuild(rd, figures=not args.no_figures))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Print the comparison; read-only, so no folder lock (a run may be appending to either folder)."""
    from nin_bench.report.compare import compare_folders, render_text, to_json

    c = compare_folders(args.dir_a, args.dir_b)
    print(to_json(c) if args.json else render_text(c))
    return 0


def cmd_gpu_session(args: argparse.Namespace) -> int:
    from nin_bench.run.gpu_session import describe_steps, gpu_session

    if args.steps == "list":
        print(describe_steps())
        return 0
    if args.pack is not None and args.pack < 1:
        raise UserError(f"--pack {args.pack}: expected a whole number >= 1")
    return gpu_session(args.results, args.suites, args.budget_s, lambda m: print(m, flush=True),
                       rehearse=args.rehearse, steps=args.steps, pack=args.pack)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m nin_bench` and the `nin-bench` script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    # the command that continues the folder: a one-off --retime is not part of it
    args.invocation = shlex.join(["python", "-m", "nin_bench", *(a for a in argv if a != "--retime")])
    handler = {"run": cmd_run, "list": cmd_list, "inspect": cmd_inspect, "report": cmd_report,
               "compare": cmd_compare, "gpu-session": cmd_gpu_session}[args.command]
    try:
        return handler(args)
    except (UserError, FileNotFoundError) as exc:  # bad config, missing data: one line, no traceback
        print(f"nin_bench {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader went away (`list ... | head`): not an error of ours
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (so the interpreter's final flush stays quiet)
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted: finished units are recorded; run the same command again to resume", file=sys.stderr)
        return 130
