"""The embed step: one frozen-encoder pass over a prepared dataset → per-layer mean-pooled features (a store).

Pooling rule (the paper's): for every hidden-state layer, the mean over the sequence axis of the valid positions
only, so padding never changes a sample's features:
- text: tokens with attention_mask 1 (incl. special tokens such as [CLS]/[SEP] or <s>); right padding, so a
  causal decoder's valid tokens keep their positions and never see a pad;
- audio: the encoder's frames whose receptive field lies inside the clip (the frame mask the model derives from the
  sample mask, ``_get_feature_vector_attention_mask``);
- images: every token, the CLS token included (images are never padded).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np

from daamflow.encoders import load_processor, read_encoder_info
from daamflow.features import write_store
from daamflow.manifest import MANIFEST_COLUMNS, read_prepared

log = logging.getLogger(__name__)
LAYER_CHOICES = ("blocks", "all")
POOLING = {
    "text": "mean over tokens with attention_mask=1 (special tokens included), right padding",
    "audio": "mean over valid frames (model frame mask from the sample attention mask)",
    "image": "mean over all tokens (CLS + patches)",
}


def embed(data_dir: Path | str, encoder_dir: Path | str, out_dir: Path | str, batch_size: int = 16,
          layers: str = "blocks", device: str = "auto", max_length: int | None = None,
          progress: bool = True) -> Path:
    """Embed every sample of a prepared dataset with a materialised encoder and write the feature store.

    Args:
        data_dir: a folder written by ``daamflow.datasets.prepare`` (manifest.csv, meta.json, inputs).
        encoder_dir: a folder written by ``daamflow.encoders.materialise``.
        out_dir: the feature store folder (replaced atomically).
        batch_size: samples per forward pass; samples are sorted by length so padding stays small.
        layers: "blocks" keeps the transformer blocks' outputs (hidden_states[1:], the paper's choice);
            "all" also keeps the embedding output (hidden_states[0]).
        device: "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...; float32 on CPU, bfloat16 (or
            float16 where bfloat16 is unsupported) on a GPU.
        max_length: text only: truncate to this many tokens (default: the tokenizer's and model's limit).
        progress: show a tqdm bar over batches.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel

    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {layers!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    data_dir, encoder_dir, out_dir = Path(data_dir), Path(encoder_dir), Path(out_dir)
    df, meta = read_prepared(data_dir)
    info = read_encoder_info(encoder_dir)
    modality = meta["modality"]
    if info["modality"] != modality:
        raise ValueError(f"encoder {info['name']} takes {info['modality']} input but dataset {meta['source']} "
                         f"({data_dir}) is {modality}")
    if max_length is not None and modality != "text":
        raise ValueError(f"max_length applies to text only; dataset {meta['source']} is {modality}")
    dev, dtype = _resolve_device(device)
    model = AutoModel.from_pretrained(encoder_dir, dtype=dtype).to(dev).eval()
    processor = load_processor(encoder_dir, modality)
    batcher = {"text": _TextBatcher, "audio": _AudioBatcher, "image": _ImageBatcher}[modality](
        df, data_dir, model, processor, max_length)
    # longest first: an out-of-memory batch shows up at once, not at the end of a long run
    order = np.argsort(-batcher.lengths, kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    num_states = model.config.num_hidden_layers + 1
    keep = list(range(1, num_states)) if layers == "blocks" else list(range(num_states))
    shape = (len(df), len(keep), model.config.hidden_size)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.scratch-", dir=out_dir.parent) as scratch:
        # a disk-backed buffer: large datasets × large encoders need not fit in memory
        pooled = np.lib.format.open_memmap(Path(scratch) / "pooled.npy", mode="w+", dtype=np.float16, shape=shape)
        with torch.inference_mode():
            for rows in tqdm(batches, desc=f"embed {meta['source']} with {info['name']}", unit="batch",
                             disable=not progress):
                inputs, sample_mask = batcher.batch(rows)
                inputs = {k: _to(v, dev, dtype) for k, v in inputs.items()}
                hidden = model(**inputs, output_hidden_states=True).hidden_states
                if len(hidden) != num_states:
                    raise RuntimeError(f"{info['name']} returned {len(hidden)} hidden states, "
                                       f"expected num_hidden_layers + 1 = {num_states}")
                mask = batcher.token_mask(sample_mask, hidden[0]).to(dev)
                # layer by layer: stacking all states first would need (batch, layers, tokens, width) memory
                pooled[rows] = torch.stack([masked_mean(hidden[i], mask) for i in keep], 1).cpu().numpy()
        manifest = {
            "encoder": info["name"],
            "encoder_class": info["class"],
            "encoder_revision": info["revision"],
            "encoder_commit": info["commit_hash"],
            "encoder_weights_sha256": info["weights"],
            "encoder_spec": info["spec"],
            "dataset": meta["source"],
            "dataset_seed": meta["seed"],
            "modality": modality,
            "layers": layers,
            "layer_indices": keep,
            "pooling": POOLING[modality],
            "compute_dtype": str(dtype).removeprefix("torch."),
            "device": dev.type,
            "batch_size": batch_size,
            "max_length": max_length,
        }
        return write_store(out_dir, pooled, df[MANIFEST_COLUMNS], manifest)


def masked_mean(states, mask):
    """Mean of ``states`` (B, T, d) over the positions where ``mask`` (B, T) is 1, in float32 → (B, d)."""
    import torch

    weights = mask.to(states.device, dtype=torch.float32)
    total = torch.einsum("btd,bt->bd", states.float(), weights)
    return total / weights.sum(1).clamp_min(1.0)[:, None]


def _resolve_device(device: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for but CUDA is not available; use device='cpu' or 'auto'")
        return dev, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return dev, torch.float32


def _to(value, dev, dtype):
    """Move a tensor to the device; floating inputs (pixels, waveforms) take the model's dtype."""
    return value.to(dev, dtype=dtype) if value.is_floating_point() else value.to(dev)


class _TextBatcher:
    def __init__(self, df, data_dir, model, tokenizer, max_length):
        if tokenizer.pad_token is None:  # Llama-2's tokenizer has none; pads are masked out anyway
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"
        limit = getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length
        self.max_length = min(max_length or limit, limit, tokenizer.model_max_length)
        self.tokenizer, self.texts = tokenizer, df["text"].tolist()
        ids = tokenizer(self.texts, truncation=True, max_length=self.max_length)["input_ids"]
        self.lengths = np.array([len(x) for x in ids])

    def batch(self, rows):
        enc = self.tokenizer([self.texts[i] for i in rows], padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt")
        return dict(enc), enc["attention_mask"]

    def token_mask(self, sample_mask, first_state):
        return sample_mask


class _AudioBatcher:
    def __init__(self, df, data_dir, model, extractor, max_length):
        from scipy.io import wavfile

        self.model, self.extractor, self.wavfile = model, extractor, wavfile
        self.paths = [data_dir / p for p in df["path"]]
        self.lengths = np.array([self._read(p, mmap=True).shape[0] for p in self.paths])
        if not hasattr(model, "_get_feature_vector_attention_mask"):
            raise ValueError(f"{type(model).__name__} cannot map sample masks to frame masks; "
                             f"audio pooling supports wav2vec2-style encoders (WavLM, HuBERT, wav2vec 2.0)")

    def _read(self, path: Path, mmap: bool = False) -> np.ndarray:
        rate, audio = self.wavfile.read(path, mmap=mmap)
        if rate != self.extractor.sampling_rate or audio.ndim != 1:
            raise ValueError(f"{path}: {rate} Hz with shape {audio.shape}; the encoder expects mono "
                             f"{self.extractor.sampling_rate} Hz (re-run prepare)")
        return audio

    def batch(self, rows):
        waves = []
        for i in rows:
            audio = self._read(self.paths[i])
            scale = 32768.0 if audio.dtype == np.int16 else 1.0
            waves.append(audio.astype(np.float32) / scale)
        enc = self.extractor(waves, sampling_rate=self.extractor.sampling_rate, padding=True,
                             return_attention_mask=True, return_tensors="pt")
        inputs = {"input_values": enc["input_values"]}
        # models trained without a mask (e.g. wav2vec2-base) expect plain zero padding, as in their own recipe
        if self.extractor.return_attention_mask:
            inputs["attention_mask"] = enc["attention_mask"]
        return inputs, enc["attention_mask"]

    def token_mask(self, sample_mask, first_state):
        return self.model._get_feature_vector_attention_mask(first_state.shape[1], sample_mask)


class _ImageBatcher:
    def __init__(self, df, data_dir, model, processor, max_length):
        self.images = np.load(data_dir / "images.npy", mmap_mode="r")
        self.index = df["image_index"].to_numpy()
        if self.index.max() >= len(self.images):
            raise ValueError(f"{data_dir}: image_index up to {self.index.max()} but images.npy has {len(self.images)}")
        self.channels, self.processor = model.config.num_channels, processor
        self.lengths = np.zeros(len(df))  # all images have the same size

    def batch(self, rows):
        images = np.asarray(self.images[self.index[rows]])
        if images.ndim == 3:  # grayscale (n, H, W) → channels-last
            images = images[..., None]
        if images.shape[-1] == 1 and self.channels == 3:  # grayscale data, RGB encoder (e.g. BEiT-Large)
            images = np.repeat(images, 3, axis=-1)
        if images.shape[-1] != self.channels:
            raise ValueError(f"images have {images.shape[-1]} channels, the encoder expects {self.channels}")
        enc = self.processor(list(images), return_tensors="pt", input_data_format="channels_last")
        return {"pixel_values": enc["pixel_values"]}, None

    def token_mask(self, sample_mask, first_state):
        import torch

        return torch.ones(first_state.shape[:2])
