"""LoRA / LoRA+ baselines (docs/paper-notes.md#48-lora, docs/paper-notes.md#49-lora-plus): the fold loop and
``daamflow finetune``.

One call fine-tunes every fold/seed of one (dataset, encoder, protocol, method) from the *prepared data* (not the
feature cache), with the heads' folds (``folds.make_splits`` over the manifest's label/group/split), protocols and run
contract (docs/architecture.md#3-run-contract): ``<out>/<fold>/metrics.json`` (the heads' keys and a few more),
``history.csv``, ``predictions.csv``, ``checkpoint.pt`` (adapters + head + optimiser, written after every epoch; a
restart resumes at the next epoch and ends with the uninterrupted numbers), ``model.pt`` (the selected adapter and
head weights only) and ``<out>/runs.csv`` (``dispatch.run_row``), so the runs land in every table. The settings are
``lora_settings.finetune_settings``; the model is ``lora_model``. The prepared data is read once per process.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import peft
import torch
import transformers

from daamflow.atomic import save_torch, write_json
from daamflow.config import read_settings
from daamflow.data.encoders import read_encoder_info
from daamflow.data.folds import Split, make_splits
from daamflow.data.manifest import read_prepared, sha256_file
from daamflow.device import resolve_device, resolve_dtype
from daamflow.run.dispatch import (
    add_fold_arguments, add_launcher_argument, check_identity, fold_options, run_folds, unless_finished,
)
from daamflow.run.fit import conclude, finished, fit, refit, refits, use_amp
from daamflow.run.identity import fold_identity
from daamflow.run.lora_model import (
    Inputs, LoraLearner, adapter_state, build_model, load_adapter_state, make_optimiser, parameter_counts,
)

log = logging.getLogger(__name__)

FINAL = "final.pt"  # a fold's adapter and head weights after its last epoch (quirks.model_across_folds)
DATA_MANIFEST = "data/manifest.csv"  # the prepared data's key among a fold's inputs


@dataclass(frozen=True)
class Prepared:
    """A prepared dataset (``daamflow prepare``), read once: its folder, manifest rows and meta.json."""

    folder: Path
    df: pd.DataFrame
    meta: dict

    @classmethod
    def read(cls, folder: Path | str) -> Prepared:
        df, meta = read_prepared(folder)
        return cls(Path(folder), df, meta)


def run_split(
    data: Prepared,
    encoder_dir: Path | str,
    split: Split,
    settings: dict,
    out_dir: Path | str,
    device: str = "auto",
    stop_after_epoch: int | None = None,
    progress: bool = True,
    carry_from: Path | None = None,
    inputs: dict[str, str] | None = None,
) -> dict:
    """Fine-tune, select and test one fold/seed (a ``folds.Split``); resumable from ``out_dir/checkpoint.pt``.

    ``carry_from`` (quirks.model_across_folds): the previous fold's folder; this fold starts from its final adapter
    and head weights (``final.pt``) instead of a fresh initialisation, with a fresh optimiser. ``inputs``: the
    fold's input digests when the caller has them (``fold_inputs``).
    """
    encoder_dir, out_dir = Path(encoder_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hp, ft, method = settings["hyper"], settings["finetune"], settings.get("label", settings["method"])
    dev = resolve_device(device)
    dtype = resolve_dtype(dev) if use_amp(hp, dev) else torch.float32  # a frozen encoder can sit in bf16
    labels = data.df["label"].to_numpy()
    num_classes = len(data.meta["classes"])

    torch.manual_seed(split.seed)
    model, base, targets = build_model(encoder_dir, settings, num_classes, dev, dtype)
    carried = None
    if carry_from is not None:
        load_adapter_state(model, torch.load(carry_from / FINAL, map_location=dev, weights_only=True))
        carried = {"fold": carry_from.name, "sha256": sha256_file(carry_from / FINAL)}
    feed = Inputs(data.folder, data.df, ft["modality"], base, encoder_dir, ft["max_length"],
                  at_padding=ft["quirks"]["logits_at_padding"])
    initial = adapter_state(model) if refits(settings) else None
    optimiser = make_optimiser(model, settings)
    digests = inputs or fold_inputs(data.folder, encoder_dir)
    learner = LoraLearner(model, feed, hp["batch_size"], dev, dtype, ft["group_by_length"])

    fitted = fit(learner, optimiser, split, labels, settings, out_dir, dev, inputs=digests,
                 stop_after_epoch=stop_after_epoch, progress=progress)
    if fitted.probe:
        log.warning("%s: %d adapter tensors got no gradient in the first epoch (e.g. %s): their module's weight is "
                    "read without calling it (WavLM's fused attention reads q/k/v weights directly)",
                    split.name, len(fitted.probe), fitted.probe[0])
    if ft["quirks"]["model_across_folds"]:  # the weights the next fold starts from: after the last epoch
        save_torch(out_dir / FINAL, adapter_state(model))
    tested, refitted = split, {"refit": False}
    if initial is not None:
        fitted, tested, refitted = refit(
            fitted, learner, lambda: make_optimiser(model, settings), initial, split, labels, settings, out_dir, dev,
            inputs=digests, stop_after_epoch=stop_after_epoch, progress=progress)
    metrics = conclude(fitted, learner, tested, labels, data.df["id"].to_numpy(), num_classes, settings, out_dir,
                       dev, inputs=digests)
    metrics.update(refitted)
    info = read_encoder_info(encoder_dir)
    metrics.update({
        **parameter_counts(model, optimiser),
        "layers": None,
        "target_modules": targets,
        "adapters_without_gradient": fitted.probe or [],
        "encoder_model_type": base.config.model_type,
        "encoder_weights_sha256": info["weights"],
        "data_sha256": digests[DATA_MANIFEST],
        "carried_from": carried,
        "versions": {**metrics["versions"], "peft": peft.__version__, "transformers": transformers.__version__},
    })
    write_json(out_dir / "metrics.json", metrics)  # last: its presence marks the fold finished
    log.info("%s %s: best epoch %d (selection accuracy %.4f), test accuracy %.4f, macro-F1 %.4f", method,
             split.name, metrics["best_epoch"], metrics["select_accuracy"], metrics["accuracy"], metrics["macro_f1"])
    return metrics


def fold_inputs(data_dir: Path, encoder_dir: Path) -> dict[str, str]:
    """A LoRA fold's inputs for ``identity.fold_identity``: the prepared data manifest's sha256 and the encoder's
    weight checksums (recorded in encoder.json when the encoder folder was built)."""
    weights = read_encoder_info(encoder_dir)["weights"]
    return {DATA_MANIFEST: sha256_file(Path(data_dir) / "manifest.csv"),
            **{f"encoder/{name}": sha for name, sha in sorted(weights.items())}}


def splits_of(data: Prepared, settings: dict) -> list[Split]:
    """The folds/seeded runs of a prepared dataset: the heads' ``make_splits`` over its manifest."""
    df = data.df
    return make_splits(df["label"].to_numpy(), df["group"].to_numpy(), df["split"].to_numpy(), settings["evaluation"],
                       settings["protocol"], settings["seed"], settings["hyper"]["dev_fraction"])


