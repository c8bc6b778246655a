"""`daamflow report <part>`: one subcommand per kind of report output, in a registry ``PARTS`` (name -> (help,
add_arguments, run)) like the command registry of ``daamflow.cli``. Each part reads its inputs, writes its files and
returns; the rules of rules/report.smk call them with explicit paths.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Callable

from daamflow.catalog import parse_pairs
from daamflow.report.stats import ALPHA

log = logging.getLogger(__name__)

RUNS_HELP = "runs.csv files written by `daamflow train` / `daamflow finetune`"
PAIRS_HELP = "DATASET=PAPER_DATASET for each dataset that is (or stands in for) one of the paper's"


def _runs_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", nargs="+", required=True, type=Path, help=RUNS_HELP)


def _runs(args: argparse.Namespace):
    from daamflow.report.runs import load_runs

    return load_runs(args.runs)


# ---- dataset --------------------------------------------------------------------------------------------------------

def _dataset_args(p: argparse.ArgumentParser) -> None:
    _runs_arg(p)
    p.add_argument("--tables", required=True, type=Path, help="output folder for tables (csv, md, tex)")
    p.add_argument("--figures", required=True, type=Path, help="output folder for figures (png)")


def _dataset(args: argparse.Namespace) -> None:
    from daamflow.report.dataset import dataset_report

    log.info("wrote %d files", len(dataset_report(_runs(args), args.tables, args.figures)))


# ---- paper ----------------------------------------------------------------------------------------------------------

def _paper_args(p: argparse.ArgumentParser) -> None:
    from daamflow.catalog import PAPER_DATASETS

    _runs_arg(p)
    p.add_argument("--paper-dataset", required=True, choices=sorted(PAPER_DATASETS), help="the paper's dataset")
    p.add_argument("--stand-in", action="store_true", help="our dataset only stands in for it (labelled)")
    p.add_argument("--tables", required=True, type=Path, help="output folder")


def _paper(args: argparse.Namespace) -> None:
    from daamflow.report.paper import paper_report

    paper_report(_runs(args), args.paper_dataset, args.tables, args.stand_in)


# ---- paper-summary --------------------------------------------------------------------------------------------------

def _paper_summary_args(p: argparse.ArgumentParser) -> None:
    _runs_arg(p)
    p.add_argument("--paper-datasets", nargs="+", required=True, help=PAIRS_HELP)
    p.add_argument("--out-table", required=True, type=Path, help="table stem (.csv/.md/.tex are written)")


def _paper_summary(args: argparse.Namespace) -> None:
    from daamflow.report.paper import display_paper_summary, paper_summary_table
    from daamflow.report.tables import write_table

    table = paper_summary_table(_runs(args), parse_pairs(args.paper_datasets))
    write_table(table, args.out_table,
                "The paper's summary table (B Table 5): ours (published; Δ) per dataset and protocol",
                shown=display_paper_summary(table))


# ---- parameters -----------------------------------------------------------------------------------------------------

def _parameters_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tables", required=True, type=Path, help="output folder")


def _parameters(args: argparse.Namespace) -> None:
    from daamflow.report.paramtable import parameters_report

    parameters_report(args.tables)


# ---- claims ---------------------------------------------------------------------------------------------------------

def _claims_args(p: argparse.ArgumentParser) -> None:
    _runs_arg(p)
    p.add_argument("--paper-datasets", nargs="*", default=[], help=PAIRS_HELP)
    p.add_argument("--parameters", required=True, type=Path, help="parameters.csv from `report parameters`")
    p.add_argument("--tables", required=True, type=Path, help="output folder")
    p.add_argument("--alpha", type=float, default=ALPHA, help="level of every verdict, after Holm")
    p.add_argument("--margins", nargs="*", default=[], metavar="DATASET=POINTS",
                   help="margin in accuracy points per our or paper dataset (config claims.margins)")
    p.add_argument("--seeded", nargs="*", default=[], metavar="DATASET",
                   help="datasets with one fixed test set (scheme seeds): item-level test from their predictions.csv")


def _claims(args: argparse.Namespace) -> None:
    from daamflow.report.claims import claims_report
    from daamflow.report.runs import load_items

    runs = _runs(args)
    margins = {}
    for key, value in parse_pairs(args.margins, "--margins").items():
        try:
            margins[key] = float(value)
        except ValueError:
            raise ValueError(f"--margins: {key}={value!r} is not a number of accuracy points") from None
    claims_report(runs, parse_pairs(args.paper_datasets), args.parameters, args.tables, args.alpha, margins,
                  load_items(args.runs, args.seeded), set(args.seeded))


# ---- quirks ---------------------------------------------------------------------------------------------------------

def _quirks_args(p: argparse.ArgumentParser) -> None:
    _runs_arg(p)
    p.add_argument("--out-table", required=True, type=Path, help="table stem (.csv/.md/.tex are written)")
    p.add_argument("--alpha", type=float, default=ALPHA, help="1 − the level of the t-intervals")


def _quirks(args: argparse.Namespace) -> None:
    from daamflow.report import quirks
    from daamflow.report.tables import write_table

    table = quirks.quirk_table(_runs(args), alpha=args.alpha)
    write_table(table, args.out_table, quirks.caption(alpha=args.alpha), shown=quirks.display_quirks(table, args.alpha))


# ---- curves ---------------------------------------------------------------------------------------------------------

def _curves_args(p: argparse.ArgumentParser) -> None:
    _runs_arg(p)
    p.add_argument("--per-layer", nargs="*", default=[], type=Path, help="per_layer.csv files of `importance map`")
    p.add_argument("--probes", nargs="*", default=[], type=Path, help="probe.csv files of `importance probe`")
    p.add_argument("--out", required=True, type=Path, help="output folder (history/, layers/)")


def _curves(args: argparse.Namespace) -> None:
    from daamflow.report.curves import write_curves

    _runs(args)  # every run table must exist, as for the other parts
    write_curves(args.runs, args.per_layer, args.probes, args.out)


# ---- summary --------------------------------------------------------------------------------------------------------

def _summary_args(p: argparse.ArgumentParser) -> None:
    _runs_arg(p)
    p.add_argument("--out-md", required=True, type=Path)
    p.add_argument("--out-json", required=True, type=Path)
    p.add_argument("--paper-grid", action="store_true", help="real datasets and encoders: no stand-in disclaimer")
    p.add_argument("--paper-datasets", nargs="*", default=[], help=PAIRS_HELP)
    p.add_argument("--stand-ins", nargs="*", default=[], help="datasets of --paper-datasets that are stand-ins")
    p.add_argument("--embed", nargs="*", default=[], metavar="TITLE=FILE.md", help="markdown files to include")


def _summary(args: argparse.Namespace) -> None:
    from daamflow.report.summary import summary

    runs = _runs(args)
    bad = [item for item in args.embed if "=" not in item]
    if bad:
        raise ValueError(f"--embed: expected TITLE=FILE.md, got {bad}")
    embed = [tuple(item.split("=", 1)) for item in args.embed]
    summary(runs, args.out_md, args.out_json, stand_in=not args.paper_grid,
            paper_of=parse_pairs(args.paper_datasets), stand_ins=args.stand_ins, embed=embed)
    log.info("summary -> %s", args.out_md)


# name -> (help, add_arguments, run), in the order `daamflow report --help` lists them
PARTS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], None]]] = {
    "dataset": ("tables and figure of the datasets in the given run tables", _dataset_args, _dataset),
    "paper": ("the paper's table of one dataset per protocol: ours, published and Δ per cell", _paper_args, _paper),
    "paper-summary": ("the paper's summary table (MHA, best LoRA, best DAAM): ours vs published",
                      _paper_summary_args, _paper_summary),
    "parameters": ("the paper's parameter table from the model registry, beside Table 1", _parameters_args,
                   _parameters),
    "claims": ("the paper's claims vs our runs (paired, per protocol), and all DAAM-vs-baseline pairs", _claims_args,
               _claims),
    "quirks": ("each released-code quirk's switch off vs on, per dataset, paired over folds", _quirks_args, _quirks),
    "curves": ("plot-ready CSVs: per-epoch history per method, per-layer IF and probe accuracy", _curves_args,
               _curves),
    "summary": ("summary.md and summary.json over all run tables", _summary_args, _summary),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="part", required=True, metavar="part")
    for name, (help_text, add, _) in PARTS.items():
        add(sub.add_parser(name, help=help_text))


def main(args: argparse.Namespace) -> int:
    PARTS[args.part][2](args)
    return 0
