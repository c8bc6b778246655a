"""LoRA / LoRA+ baselines: peft adapters on the encoder itself and a pooled linear head (docs/paper-notes.md#48-lora, docs/paper-notes.md#49-lora-plus).

One call fine-tunes every fold/seed of one (dataset, encoder, protocol, method) from the *prepared data* (not the
feature cache), with the heads' folds (``folds.make_splits`` over the manifest's label/group/split), protocols and run
contract (``train.py``): ``<out>/<fold>/metrics.json`` (train.py's keys and a few more), ``history.csv``,
``predictions.csv``, ``checkpoint.pt`` (adapters + head + optimiser, written after every epoch; a restart resumes at
the next epoch and ends with the uninterrupted numbers), ``model.pt`` (the selected adapter and head weights only) and
``<out>/runs.csv`` (``train.run_row``), so the runs land in every table.

Methods: ``lora_r<r>`` and ``loraplus_r<r>`` (LoRA+ through ``peft.optimizers.create_loraplus_optimizer``). The model
is the frozen encoder with adapters on the configured target modules and a linear head on the masked mean of the last
hidden state (the pooling rule of ``daamflow.data.embed``). The released code's bugs are switches (``finetune.quirks``),
off by default; the suffix ``@released`` (``lora_r4@released``) turns all of them on and adds the ``finetune.released``
hyper-parameters, so the tables can show both. Quirk settings are part of the settings hash: they are distinct runs.

This module is imported when Snakemake parses the rules (``finetune_settings``, ``METHOD_PATTERN``), so torch, peft
and transformers are imported inside the functions that need them.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from daamflow.config import read_settings, training_hyper

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from daamflow.data.folds import Split

log = logging.getLogger(__name__)

METHOD_PATTERN = r"(lora|loraplus)_r[1-9][0-9]*(@released)?"  # the Snakemake wildcard constraint of rule finetune
RELEASED = "released"
QUIRKS = ("alpha_scaling", "released_targets", "released_init", "frozen_head", "loraplus_head_outside_optimiser",
          "model_across_folds", "logits_at_padding")
FINAL = "final.pt"  # a fold's adapter and head weights after its last epoch (quirks.model_across_folds)
# Adapted modules per encoder model_type. The paper fine-tunes "the query and key projections". WavLM's attention
# passes its q/k/v/out projection weights straight to F.multi_head_attention_forward, so adapters there would never
# receive a gradient: its feed-forward layers are adapted instead. BEiT's projections are query/key/value in
# transformers 4 and q_proj/k_proj/v_proj in 5: both names are listed, the model has one set.
DEFAULT_TARGETS = {
    "wavlm": ["feed_forward.intermediate_dense", "feed_forward.output_dense"],
    "beit": ["q_proj", "k_proj", "query", "key"],
    "llama": ["q_proj", "k_proj"],
    "bert": ["query", "key"],
}
# The released scripts' targets: query and value (on WavLM these are inert, as its hooks were).
RELEASED_TARGETS = {
    "wavlm": ["q_proj", "v_proj"],
    "beit": ["q_proj", "v_proj", "query", "value"],
    "llama": ["q_proj", "v_proj"],
    "bert": ["query", "value"],
}
# What the released heads left at random initialisation, by modality (docs/paper-notes.md#48-lora): WavLMForSequenceClassification's
# 256-wide projector (its classifier trained), LlamaForSequenceClassification's whole `score` head, nothing for BEiT.
RELEASED_FROZEN_HEAD = {"audio": "projector", "text": "all", "image": "none"}
RELEASED_PROJECTOR = 256
HEAD_INIT_STD = 0.02  # transformers' initializer_range: how the released (HF) heads were initialised
DATA_MANIFEST = "data/manifest.csv"  # the prepared data's key among a fold's inputs


def parse_method(method: str) -> tuple[bool, int, bool]:
    """``"loraplus_r8@released"`` → (LoRA+?, rank, released quirks?); ValueError for anything else."""
    if not re.fullmatch(METHOD_PATTERN, method):
        raise ValueError(
            f"fine-tuning method {method!r} is not lora_r<rank> or loraplus_r<rank>, optionally with '@{RELEASED}' "
            f"(e.g. lora_r4, loraplus_r8@released)"
        )
    base, _, suffix = method.partition("@")
    kind, rank = base.split("_r")
    return kind == "loraplus", int(rank), suffix == RELEASED


def finetune_settings(config: dict, dataset: str, method: str, protocol: str) -> dict:
    """Everything one `daamflow finetune` job needs besides its paths; hashed into every run it writes.

    Hyper-parameters: the dataset's head settings (``config.training_hyper``) < ``finetune.training`` (defaults, then
    the dataset's modality) < for ``@released`` runs ``finetune.released.training``. ``method`` is the base name;
    ``label`` (``lora_r4@released``, the name in runs.csv) is present only for ``@released`` runs.
    """
    plus, rank, released = parse_method(method)
    ds, ft = config["datasets"][dataset], config["finetune"]
    modality = ds["modality"]
    hyper = training_hyper(config, dataset)
    blocks = [ft["training"]] + ([ft["released"]["training"]] if released else [])
    for block in blocks:
        hyper.update(block.get("defaults", {}))
        hyper.update(block.get("by_modality", {}).get(modality, {}))
    quirks = dict.fromkeys(QUIRKS, True) if released else {q: bool(ft["quirks"][q]) for q in QUIRKS}
    if not plus:  # no LoRA+ optimiser, nothing to leave out of it: keep the hash of equivalent runs equal
        quirks["loraplus_head_outside_optimiser"] = False
    if ds["evaluation"]["scheme"] != "kfold":  # the released fold loop; seeded runs of one split have no such loop
        quirks["model_across_folds"] = False
    if modality != "text":  # a padding position to read exists only in the padded token sequences
        quirks["logits_at_padding"] = False
    if quirks["released_targets"]:
        targets = {**RELEASED_TARGETS, **ft["released_targets"]}
    else:
        targets = {**DEFAULT_TARGETS, **ft["targets"]}
    max_length = None
    if modality == "text":  # only text is cut to a length; keeping it out of other settings keeps their hash
        max_length = (released and ft["released"]["max_length"]) or ft["max_length"] or ds["embed"].get("max_length")
    settings = {
        "dataset": dataset,
        "encoder": ds["encoder"],
        "method": method.partition("@")[0],
        "protocol": protocol,
        "seed": config["seed"],
        "evaluation": ds["evaluation"],
        "hyper": hyper,
        "finetune": {
            "modality": modality,
            "rank": rank,
            "alpha": ft["alpha"],
            "dropout": ft["dropout"],
            "loraplus_lr_ratio": ft["loraplus_lr_ratio"] if plus else None,
            "targets": targets,
            "max_length": max_length,
            "group_by_length": ft["group_by_length"],
            "quirks": quirks,
        },
    }
    if released:
        settings["label"] = method
    return settings


# ----------------------------------------------------------------------------------------------------------- model
def build_model(encoder_dir: Path | str, settings: dict, num_classes: int, dev: torch.device | None = None,
                dtype: torch.dtype | None = None) -> tuple[torch.nn.ModuleDict, torch.nn.Module, list[str]]:
    """The frozen encoder with peft LoRA adapters (``model["encoder"]``) and the linear head (``model["head"]``).

    Seeded by the caller. The encoder loads as the embed step loads it (straight onto a GPU ``dev``); ``dtype`` is
    its frozen weights' dtype (default float32), the adapters and head stay float32.
    Returns (model on ``dev``, base encoder, resolved target list).
    """
    import torch
    from peft import LoraConfig, get_peft_model

    from daamflow.data.embed import load_model

    ft = settings["finetune"]
    dev = torch.device("cpu") if dev is None else dev
    base = load_model(encoder_dir, dev, dtype or torch.float32)
    if hasattr(base, "freeze_feature_encoder"):
        # WavLM's conv feature encoder otherwise marks its input as requiring grad (for gradient checkpointing), so
        # every step back-propagated through the frozen convs on raw audio: half the step time, for no gradient
        base.freeze_feature_encoder()
    model_type = base.config.model_type
    if model_type not in ft["targets"]:
        raise ValueError(
            f"no LoRA target modules for encoder model_type {model_type!r} ({encoder_dir}); set "
            f"finetune.{'released_targets' if ft['quirks']['released_targets'] else 'targets'}.{model_type} "
            f"(known: {sorted(ft['targets'])})"
        )
    targets = ft["targets"][model_type]
    rank, quirks = ft["rank"], ft["quirks"]
    lora = LoraConfig(
        r=rank,
        # peft scales the update by lora_alpha / r; the released code scaled it by α
        lora_alpha=ft["alpha"] * rank if quirks["alpha_scaling"] else ft["alpha"],
        target_modules=targets,
        lora_dropout=ft["dropout"],
        bias="none",
    )
    try:
        encoder = get_peft_model(base, lora)  # freezes every encoder weight
    except ValueError as err:
        raise ValueError(f"LoRA targets {targets} for {model_type} ({encoder_dir}): {err}") from err
    if quirks["released_init"]:  # the released LoRALayer: A ~ N(0, 1)/sqrt(r), B = 0 (peft's B is 0 already)
        for name, param in encoder.named_parameters():
            if "lora_A" in name:
                torch.nn.init.normal_(param, std=rank ** -0.5)
    head = _head(base.config.hidden_size, num_classes, ft["modality"], quirks["frozen_head"])
    return torch.nn.ModuleDict({"encoder": encoder, "head": head}).to(dev), base, targets


def _head(width: int, num_classes: int, modality: str, frozen_head: bool) -> torch.nn.Sequential:
    import torch.nn as nn

    frozen = RELEASED_FROZEN_HEAD[modality] if frozen_head else "none"
    if frozen == "projector":  # pooled → projector (frozen) → classifier; HF projects before pooling, the same map
        head = nn.Sequential(nn.Linear(width, RELEASED_PROJECTOR), nn.Linear(RELEASED_PROJECTOR, num_classes))
    else:
        head = nn.Sequential(nn.Linear(width, num_classes))
    for layer in head:
        nn.init.normal_(layer.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(layer.bias)
    if frozen == "projector":
        head[0].requires_grad_(False)
    elif frozen == "all":
        head.requires_grad_(False)
    return head


def make_optimiser(model: torch.nn.ModuleDict, settings: dict) -> torch.optim.Optimizer:
    """AdamW over the trainable adapters and head; LoRA+: peft's optimiser (η for A, λη for B and 1-d params)."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    hp, ft = settings["hyper"], settings["finetune"]
    if ft["loraplus_lr_ratio"] is None:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    # the released LoRA+ scripts built their parameter groups from the adapters only: the head never trained
    scope = model["encoder"] if ft["quirks"]["loraplus_head_outside_optimiser"] else model
    if scope is model["encoder"]:
        model["head"].requires_grad_(False)  # the same outcome without computing gradients nobody applies
    return create_loraplus_optimizer(
        scope, torch.optim.AdamW, lr=hp["lr"], loraplus_lr_ratio=ft["loraplus_lr_ratio"],
        loraplus_weight_decay=hp["weight_decay"],
    )


