"""`daamflow <stage> ...`: one subcommand per workflow stage, each with explicit paths.

Every Snakemake rule calls one of these, so each stage also runs (and is tested) without Snakemake.
A subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``; modules are
imported lazily so that ``daamflow --help`` stays fast (no torch import).
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import logging
import os
import sys
import time
from pathlib import Path

from daamflow.usage import recorded

STARTED = time.perf_counter()  # a job's wall time includes the imports its command needs

# name -> ("module" or "module:object" exposing add_arguments(parser) and main(args), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("daamflow.cli.datacmds:PREPARE", "prepare a dataset: manifest.csv, meta.json and the raw inputs"),
    "encoder": ("daamflow.cli.datacmds:ENCODER", "make a from_pretrained-loadable encoder folder (package, tiny or hub)"),
    "embed": ("daamflow.cli.datacmds:EMBED", "encode a prepared dataset into the feature store (per-layer pooled X)"),
    "train": ("daamflow.run.train", "train one head on all folds/seeds of one (dataset, encoder, protocol, method)"),
    "finetune": ("daamflow.run.finetune", "LoRA / LoRA+ on the encoder itself (peft), all folds/seeds of one method"),
    "report": ("daamflow.report.cli", "tables, figures, the paper's tables beside ours, claims, curves and summary.md"),
    "importance": ("daamflow.analysis.layers", "IF maps and heatmaps, layer ablation choice, per-layer probes, correlations"),
    "vqvae": ("daamflow.vqvae.cli", "VQ-VAE plain vs Mixture-of-DAAM: train one run, or combine runs into a table and grid"),
    "params": ("daamflow.report.paramtable", "print the paper's parameter table (Table 1) computed from the model registry"),
    "config": ("daamflow.cli.configcmd", "validate a config and print the resolved settings of one stage"),
    "install-profile": ("daamflow.cli.profiles", "link profiles/slurm into ~/.config/snakemake: `--profile slurm` anywhere"),
    "warm": ("daamflow.cli.warm", "serve the workflow's jobs from one process with torch/transformers/peft imported"),
}


def _load(target: str):
    module, _, attr = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attr) if attr else obj


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daamflow",
        description="Density Adaptive Attention (DAAM) on frozen encoders: every stage of the workflow as a command.",
        epilog="Run `daamflow <command> --help` for the options of one stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--usage", type=Path, metavar="FILE", default=None,
                        help="when the command ends, write its wall time, CPU time and peak memory to FILE (TSV; "
                             "the workflow's results/benchmarks/, read by benchmarks/bench_workflow.py)")
    sub = parser.add_subparsers(dest="command", metavar="command")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen stage's module is imported
            _load(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None, started: float = STARTED) -> int:
    """Run one command; its usage (``--usage``) counts wall time from ``started`` (``time.perf_counter``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command is None:
        parser.print_help()
        return 2
    from daamflow.config import ConfigError

    with recorded(args.usage, started) as status:
        try:
            status[0] = int(_load(COMMANDS[args.command][0]).main(args) or 0)
        except ConfigError as exc:  # the user's config or resources: the message says what to fix, a traceback not
            print(f"daamflow {args.command}: {exc}", file=sys.stderr)
            status[0] = 2
    return status[0]


def finish() -> None:
    """What a normal exit runs before the interpreter's teardown: atexit handlers (tempfile, logging,
    multiprocessing clean-ups), then log and stream flushes."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()


def run() -> None:
    """The ``daamflow`` console command: in a warm-started child when the workflow's server takes the job
    (``daamflow.cli.warm``), else ``main`` here; then a prompt exit. Once the command is done (its outputs written
    and closed, ``finish`` run) the process ends without the interpreter's teardown of torch's and transformers'
    modules, which cost about 1 s of CPU per job, a tenth of a typical head job (docs/architecture.md#9-timings).
    A failing command (an exception) exits the normal way, with its traceback."""
    argv = sys.argv[1:]
    if "warm" not in argv[:1]:
        from daamflow.cli.warm import forward

        status = forward(argv, STARTED)
        if status is not None:
            os._exit(status)
    status = main(argv)
    finish()
    os._exit(status)
