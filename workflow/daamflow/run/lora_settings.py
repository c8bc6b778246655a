"""The settings of a LoRA / LoRA+ job (docs/paper-notes.md#48-lora, docs/paper-notes.md#49-lora-plus): what
``daamflow finetune`` receives besides its paths, hashed into every run it writes.

Torch-free: the rules (the ``finetune`` rule's settings parameter) and ``daamflow config`` import it while the DAG is
built. Methods are ``lora_r<r>`` and ``loraplus_r<r>`` (``catalog.LORA_PATTERN``). The released code's bugs are
switches (``finetune.quirks``), off by default; the suffix ``@released`` (``lora_r4@released``) turns all of them on
and adds the ``finetune.released`` hyper-parameters, so the tables can show both. Quirk settings are part of the
settings hash: they are distinct runs.
"""
from __future__ import annotations

import re

from daamflow.catalog import LORA_PATTERN, RELEASED, base, variant
from daamflow.config import training_hyper

QUIRKS = ("alpha_scaling", "released_targets", "released_init", "frozen_head", "loraplus_head_outside_optimiser",
          "model_across_folds", "logits_at_padding")
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
# Any other model_type: its query and key projections (released: query and value), found by the leaf module names
# transformers gives them, one (query, key, value) set per naming: q_proj/k_proj/v_proj in ViT, DeiT, CLIP's vision
# tower, Whisper's encoder, wav2vec2, HuBERT and Llama-style decoders; query/key/value in BERT-style encoders. A model
# with neither set (GPT-2's fused c_attn, T5's q/k/v) needs finetune.targets.<model_type> (lora_model says so).
PROJECTION_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))


def parse_method(method: str) -> tuple[bool, int, bool]:
    """``"loraplus_r8@released"`` → (LoRA+?, rank, released quirks?); ValueError for anything else."""
    if not re.fullmatch(LORA_PATTERN, method):
        raise ValueError(
            f"fine-tuning method {method!r} is not lora_r<rank> or loraplus_r<rank>, optionally with '@{RELEASED}' "
            f"(e.g. lora_r4, loraplus_r8@released)"
        )
    kind, rank = base(method).split("_r")
    return kind == "loraplus", int(rank), variant(method) == RELEASED


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
    pooling = config["encoders"][ds["encoder"]].get("pooling", "mean")
    max_length = None
    if modality == "text":  # only text is cut to a length; keeping it out of other settings keeps their hash
        max_length = (released and ft["released"]["max_length"]) or ft["max_length"] or ds["embed"].get("max_length")
    settings = {
        "dataset": dataset,
        "encoder": ds["encoder"],
        "method": base(method),
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
    if pooling != "mean":
        # the head's pooling is the encoder spec's (read from the encoder folder, as the embed step reads it); in the
        # settings it retrains the folds when it changes (the encoder weights, a fold's other input, do not).
        # Absent for the mean: mean-pooled runs keep the hash they had before pooling was configurable
        settings["finetune"]["pooling"] = pooling
    if released:
        settings["label"] = method
    return settings
