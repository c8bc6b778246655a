"""The LoRA / LoRA+ model (docs/paper-notes.md#48-lora, docs/paper-notes.md#49-lora-plus): the frozen encoder with
peft adapters on the configured target modules and a linear head on the last hidden state pooled by embed's rule (the
encoder spec's ``pooling``: the masked mean, or the last valid token), its optimiser, the weights a checkpoint keeps,
and ``LoraLearner``, the model as ``fit`` sees it.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers (weights transposed); peft adapts them too

from daamflow.data.batching import grouped_batches, make_inputs, plan_batches
from daamflow.data.embed import check_poolable, frame_mask, last_token, load_model, masked_mean
from daamflow.data.encoders import load_processor, read_encoder_info
from daamflow.run.fit import Learner
from daamflow.run.lora_settings import PROJECTION_NAMES

# What the released heads left at random initialisation, by modality (docs/paper-notes.md#48-lora):
# WavLMForSequenceClassification's 256-wide projector (its classifier trained), LlamaForSequenceClassification's whole
# `score` head, nothing for BEiT.
RELEASED_FROZEN_HEAD = {"audio": "projector", "text": "all", "image": "none"}
RELEASED_PROJECTOR = 256
HEAD_INIT_STD = 0.02  # transformers' initializer_range: how the released (HF) heads were initialised
FEATURE_CACHE_BYTES = 256 * 2**20  # a fold keeps its clips' frozen conv features up to this size (the demo: ~1 MB)


def build_model(encoder_dir: Path | str, settings: dict, num_classes: int, dev: torch.device | None = None,
                dtype: torch.dtype | None = None) -> tuple[torch.nn.ModuleDict, torch.nn.Module, list[str]]:
    """The frozen encoder with peft LoRA adapters (``model["encoder"]``) and the linear head (``model["head"]``).

    Seeded by the caller. The encoder loads as the embed step loads it (straight onto a GPU ``dev``); ``dtype`` is
    its frozen weights' dtype (default float32), the adapters and head stay float32.
    Returns (model on ``dev``, base encoder, resolved target list).
    """
    ft = settings["finetune"]
    dev = torch.device("cpu") if dev is None else dev
    base = load_model(encoder_dir, dev, dtype or torch.float32)
    # WavLM's (wav2vec2's, HuBERT's) conv feature encoder otherwise marks its input as requiring grad (for gradient
    # checkpointing), so every step back-propagated through the frozen convs on raw audio: half the step time, for no
    # gradient. HubertModel has no freeze_feature_encoder of its own: its feature extractor's switch does the same
    freeze = getattr(base, "freeze_feature_encoder", None) or getattr(
        getattr(base, "feature_extractor", None), "_freeze_parameters", None)
    if freeze is not None:
        freeze()
    rank, quirks = ft["rank"], ft["quirks"]
    targets = _targets(base, ft["targets"], quirks["released_targets"], encoder_dir)
    model_type = base.config.model_type
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


def _targets(base: torch.nn.Module, table: dict, released: bool, encoder_dir: Path | str) -> list[str]:
    """The target modules of ``base``: its model_type's entry in ``table``, else its query and key projections
    (released: query and value) by transformers' names (``lora_settings.PROJECTION_NAMES``)."""
    model_type = base.config.model_type
    if model_type in table:
        return table[model_type]
    linear = {name.rsplit(".", 1)[-1] for name, module in base.named_modules()
              if isinstance(module, (nn.Linear, Conv1D))}
    for query, key, value in PROJECTION_NAMES:
        pair = [query, value] if released else [query, key]
        if set(pair) <= linear:
            return pair
    raise ValueError(
        f"no LoRA target modules for encoder model_type {model_type!r} ({encoder_dir}): it is not in the built-in "
        f"map ({sorted(table)}) and has no linear {' / '.join('+'.join(n) for n in PROJECTION_NAMES)} projections; "
        f"set finetune.{'released_targets' if released else 'targets'}.{model_type} to some of its linear layers' "
        f"names ({sorted(linear)})"
    )


