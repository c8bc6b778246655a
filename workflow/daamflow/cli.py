"""`daamflow <stage> ...`: one subcommand per workflow stage, each with explicit paths.

Every Snakemake rule calls one of these, so each stage also runs (and is tested) without Snakemake.
A subcommand lives in its own module exposing ``add_arguments(parser)`` and ``main(args)``; modules are
imported lazily so that ``daamflow --help`` stays fast (no torch import).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "params": ("daamflow.paramtable", "print the paper's parameter table (Table 1) computed from the model registry"),
}


def _build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="daamflow",
        description="Density Adaptive Attention (DAAM) on frozen encoders: every stage of the workflow as a command.",
        epilog="Run `daamflow <command> --help` for the options of one stage.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="command")
    wanted = next((a for a in argv if a in COMMANDS), None)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # only the chosen stage's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
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
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
