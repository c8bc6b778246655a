"""`daamflow vqvae train|table`: train one VQ-VAE run, or combine finished runs into the plain-vs-DAAM table."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from daamflow.vqvae.config import DATASETS, PRESETS, VARIANTS, VQVAEConfig


def _flag_type(hint: Any) -> dict[str, Any]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(hint) is list:
        return {"type": args[0], "nargs": "+"}
    return {"type": args[0] if args else hint}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="vqvae_command", metavar="{train,table}", required=True)
    train = sub.add_parser("train", help="train and evaluate one variant with one seed",
                           description="Train one VQ-VAE variant, checkpointing every epoch (a rerun resumes), and "
                           "write metrics.json, history.csv, loss_curves.png, reconstructions.png, samples.npz.")
    train.add_argument("--variant", choices=VARIANTS, required=True)
    train.add_argument("--seed", type=int, required=True)
    train.add_argument("--out", type=Path, required=True, help="output folder of this run")
    train.add_argument("--preset", choices=sorted(PRESETS), default="blog",
                       help="starting hyper-parameters (blog: the DAAM blog's COCO setup; demo: tiny Fashion-MNIST)")
    train.add_argument("--params-json", help="hyper-parameters over the preset: a JSON object, inline or a file")
    train.add_argument("--device", default="cpu", help="torch device (default cpu)")
    train.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    train.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    train.add_argument("--stop-after-epochs", type=int, help="leave after N epochs of this call (resume later)")
    hp = train.add_argument_group("hyper-parameters (override preset and --params-json)")
    blog = dataclasses.asdict(PRESETS["blog"])
    for f, hint in typing.get_type_hints(VQVAEConfig).items():
        extra = _flag_type(hint) | ({"choices": DATASETS} if f == "dataset" else {})
        if "action" not in extra:
            extra["metavar"] = f.upper()
        hp.add_argument(f"--{f.replace('_', '-')}", dest=f"hp_{f}", default=None, help=f"blog: {blog[f]}", **extra)
    table = sub.add_parser("table", help="combine runs: plain vs DAAM, mean ± std over seeds",
                           description="Combine finished runs into a plain-vs-DAAM table (CSV + Markdown) and a grid.")
    table.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders (each with metrics.json)")
    table.add_argument("--out-csv", type=Path, required=True)
    table.add_argument("--out-md", type=Path, required=True)
    table.add_argument("--grid-out", type=Path, help="PNG: originals and both variants' reconstructions")


def config_from_args(args: argparse.Namespace) -> VQVAEConfig:
    """Preset ← --params-json ← explicit hyper-parameter flags."""
    cfg = PRESETS[args.preset]
    if args.params_json is not None:
        from daamflow.config import read_settings

        cfg = VQVAEConfig.from_dict(read_settings(args.params_json), cfg)
    flags = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_") and v is not None}
    return VQVAEConfig.from_dict(flags, cfg)


def main(args: argparse.Namespace) -> int:
    # imported here: `table` needs neither torch nor the model
    if args.vqvae_command == "train":
        from daamflow.vqvae.train import train_run

        train_run(config_from_args(args), args.variant, args.seed, args.out, device=args.device,
                  threads=args.threads, workers=args.workers, stop_after_epochs=args.stop_after_epochs)
        return 0
    from daamflow.vqvae.table import markdown, write_table

    df = write_table(args.runs, args.out_csv, args.out_md, args.grid_out)
    print(markdown(df))
    return 0