def _head(width: int, num_classes: int, modality: str, frozen_head: bool) -> torch.nn.Sequential:
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


class CachedFeatureEncoder(nn.Module):
    """A wav2vec2-family model's frozen conv feature encoder whose output for a clip is computed once per fold and
    reused by every later epoch and evaluation pass (docs/architecture.md#9-timings).

    Each clip goes through the convs on its own valid samples; the frames of the padded batch past its end are
    zeros. That changes nothing the model reads: it is only used for models given an attention mask, whose encoder
    zeroes those frames before anything else sees them, and with per-frame layer norms (``feat_extract_norm:
    layer``), so a frame depends on its receptive field alone. ``batch`` holds the next call's rows and valid samples
    (``Inputs.pooled`` sets it)."""

    def __init__(self, inner: nn.Module, output_lengths) -> None:
        super().__init__()
        self.inner, self.output_lengths = inner, output_lengths
        self.cache: dict[int, torch.Tensor] = {}
        self.batch: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        rows, valid = self.batch
        for i, row in enumerate(rows.tolist()):
            if row not in self.cache:
                with torch.no_grad():
                    self.cache[row] = self.inner(input_values[i:i + 1, :int(valid[i])])[0]
        frames = int(self.output_lengths(torch.tensor(input_values.shape[1])))
        channels = self.cache[int(rows[0])].shape[0]
        out = input_values.new_zeros((len(rows), channels, frames))
        for i, row in enumerate(rows.tolist()):
            out[i, :, :self.cache[row].shape[1]] = self.cache[row]
        return out


def cache_features(base: nn.Module, pipeline, modality: str) -> CachedFeatureEncoder | None:
    """Put a ``CachedFeatureEncoder`` in place of ``base``'s conv feature encoder when its output cannot depend on
    the batch (see there), the encoder is frozen and the fold's features fit ``FEATURE_CACHE_BYTES``; else None."""
    inner = getattr(base, "feature_extractor", None)
    lengths_of = getattr(base, "_get_feat_extract_output_lengths", None)
    if (modality != "audio" or inner is None or lengths_of is None
            or getattr(base.config, "feat_extract_norm", None) != "layer"
            or not getattr(pipeline.extractor, "return_attention_mask", False)
            or any(p.requires_grad for p in inner.parameters())):
        return None
    frames = int(lengths_of(torch.as_tensor(pipeline.lengths)).sum())
    if frames * base.config.conv_dim[-1] * 4 > FEATURE_CACHE_BYTES:
        return None
    base.feature_extractor = CachedFeatureEncoder(inner, lengths_of)
    return base.feature_extractor


