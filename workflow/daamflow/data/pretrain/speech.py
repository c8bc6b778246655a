"""HuBERT-style masked prediction for the tiny WavLM on espeak-ng clips whose sentences and voices no evaluation
sample holds."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from daamflow.data.manifest import read_prepared, sha256_file
from daamflow.data.pretrain import kmeans, nearest, train_loop

log = logging.getLogger(__name__)
HOP = 320  # samples per frame of the tiny WavLM (20 ms at 16 kHz) and of the targets
# unlabelled clips: rate / pitch / amplitude drawn over the span of all four prosody classes and beyond
RANGES = {"rate": (90, 235), "pitch": (15, 85), "amplitude": (45, 200)}


def excluded_texts_voices(exclude: list[Path]) -> tuple[set[str], set[str], list[dict], str | None]:
    """Sentences and voices of the prepared ``espeak_prosody`` folders in ``exclude``, a record of each, and the
    first one's WordNet file."""
    texts, voices, record, wordnet_path = set(), set(), [], None
    for folder in exclude:
        df, meta = read_prepared(folder)
        if meta["source"] != "espeak_prosody":
            raise ValueError(f"pretrain: {folder} is a {meta['source']} dataset; a speech pretraining on espeak "
                             f"clips can only exclude espeak_prosody samples")
        texts |= set(df["text"])
        voices |= {v.split("+")[0] for v in df["voice"]}
        wordnet_path = wordnet_path or meta.get("options", {}).get("wordnet_path")
        record.append({"data": str(folder), "source": meta["source"], "samples": len(df),
                       "voices": sorted(set(df["voice"])), "manifest_sha256": sha256_file(folder / "manifest.csv")})
    return texts, voices, record, wordnet_path


def pretraining_clips(settings: dict, exclude: list[Path]) -> tuple[list[dict], dict]:
    """The clip plan (text, voice, rate, pitch, amplitude), seeded, and a data record; refuses voices of the
    evaluation sample and never draws one of its sentences."""
    from daamflow.data.datasets import espeak

    texts, eval_voices, record, eval_wordnet = excluded_texts_voices(exclude)
    wordnet_path = str(settings["wordnet_path"] or eval_wordnet or espeak.wordnet.DEFAULT_PATH)
    voices = list(settings["voices"])
    shared = sorted({v.split("+")[0] for v in voices} & eval_voices)
    if shared:
        raise ValueError(f"pretrain (wavlm): voices {shared} are evaluation voices of {[r['data'] for r in record]}; "
                         f"pick pretraining voices no evaluated dataset uses")
    # moderate-length WordNet glosses (another seed than the datasets' draw), minus every evaluation sentence
    pool = [s for s in espeak.default_sentences(wordnet_path, 5000, settings["seed"] + 1)
            if s not in texts]
    rng = np.random.default_rng(settings["seed"])
    n = settings["clips"]
    if n > len(pool):
        raise ValueError(f"pretrain (wavlm): {n} clips asked, only {len(pool)} unused sentences")
    sentences = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
    plan = [{"text": s, "voice": voices[i % len(voices)],
             **{k: int(rng.integers(lo, hi + 1)) for k, (lo, hi) in RANGES.items()}} for i, s in enumerate(sentences)]
    assert not texts.intersection(sentences)  # guaranteed above; explicit
    return plan, {"source": "espeak", "clips": n, "wordnet_path": wordnet_path, "voices": voices, "ranges": RANGES,
                  "max_seconds": settings["max_seconds"], "espeak_version": espeak.espeak_version(),
                  "sentences_sha256": _digest(sentences), "excluded": record}


def _digest(items: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def synthesise(plan: list[dict], max_seconds: float) -> list[np.ndarray]:
    """The clips as float32 in [-1, 1] (what the embed step reads), synthesised side by side."""
    from daamflow.data.datasets import espeak

    def one(job: dict) -> np.ndarray:
        audio = espeak.synthesise(job["text"], job["voice"], job["rate"], job["pitch"], job["amplitude"], max_seconds)
        return audio.astype(np.float32) / 32768.0

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(one, plan))


