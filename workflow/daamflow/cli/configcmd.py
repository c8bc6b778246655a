"""`daamflow config`: validate a config file and its local resources (as Snakemake does while it builds the DAG) and
show what a stage would receive."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from daamflow.catalog import HEAD_METHODS, is_lora
from daamflow.config import load_config, train_settings
from daamflow.preflight import check_resources
from daamflow.run.lora_settings import finetune_settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, help="config file, e.g. config/config.yaml")
    p.add_argument("--train", nargs=3, metavar=("DATASET", "PROTOCOL", "METHOD"),
                   help="print the settings JSON the job of this triple gets: `daamflow train` for a head, "
                        "`daamflow finetune` for a LoRA method (lora_r4, loraplus_r8@released, ...)")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.train:
        dataset, protocol, method = args.train
        if dataset not in config["datasets"]:
            raise SystemExit(f"unknown dataset {dataset!r}; the config has {sorted(config['datasets'])}")
        if is_lora(method):
            settings = finetune_settings(config, dataset, method, protocol)
        elif method in HEAD_METHODS:
            settings = train_settings(config, dataset, method, protocol)
        else:
            raise SystemExit(f"unknown method {method!r}: a head ({', '.join(HEAD_METHODS)}) or a LoRA method "
                             f"(lora_r<rank> / loraplus_r<rank>, optionally @released)")
        print(json.dumps(settings, indent=2, sort_keys=True))
    else:
        check_resources(config)  # what `snakemake -n` checks too: local datasets and encoder folders exist
        print(f"{args.config}: valid ({len(config['datasets'])} datasets, {len(config['methods'])} methods, "
              f"protocols {config['protocols']})")
    return 0