class Inputs:
    """Batches of prepared samples for the model: embed's input pipelines and its pooling rule (the encoder folder's
    spec: ``pooling`` mean or last_token, checked as the embed step checks it).

    ``at_padding`` (quirks.logits_at_padding, text only): the released AG News LoRA script padded every text to
    max_length with the eos token (padding="max_length", pad = eos) and its LlamaForSequenceClassification, whose
    config has no pad_token_id, read the logits at the last position: a padding position for every text shorter than
    max_length. So the batch is right-padded to max_length (attention mask 0 there) and the head reads that position.
    """

    def __init__(self, data_dir: Path, df: pd.DataFrame, modality: str, base: torch.nn.Module, encoder_dir: Path,
                 max_length: int | None, at_padding: bool = False):
        self.base = base  # maps an audio sample mask to the encoder's frame mask
        info = read_encoder_info(encoder_dir)
        pooling = info["spec"].get("pooling", "mean")
        check_poolable(base.config, modality, pooling, info["name"])
        self.pool = masked_mean if pooling == "mean" else last_token
        self.pipeline = make_inputs(modality, df, data_dir, load_processor(encoder_dir, modality), base.config,
                                    max_length if modality == "text" else None)
        self.at_padding = at_padding
        self.features = cache_features(base, self.pipeline, modality)
        # decoders (Llama) would otherwise fill a key/value cache as large as the hidden states, for nothing
        self.options = {"use_cache": False} if "use_cache" in inspect.signature(base.forward).parameters else {}

    def feed(self, rows: np.ndarray) -> tuple[dict, torch.Tensor | None]:
        """The model inputs of ``rows`` and the pooling mask (None: the head reads the last position)."""
        _, feed, mask = self.pipeline.collate(rows)
        if not self.at_padding:
            return feed, mask
        extra = self.pipeline.max_length - feed["input_ids"].shape[1]
        return {"input_ids": F.pad(feed["input_ids"], (0, extra), value=self.pipeline.pad_id),
                "attention_mask": F.pad(feed["attention_mask"], (0, extra), value=0)}, None

    def pooled(self, model: torch.nn.ModuleDict, rows: np.ndarray, dev: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
        """Encoder → its last hidden state pooled by embed's rule (float32); at_padding: the last position, as is."""
        feed, mask = self.feed(rows)
        if self.features is not None:
            self.features.batch = (rows, mask.sum(dim=1).numpy())
        hidden = model["encoder"](**self.pipeline.to_device(feed, dev, dtype), **self.options).last_hidden_state
        if self.at_padding:
            return hidden[:, -1]
        if mask is not None:
            mask = mask.to(dev)
            if self.pipeline.mask_in_samples:  # audio: the frames whose receptive field lies inside the clip
                mask = frame_mask(self.base, mask, hidden.shape[1])
        return self.pool(hidden, mask)

    def logits(self, model: torch.nn.ModuleDict, rows: np.ndarray, dev: torch.device,
               dtype: torch.dtype) -> torch.Tensor:
        """The head on ``pooled``."""
        return model["head"](self.pooled(model, rows, dev, dtype))


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


class LoraLearner(Learner):
    """``fit``'s view of the LoRA model: a checkpoint keeps the adapters and the head, batches are grouped by length
    with ``group_by_length``, and the first epoch's probe lists the adapter tensors no backward pass reached."""

    def __init__(self, model: torch.nn.ModuleDict, inputs: Inputs, batch_size: int, dev: torch.device,
                 dtype: torch.dtype, group_by_length: bool) -> None:
        self.model, self.inputs, self.batch_size, self.dev, self.dtype = model, inputs, batch_size, dev, dtype
        self.group_by_length = group_by_length
        self.unreached = _gradient_watch(model)

    def logits(self, rows: np.ndarray) -> torch.Tensor:
        return self.inputs.logits(self.model, rows, self.dev, self.dtype)

    def predict(self, rows: np.ndarray) -> np.ndarray:
        """Predictions in the order of ``rows``; with ``group_by_length`` the passes run on batches of near-equal
        length (``plan_batches``), as training does: a batch of the given order pads every sample to its longest."""
        positions = np.arange(len(rows))
        batches = (plan_batches(self.inputs.pipeline.lengths[rows], self.batch_size) if self.group_by_length
                   else [positions[start:start + self.batch_size] for start in positions[::self.batch_size]])
        pred = np.zeros(len(rows), dtype=np.int64)
        for batch in batches:
            pred[batch] = self.logits(rows[batch]).argmax(dim=1).cpu().numpy()
        return pred

    def weights(self) -> dict:
        return adapter_state(self.model)

    def load_weights(self, state: dict) -> None:
        load_adapter_state(self.model, state)

    def batches(self, order: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
        if not self.group_by_length:
            return super().batches(order, batch_size, seed)
        return grouped_batches(order, self.inputs.pipeline.lengths, batch_size, seed)

    def after_first_epoch(self) -> list[str]:
        return self.unreached()