def optimised(optimiser: torch.optim.Optimizer) -> set[int]:
    """ids of the parameters the optimiser updates."""
    return {id(p) for group in optimiser.param_groups for p in group["params"]}


def parameter_counts(model: torch.nn.ModuleDict, optimiser: torch.optim.Optimizer) -> dict:
    """Trained parameters (those the optimiser updates): adapters + head, and their parts; the frozen encoder size."""
    ids = optimised(optimiser)
    adapters = [p for n, p in model["encoder"].named_parameters() if "lora_" in n]
    trained_adapters = sum(p.numel() for p in adapters if id(p) in ids)
    trained_head = sum(p.numel() for p in model["head"].parameters() if id(p) in ids)
    return {
        "params": trained_adapters + trained_head,
        "params_without_classifier": trained_adapters,
        "adapter_params": sum(p.numel() for p in adapters),
        "head_params": sum(p.numel() for p in model["head"].parameters()),
        "head_trained_params": trained_head,
        "encoder_params": sum(p.numel() for n, p in model["encoder"].named_parameters() if "lora_" not in n),
    }


def adapter_state(model: torch.nn.ModuleDict) -> dict:
    """The weights that are not the frozen encoder's: every adapter tensor and the whole head (CPU copies)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if "lora_" in k or k.startswith("head.")}


def load_adapter_state(model: torch.nn.ModuleDict, state: dict) -> None:
    """Put ``adapter_state`` weights back; every adapter and head tensor must be in ``state``."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    absent = [k for k in missing if "lora_" in k or k.startswith("head.")]
    if unexpected or absent:
        raise RuntimeError(f"adapter state does not fit the model: unexpected {unexpected[:5]}, missing {absent[:5]}")


