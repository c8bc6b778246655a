"""`daamflow config`: validate a config file (as Snakemake does) and show what a stage would receive."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import load_config, train_settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="config file, e.g. config/config.yaml")
    p.add_argument("--train", nargs=3, metavar=("DATASET", "PROTOCOL", "METHOD"),
                   help="print the settings JSON a `daamflow train` job of this triple gets")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.train:
        dataset, protocol, method = args.train
        if dataset not in config["datasets"]:
            raise SystemExit(f"unknown dataset {dataset!r}; the config has {sorted(config['datasets'])}")
        print(json.dumps(train_settings(config, dataset, method, protocol), indent=2, sort_keys=True))
    else:
        print(f"{args.config}: valid ({len(config['datasets'])} datasets, {len(config['methods'])} methods, "
              f"protocols {config['protocols']})")
    return 0
