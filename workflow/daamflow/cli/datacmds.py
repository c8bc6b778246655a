"""The data-side commands: `daamflow prepare`, `daamflow encoder`, `daamflow embed` (thin CLI over the package)."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from types import SimpleNamespace

from daamflow.catalog import SOURCE_MODALITY
from daamflow.config import read_settings

log = logging.getLogger(__name__)


def _prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", required=True, choices=sorted(SOURCE_MODALITY), help="dataset adapter")
    p.add_argument("--out", required=True, type=Path, help="prepared dataset folder (manifest.csv, meta.json, inputs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", default="{}", help="adapter options as JSON (inline or a file), e.g. '{\"per_class\": 50}'")


def _prepare(args: argparse.Namespace) -> int:
    from daamflow.data.datasets import prepare

    manifest = prepare(args.source, args.out, args.seed, **read_settings(args.options))
    log.info("prepared %s: %d samples, classes %s -> %s", args.source, len(manifest),
             manifest["label_name"].value_counts().to_dict(), args.out)
    return 0


def _encoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="encoder spec as JSON (inline or a file): kind package | tiny | hub")
    p.add_argument("--out", required=True, type=Path, help="folder that AutoModel.from_pretrained can load")
    p.add_argument("--lock", type=Path, default=None,
                   help="lock file of hub encoders (commit and weight sha256 of the first download, verified later)")
    p.add_argument("--exclude-data", type=Path, nargs="*", default=[], metavar="DIR",
                   help="pretrained tiny encoders: prepared dataset folders whose samples the pretraining must not use")


def _encoder(args: argparse.Namespace) -> int:
    from daamflow.data.encoders import materialise

    path = materialise(read_settings(args.spec), args.out, lock=args.lock, exclude=args.exclude_data)
    log.info("encoder ready: %s", json.loads((Path(path) / "encoder.json").read_text()).get("class", path))
    return 0


def _embed_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="prepared dataset folder (from `daamflow prepare`)")
    p.add_argument("--encoder", required=True, type=Path, help="encoder folder (from `daamflow encoder`)")
    p.add_argument("--out", required=True, type=Path, help="feature store folder (features.npy, index.csv, manifest.json)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--layers", choices=["blocks", "all"], default="blocks",
                   help="blocks: hidden_states[1:] as the paper; all: with the embedding output")
    p.add_argument("--max-length", type=int, default=None, help="text truncation length in tokens")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default="auto",
                   help="compute dtype; auto: bfloat16 (or float16) on a GPU, float32 on a CPU")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader processes that decode input batches")
    p.add_argument("--shard-rows", type=int, default=4096,
                   help="rows between progress records: an interrupted run resumes from the last one")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")


def _embed(args: argparse.Namespace) -> int:
    import torch

    from daamflow.data.embed import embed

    torch.set_num_threads(args.threads)
    embed(args.data, args.encoder, args.out, batch_size=args.batch_size, layers=args.layers, device=args.device,
          max_length=args.max_length, dtype=args.dtype, num_workers=args.num_workers, shard_rows=args.shard_rows,
          progress=not args.no_progress)
    log.info("features written to %s", args.out)
    return 0


PREPARE = SimpleNamespace(add_arguments=_prepare_args, main=_prepare)
ENCODER = SimpleNamespace(add_arguments=_encoder_args, main=_encoder)
EMBED = SimpleNamespace(add_arguments=_embed_args, main=_embed)