def run_fold(data_dir: Path | str, encoder_dir: Path | str, settings: dict, out_dir: Path | str, fold: str,
             identity: str, device: str = "auto", threads: int = 1) -> dict:
    """Run (or resume, or reuse) one fold/seed; a top-level function so that launchers can ship it to a worker.

    ``identity`` is the ``fold_identity`` the caller computed; the fold holds ``<fold>/.lock`` while it runs.
    """
    torch.set_num_threads(threads)
    inputs = fold_inputs(Path(data_dir), Path(encoder_dir))
    found = fold_identity(settings, inputs)
    check_identity(fold, identity, found, f"prepared data {data_dir} or encoder {encoder_dir}")
    data = Prepared.read(data_dir)
    splits = splits_of(data, settings)
    split = {s.name: s for s in splits}[fold]
    fold_dir = Path(out_dir) / fold

    def train() -> dict:  # under the fold's lock: the previous fold (model_across_folds) is read there
        carry_from = _previous_fold(splits, fold, settings, Path(out_dir), identity)
        return run_split(data, encoder_dir, split, settings, fold_dir, device, progress=False,
                         carry_from=carry_from, inputs=inputs)

    return unless_finished(fold_dir, identity, "settings, data and encoder", train)


def _previous_fold(splits: list[Split], fold: str, settings: dict, out_dir: Path, identity: str) -> Path | None:
    """quirks.model_across_folds: the folder of the fold before ``fold``, whose final weights it starts from (the
    released IEMOCAP LoRA script built the model once, before its fold loop); None for the first fold or without it."""
    names = [s.name for s in splits]
    k = names.index(fold)
    if not settings["finetune"]["quirks"]["model_across_folds"] or k == 0:
        return None
    previous = out_dir / names[k - 1]
    if finished(previous, identity) is None or not (previous / FINAL).is_file():
        raise RuntimeError(
            f"{fold}: finetune.quirks.model_across_folds starts it from the final weights of {names[k - 1]}, which "
            f"has not finished with these settings ({previous / FINAL} missing); run the folds in order, without "
            f"--folds skipping {names[k - 1]}")
    return previous


