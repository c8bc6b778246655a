"""Self-supervised pretraining of the tiny encoders, so that the offline demo's image and speech features mean something.

A ``tiny`` encoder spec with a ``pretrain`` block is built from its config (seeded) as before, then trained with
its own family's self-supervised objective on data disjoint from every evaluation sample it will embed, and saved
with ``save_pretrained`` like any encoder (the embed step loads it with ``from_pretrained``):

- ``beit``: BEiT's masked image modelling (``BeitForMaskedImageModeling``): a share of the patches is replaced by
  the mask token and the model predicts their "visual tokens"; the tokenizer is k-means over the pretraining
  images' patches instead of BEiT's DALL-E dVAE (``images.py``); with ``pooled_reconstruction`` > 0 a linear decoder
  also rebuilds the image from a block's mean-pooled output, so the pooled features the demo embeds carry it;
- ``wavlm``: HuBERT-style masked prediction (WavLM's own objective): frames chosen by ``mask_time_indices`` are
  replaced by the learned mask embedding and the model predicts the k-means cluster of each frame's log-mel
  spectrum and energy (``speech.py``).

Disjointness is explicit: the encoder rule hands over the prepared folders of every dataset that uses the encoder
(``exclude``), and the pretraining pool leaves out their samples (Fashion-MNIST: every image index of the sample, and
only the official training split is used; espeak: every sentence and voice of the sample), then checks it.

``encoder.json`` records under ``pretraining`` the objective, data (source, counts, digests of the excluded
manifests), seed, steps, settings, wall time and the loss curve. Everything is deterministic for a seed (one thread).

The demo's BEiT recipe was chosen with a validation probe on Fashion-MNIST images outside both the pretraining
images and the evaluation sample (``selection.py``), never with the evaluation's own probe.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

# Every key of a pretrain block, per arch, with its default (a key not listed is an error).
COMMON_DEFAULTS: dict[str, Any] = {"lr": 1.0e-3, "weight_decay": 0.05, "warmup": 0.1, "seed": None, "threads": 1,
                                   "log_every": 50}
# sized for the embedded default: about a minute each on one core of a laptop (they run side by side)
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    "beit": {"objective": "mim", "steps": 600, "batch_size": 64, "source": "fashion_mnist",
             "root": None, "visual_tokens": 64, "mask_ratio": 0.4, "pooled_reconstruction": 0.0,
             "pooled_layers": "last"},
    "wavlm": {"objective": "hubert", "steps": 300, "batch_size": 8, "source": "espeak",
              "voices": ["en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc"], "clips": 240, "max_seconds": 3.0,
              "crop_seconds": 1.5, "clusters": 50, "mask_prob": 0.08, "mask_length": 5, "unmasked_weight": 0.5,
              "wordnet_path": None},
}
# root / wordnet_path None: the evaluation dataset's own (its meta.json options), else the Debian package's
OBJECTIVES = {"beit": ("mim",), "wavlm": ("hubert",)}
# model config settings the objective needs (set unless the spec's own config says otherwise)
CONFIG_DEFAULTS = {
    # MIM needs positions: the tiny BEiT's default has neither absolute nor relative position information
    "beit": {"use_absolute_position_embeddings": True, "use_mask_token": True},
    # a conv bias (as WavLM-Large) keeps loudness visible through the conv stack's per-frame layer norm
    "wavlm": {"conv_bias": True},
}


def resolve(arch: str, block: dict | None, seed: int) -> dict:
    """The full pretrain settings of ``block`` (defaults filled in), or a ValueError naming the bad keys."""
    if arch not in ARCH_DEFAULTS:
        raise ValueError(f"pretrain: only tiny {sorted(ARCH_DEFAULTS)} encoders can be pretrained, not {arch!r}")
    if not isinstance(block, dict):
        raise ValueError(f"pretrain must be a mapping of settings, got {block!r}")
    allowed = {**COMMON_DEFAULTS, **ARCH_DEFAULTS[arch]}
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        raise ValueError(f"pretrain ({arch}): unknown keys {unknown}; accepted: {sorted(allowed)}")
    settings = {**allowed, **block}
    settings["seed"] = seed if settings["seed"] is None else settings["seed"]
    if settings["objective"] not in OBJECTIVES[arch]:
        raise ValueError(f"pretrain ({arch}): objective must be one of {OBJECTIVES[arch]}, got {settings['objective']!r}")
    for key in ("steps", "batch_size", "threads", "log_every"):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise ValueError(f"pretrain ({arch}): {key} must be an integer >= 1, got {settings[key]!r}")
    if not 0 < float(settings["lr"]) < 1 or not 0 <= float(settings["warmup"]) < 1:
        raise ValueError(f"pretrain ({arch}): lr must lie in (0, 1) and warmup in [0, 1), "
                         f"got {settings['lr']} and {settings['warmup']}")
    if arch == "beit" and (settings["pooled_layers"] not in ("last", "all")
                           or not float(settings["pooled_reconstruction"]) >= 0):
        raise ValueError(f"pretrain (beit): pooled_layers must be 'last' or 'all' and pooled_reconstruction >= 0, "
                         f"got {settings['pooled_layers']!r} and {settings['pooled_reconstruction']!r}")
    return settings


def pretrain(arch: str, model_config, settings: dict, exclude: list[Path]) -> tuple[Any, dict]:
    """Pretrain a fresh model of ``model_config``; returns (the base model, e.g. ``BeitModel``, and the record)."""
    import torch

    torch.manual_seed(settings["seed"])
    torch.set_num_threads(settings["threads"])
    if arch == "beit":
        from daamflow.data.pretrain.images import pretrain_mim as run
    else:
        from daamflow.data.pretrain.speech import pretrain_hubert as run
    started = time.perf_counter()
    model, record = run(model_config, settings, [Path(p) for p in exclude])
    record["wall_time_s"] = round(time.perf_counter() - started, 2)
    log.info("pretrained %s (%s) in %.1f s: loss %.3f -> %.3f", arch, settings["objective"], record["wall_time_s"],
             record["loss_curve"][0][1], record["loss_curve"][-1][1])
    return model, {"settings": settings, **record}


def train_loop(params, settings: dict, batches: Callable[[int], Any], step_loss: Callable[[Any], Any],
               desc: str) -> list[list[float]]:
    """AdamW, the LR warmed up linearly over the first ``warmup`` share of the steps, then cosine-annealed to 0; ``batches(step)`` makes a batch and
    ``step_loss(batch)`` its loss. Returns the loss curve: [step, mean loss of the last ``log_every`` steps]."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    steps = settings["steps"]
    opt = torch.optim.AdamW(params, lr=settings["lr"], weight_decay=settings["weight_decay"])
    warm = max(1, int(round(settings["warmup"] * steps)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm))))
    curve, window = [], []
    bar = tqdm(range(steps), desc=desc, mininterval=5.0)
    for step in bar:
        loss = step_loss(batches(step))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss {loss.item()} at step {step}; lower pretrain.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        window.append(loss.item())
        if len(window) == settings["log_every"] or step == steps - 1:
            curve.append([step + 1, round(float(np.mean(window)), 4)])
            log.info("%s: step %d/%d loss %.4f", desc, step + 1, steps, curve[-1][1])
            bar.set_postfix(loss=curve[-1][1])
            window = []
    return curve


def kmeans(points, k: int, iterations: int, generator):
    """Plain Lloyd k-means in torch (deterministic for a generator): the centroids (k × dim)."""
    import torch

    centroids = points[torch.randperm(len(points), generator=generator)[:k]].clone()
    for _ in range(iterations):
        assign = torch.cdist(points, centroids).argmin(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, points)
        counts = torch.bincount(assign, minlength=len(centroids))[:, None]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return centroids


def nearest(points, centroids, chunk: int = 65536):
    """Index of the nearest centroid of every point (chunked)."""
    import torch

    return torch.cat([torch.cdist(points[i:i + chunk], centroids).argmin(1) for i in range(0, len(points), chunk)])