def frame_features(wave: np.ndarray) -> np.ndarray:
    """Per 20 ms frame: 40 log-mel energies (no per-utterance normalisation: loudness and pitch stay visible)."""
    from transformers.audio_utils import mel_filter_bank, spectrogram, window_function

    mel = mel_filter_bank(num_frequency_bins=257, num_mel_filters=40, min_frequency=50, max_frequency=8000,
                          sampling_rate=16_000, norm="slaney", mel_scale="slaney")
    if len(wave) < 400:
        wave = np.pad(wave, (0, 400 - len(wave)))
    spec = spectrogram(wave, window_function(400, "hann"), frame_length=400, hop_length=HOP, fft_length=512,
                       power=2.0, mel_filters=mel, center=False)
    return np.log(spec.T + 1e-6).astype(np.float32)


def pretrain_hubert(model_config, settings: dict, exclude: list[Path]):
    """Masked prediction of log-mel clusters: returns (``WavLMModel`` with the trained weights, record)."""
    import torch
    import transformers
    from transformers.models.wavlm.modeling_wavlm import _compute_mask_indices

    plan, data = pretraining_clips(settings, exclude)
    waves = synthesise(plan, settings["max_seconds"])
    feats = [frame_features(w) for w in waves]
    stacked = np.concatenate(feats)
    mean, std = stacked.mean(0), stacked.std(0) + 1e-6
    gen = torch.Generator().manual_seed(settings["seed"])
    points = torch.from_numpy((stacked - mean) / std)
    centroids = kmeans(points, settings["clusters"], 20, gen)
    codes = [nearest(torch.from_numpy((f - mean) / std), centroids) for f in feats]
    log.info("pretrain (wavlm): %d clips, %d frames, %d clusters", len(waves), len(stacked), settings["clusters"])

    model = transformers.WavLMModel(model_config)
    model.train()
    head = torch.nn.Linear(model_config.hidden_size, settings["clusters"])
    crop = int(round(settings["crop_seconds"] * 16_000)) // HOP * HOP
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(crop)))
    rng = np.random.default_rng(settings["seed"])
    bs, alpha = settings["batch_size"], settings["unmasked_weight"]

    def batch(step: int):
        xs, ys = [], []
        for _ in range(bs):
            i = int(rng.integers(len(waves)))
            wave = np.pad(waves[i], (0, max(0, crop - len(waves[i]))))
            start = int(rng.integers(0, (len(wave) - crop) // HOP + 1)) * HOP
            xs.append(wave[start:start + crop])
            target = torch.full((frames,), -100)
            seg = codes[i][start // HOP:start // HOP + frames]
            target[:len(seg)] = seg
            ys.append(target)
        mask = _compute_mask_indices((bs, frames), mask_prob=settings["mask_prob"],
                                     mask_length=settings["mask_length"], min_masks=1)
        return torch.from_numpy(np.stack(xs)), torch.stack(ys), torch.from_numpy(mask)

    def loss(b):
        x, y, mask = b
        hidden = model(x, mask_time_indices=mask).last_hidden_state
        ce = torch.nn.functional.cross_entropy(head(hidden).transpose(1, 2), y, ignore_index=-100, reduction="none")
        valid = y != -100
        masked = ce[mask & valid].mean()
        return masked if alpha == 0 else (1 - alpha) * masked + alpha * ce[~mask & valid].mean()

    # _compute_mask_indices draws from numpy's global generator: seed it for a deterministic run
    np.random.seed(settings["seed"])
    curve = train_loop(list(model.parameters()) + list(head.parameters()), settings, batch, loss,
                       "pretrain wavlm (masked prediction)")
    return model, {"objective": "hubert (masked prediction of k-means clusters of log-mel frames)", "data": data,
                   "frames": int(len(stacked)), "loss_curve": curve}