def finetune_all(data_dir: Path | str, encoder_dir: Path | str, settings: dict, out_dir: Path | str,
                 device: str = "auto", launcher: dict | None = None, **options) -> pd.DataFrame:
    """Every fold/seed of a LoRA method, and ``out_dir/runs.csv``: ``dispatch.run_folds`` (``options``: only,
    threads) over the prepared data's splits."""
    data_dir, encoder_dir, out_dir = Path(data_dir), Path(encoder_dir), Path(out_dir)
    data = Prepared.read(data_dir)
    meta = data.meta
    info = read_encoder_info(encoder_dir)
    if info["modality"] != meta["modality"] or settings["finetune"]["modality"] != meta["modality"]:
        raise ValueError(f"encoder {info['name']} takes {info['modality']} input, the settings say "
                         f"{settings['finetune']['modality']}, but dataset {meta['source']} ({data_dir}) "
                         f"is {meta['modality']}")
    splits = splits_of(data, settings)
    if settings["finetune"]["quirks"]["model_across_folds"] and launcher and launcher.get("kind", "inline") != "inline":
        log.warning("finetune.quirks.model_across_folds: fold k starts from fold k-1's final weights, so the folds "
                    "run one after another in this process instead of as a %s job array", launcher.get("kind"))
        launcher = None
    # no feature store: features_sha256 stays empty in runs.csv
    return run_folds(run_fold, splits, settings, out_dir, fold_inputs(data_dir, encoder_dir), launcher=launcher,
                     data_dir=data_dir, encoder_dir=encoder_dir, device=device, **options)


# ------------------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="prepared dataset folder (from `daamflow prepare`)")
    p.add_argument("--encoder", required=True, type=Path, help="encoder folder (from `daamflow encoder`)")
    p.add_argument("--out", required=True, type=Path, help="run directory: <out>/<fold>/… and <out>/runs.csv")
    p.add_argument("--settings", required=True,
                   help="JSON (inline or a file) from daamflow.run.lora_settings.finetune_settings: method, protocol, "
                        "seed, evaluation, hyper, finetune")
    add_fold_arguments(p)
    add_launcher_argument(p)


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    settings = read_settings(args.settings)
    if "finetune" not in settings:
        raise SystemExit("--settings: no 'finetune' block; make the settings with "
                         "daamflow.run.lora_settings.finetune_settings")
    frame = finetune_all(args.data, args.encoder, settings, args.out, args.device, **fold_options(args))
    log.info("%s/%s/%s: accuracy %s", settings["dataset"], settings["protocol"],
             settings.get("label", settings["method"]), ", ".join(f"{a:.3f}" for a in frame["accuracy"]))
    return 0