class Inputs:
    """Batches of prepared samples for the model: embed's input pipelines and its pooling rule.

    ``at_padding`` (quirks.logits_at_padding, text only): the released AG News LoRA script padded every text to
    max_length with the eos token (padding="max_length", pad = eos) and its LlamaForSequenceClassification, whose
    config has no pad_token_id, read the logits at the last position: a padding position for every text shorter than
    max_length. So the batch is right-padded to max_length (attention mask 0 there) and the head reads that position.
    """

    def __init__(self, data_dir: Path, df: pd.DataFrame, modality: str, base: torch.nn.Module, encoder_dir: Path,
                 max_length: int | None, at_padding: bool = False):
        from daamflow.data.batching import make_inputs
        from daamflow.data.encoders import load_processor

        self.base = base  # maps an audio sample mask to the encoder's frame mask
        self.pipeline = make_inputs(modality, df, data_dir, load_processor(encoder_dir, modality), base.config,
                                    max_length if modality == "text" else None)
        self.at_padding = at_padding

    def feed(self, rows: np.ndarray) -> tuple[dict, torch.Tensor | None]:
        """The model inputs of ``rows`` and the pooling mask (None: the head reads the last position)."""
        import torch.nn.functional as F

        _, feed, mask = self.pipeline.collate(rows)
        if not self.at_padding:
            return feed, mask
        extra = self.pipeline.max_length - feed["input_ids"].shape[1]
        return {"input_ids": F.pad(feed["input_ids"], (0, extra), value=self.pipeline.pad_id),
                "attention_mask": F.pad(feed["attention_mask"], (0, extra), value=0)}, None

    def logits(self, model: torch.nn.ModuleDict, rows: np.ndarray, dev: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
        """Encoder → masked mean of the last hidden state (embed's rule) → head; at_padding: the last position."""
        from daamflow.data.embed import masked_mean

        feed, mask = self.feed(rows)
        hidden = model["encoder"](**self.pipeline.to_device(feed, dev, dtype)).last_hidden_state
        if self.at_padding:
            return model["head"](hidden[:, -1])
        if mask is not None:
            mask = mask.to(dev)
            if self.pipeline.mask_in_samples:  # audio: the frames whose receptive field lies inside the clip
                mask = self.base._get_feature_vector_attention_mask(hidden.shape[1], mask)
        return model["head"](masked_mean(hidden, mask))


# -------------------------------------------------------------------------------------------------------- training
def _predict(model: torch.nn.ModuleDict, inputs: Inputs, rows: np.ndarray, batch_size: int, dev: torch.device,
             dtype: torch.dtype) -> np.ndarray:
    """Class predictions for ``rows`` (the caller sets evaluation mode, no_grad and autocast)."""
    import torch

    preds = [inputs.logits(model, rows[start:start + batch_size], dev, dtype).argmax(dim=1).cpu()
             for start in range(0, len(rows), batch_size)]
    return torch.cat(preds).numpy() if preds else np.zeros(0, dtype=np.int64)


def _gradient_watch(model: torch.nn.ModuleDict):
    """A callable listing the trainable adapter tensors that no backward pass has reached so far.

    Watched over a whole epoch, not one step: WavLM's layer drop skips whole layers in a step. An adapter never
    reached sits on a module whose weight is read without calling it (WavLM's fused attention reads q/k/v directly).
    """
    watched = {n: p for n, p in model["encoder"].named_parameters() if "lora_" in n and p.requires_grad}
    reached: set[str] = set()
    for name, param in watched.items():
        param.register_post_accumulate_grad_hook(lambda _, name=name: reached.add(name))
    return lambda: sorted(set(watched) - reached)


def run_split(
    data_dir: Path | str,
    encoder_dir: Path | str,
    split: Split,
    settings: dict,
    out_dir: Path | str,
    device: str = "auto",
    stop_after_epoch: int | None = None,
    progress: bool = True,
    carry_from: Path | None = None,
) -> dict:
    """Fine-tune, select and test one fold/seed (a ``folds.Split``); resumable from ``out_dir/checkpoint.pt``.

    ``carry_from`` (quirks.model_across_folds): the previous fold's folder; this fold starts from its final adapter
    and head weights (``final.pt``) instead of a fresh initialisation, with a fresh optimiser.
    """
    import torch

    from daamflow.data.embed import resolve_device as embed_device
    from daamflow.data.encoders import read_encoder_info
    from daamflow.atomic import save_torch, write_json
    from daamflow.data.batching import grouped_batches
    from daamflow.run.fit import conclude, fit, refit, refits, resolve_device, use_amp
    from daamflow.data.manifest import read_prepared, sha256_file

    data_dir, encoder_dir, out_dir = Path(data_dir), Path(encoder_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hp, ft, method = settings["hyper"], settings["finetune"], settings.get("label", settings["method"])
    dev = resolve_device(device)
    dtype = embed_device(str(dev))[1] if use_amp(hp, dev) else torch.float32  # a frozen encoder can sit in bf16
    df, meta = read_prepared(data_dir)
    labels = df["label"].to_numpy()
    num_classes = len(meta["classes"])

    torch.manual_seed(split.seed)
    model, base, targets = build_model(encoder_dir, settings, num_classes, dev, dtype)
    carried = None
    if carry_from is not None:
        load_adapter_state(model, torch.load(carry_from / FINAL, map_location=dev, weights_only=True))
        carried = {"fold": carry_from.name, "sha256": sha256_file(carry_from / FINAL)}
    inputs = Inputs(data_dir, df, ft["modality"], base, encoder_dir, ft["max_length"],
                    at_padding=ft["quirks"]["logits_at_padding"])
    initial = adapter_state(model) if refits(settings) else None
    optimiser = make_optimiser(model, settings)
    digests = fold_inputs(data_dir, encoder_dir)

    def predict(rows: np.ndarray) -> np.ndarray:
        return _predict(model, inputs, rows, hp["batch_size"], dev, dtype)

    def load_weights(state: dict) -> None:
        load_adapter_state(model, state)

    def grouped(order: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
        return grouped_batches(order, inputs.pipeline.lengths, batch_size, seed)

    fitted = fit(model, optimiser, split, labels, settings, out_dir, dev,
                 logits=lambda rows: inputs.logits(model, rows, dev, dtype), predict=predict,
                 weights=lambda: adapter_state(model), load_weights=load_weights, inputs=digests,
                 after_first_epoch=_gradient_watch(model), batches=grouped if ft["group_by_length"] else None,
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
            fitted, model, lambda: make_optimiser(model, settings), initial, split, labels, settings, out_dir, dev,
            logits=lambda rows: inputs.logits(model, rows, dev, dtype), predict=predict,
            weights=lambda: adapter_state(model), load_weights=load_weights, inputs=digests,
            batches=grouped if ft["group_by_length"] else None, stop_after_epoch=stop_after_epoch, progress=progress)
    metrics = conclude(fitted, model, tested, labels, df["id"].to_numpy(), num_classes, settings, out_dir, dev,
                       predict=predict, load_weights=load_weights, inputs=digests)
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
        "versions": {**metrics["versions"], **_library_versions()},
    })
    write_json(out_dir / "metrics.json", metrics)  # last: its presence marks the fold finished
    log.info("%s %s: best epoch %d (selection accuracy %.4f), test accuracy %.4f, macro-F1 %.4f", method,
             split.name, metrics["best_epoch"], metrics["select_accuracy"], metrics["accuracy"], metrics["macro_f1"])
    return metrics


def _library_versions() -> dict:
    import peft
    import transformers

    return {"peft": peft.__version__, "transformers": transformers.__version__}


def fold_inputs(data_dir: Path, encoder_dir: Path) -> dict[str, str]:
    """A LoRA fold's inputs for ``fit.fold_identity``: the prepared data manifest's sha256 and the encoder's weight
    checksums (recorded in encoder.json when the encoder folder was built)."""
    from daamflow.data.encoders import read_encoder_info
    from daamflow.data.manifest import sha256_file

    weights = read_encoder_info(encoder_dir)["weights"]
    return {DATA_MANIFEST: sha256_file(Path(data_dir) / "manifest.csv"),
            **{f"encoder/{name}": sha for name, sha in sorted(weights.items())}}


def splits_of(data_dir: Path | str, settings: dict) -> list[Split]:
    """The folds/seeded runs of a prepared dataset: the heads' ``make_splits`` over its manifest."""
    from daamflow.data.folds import make_splits
    from daamflow.data.manifest import read_prepared

    df, _ = read_prepared(data_dir)
    return make_splits(df["label"].to_numpy(), df["group"].to_numpy(), df["split"].to_numpy(), settings["evaluation"],
                       settings["protocol"], settings["seed"], settings["hyper"]["dev_fraction"])


def run_fold(data_dir: Path | str, encoder_dir: Path | str, settings: dict, out_dir: Path | str, fold: str,
             identity: str, device: str = "auto", threads: int = 1) -> dict:
    """Run (or resume, or reuse) one fold/seed; a top-level function so that launchers can ship it to a worker.

    ``identity`` is the ``fit.fold_identity`` the caller computed; the fold holds ``<fold>/.lock`` while it runs.
    """
    import torch

    from daamflow.run.fit import finished, fold_identity, fold_lock
    from daamflow.run.train import check_identity

    torch.set_num_threads(threads)
    found = fold_identity(settings, fold_inputs(Path(data_dir), Path(encoder_dir)))
    check_identity(fold, identity, found, f"prepared data {data_dir} or encoder {encoder_dir}")
    splits = splits_of(data_dir, settings)
    split = {s.name: s for s in splits}[fold]
    fold_dir = Path(out_dir) / fold
    with fold_lock(fold_dir):
        metrics = finished(fold_dir, identity)
        if metrics is not None:
            log.info("%s: finished earlier with the same settings, data and encoder; reused", fold)
            return metrics
        carry_from = _previous_fold(splits, fold, settings, Path(out_dir), identity)
        return run_split(data_dir, encoder_dir, split, settings, fold_dir, device, progress=False,
                         carry_from=carry_from)


def _previous_fold(splits: list[Split], fold: str, settings: dict, out_dir: Path, identity: str) -> Path | None:
    """quirks.model_across_folds: the folder of the fold before ``fold``, whose final weights it starts from (the
    released IEMOCAP LoRA script built the model once, before its fold loop); None for the first fold or without it."""
    from daamflow.run.fit import finished

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


def finetune_all(
    data_dir: Path | str,
    encoder_dir: Path | str,
    settings: dict,
    out_dir: Path | str,
    device: str = "auto",
    only: list[str] | None = None,
    threads: int = 1,
    launcher: dict | None = None,
) -> pd.DataFrame:
    """Run every fold/seed (or those in ``only``) and write ``out_dir/runs.csv``; finished folds are reused.

    ``launcher`` (see daamflow.run.launch) sends the unfinished folds out as one job array; by default they run here.
    """
    from daamflow.data.encoders import read_encoder_info
    from daamflow.data.manifest import read_prepared
    from daamflow.run.train import run_folds

    data_dir, encoder_dir, out_dir = Path(data_dir), Path(encoder_dir), Path(out_dir)
    _, meta = read_prepared(data_dir)
    info = read_encoder_info(encoder_dir)
    if info["modality"] != meta["modality"] or settings["finetune"]["modality"] != meta["modality"]:
        raise ValueError(f"encoder {info['name']} takes {info['modality']} input, the settings say "
                         f"{settings['finetune']['modality']}, but dataset {meta['source']} ({data_dir}) "
                         f"is {meta['modality']}")
    splits = splits_of(data_dir, settings)
    if settings["finetune"]["quirks"]["model_across_folds"] and launcher and launcher.get("kind", "inline") != "inline":
        log.warning("finetune.quirks.model_across_folds: fold k starts from fold k-1's final weights, so the folds "
                    "run one after another in this process instead of as a %s job array", launcher.get("kind"))
        launcher = None
    # no feature store: features_sha256 stays empty in runs.csv
    return run_folds(run_fold, splits, settings, out_dir, only, threads, launcher, fold_inputs(data_dir, encoder_dir),
                     data_dir=data_dir, encoder_dir=encoder_dir, device=device)


# ------------------------------------------------------------------------------------------------------------- CLI
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, type=Path, help="prepared dataset folder (from `daamflow prepare`)")
    p.add_argument("--encoder", required=True, type=Path, help="encoder folder (from `daamflow encoder`)")
    p.add_argument("--out", required=True, type=Path, help="run directory: <out>/<fold>/… and <out>/runs.csv")
    p.add_argument("--settings", required=True,
                   help="JSON (inline or a file) from daamflow.run.finetune.finetune_settings: method, protocol, seed, "
                        "evaluation, hyper, finetune")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--folds", default=None, help="comma-separated subset of folds/runs, e.g. fold1,fold3 (default all)")
    p.add_argument("--launcher", default=None,
                   help="launcher JSON (inline or a file): {kind: inline|local|slurm, ...}; default: in this process")


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    settings = read_settings(args.settings)
    if "finetune" not in settings:
        raise SystemExit("--settings: no 'finetune' block; make the settings with daamflow.run.finetune.finetune_settings")
    only = args.folds.split(",") if args.folds else None
    launcher = read_settings(args.launcher) if args.launcher else None
    frame = finetune_all(args.data, args.encoder, settings, args.out, args.device, only, args.threads, launcher)
    log.info("%s/%s/%s: accuracy %s", settings["dataset"], settings["protocol"],
             settings.get("label", settings["method"]), ", ".join(f"{a:.3f}" for a in frame["accuracy"]))
    return 0

