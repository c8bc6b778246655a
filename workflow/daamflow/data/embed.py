"""The embed step: one frozen-encoder pass over a prepared dataset → per-layer mean-pooled features (a store).

Pooling rule (the paper's): for every hidden-state layer, the mean over the sequence axis of the valid positions
only, so padding never changes a sample's features:
- text: tokens with attention_mask 1 (incl. special tokens such as [CLS]/[SEP] or <s>); right padding, so a
  causal decoder's valid tokens keep their positions and never see a pad;
- audio: the encoder's frames whose receptive field lies inside the clip (the model's own output-length rule,
  ``_get_feat_extract_output_lengths``, applied to the valid input samples, or mel frames for Whisper); a row with
  ``pad_to`` counts its zero padding as signal;
- images: every token, the CLS token included (images are never padded).

An encoder spec may ask for ``pooling: last_token`` instead (text only; meant for decoders, whose last token has seen
the whole text): per layer, the state of the last token with attention_mask 1. An encoder-decoder model (T5, Whisper)
is embedded by its encoder. A model whose hidden states are not one (batch, positions, hidden_size) tensor per layer
(hierarchical vision models, two-tower models) is refused with the shapes it returned.

Pipeline (built for GPUs; the same code runs on a CPU): batches are formed from length-sorted samples
(``daamflow.data.batching``), decoded in DataLoader workers, and pooled on the device; only whole batches pass through
Python. Pooled float16 rows go into a preallocated ``features.npy`` memory map in a scratch folder beside the
output (``.<out>.partial``); every ``shard_rows`` rows a background thread flushes them and records the number of
batches done in ``progress.json``. An interrupted run resumes at the first unrecorded batch (if the data, encoder
and settings are unchanged: they are fingerprinted), and the finished file is linked, not copied, into the store.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from daamflow.data.batching import make_inputs, plan_batches
from daamflow.data.encoders import load_processor, read_encoder_info
from daamflow.data.features import DTYPE, FEATURES, adopt_store
from daamflow.data.manifest import MANIFEST_COLUMNS, read_prepared, sha256_file, write_json
from daamflow.device import resolve_device, resolve_dtype

log = logging.getLogger(__name__)
LAYER_CHOICES = ("blocks", "all")
PROGRESS = "progress.json"
POOLING = {
    "text": "mean over tokens with attention_mask=1 (special tokens included), right padding",
    "audio": "mean over valid frames (model frame mask from the sample attention mask; pad_to rows: all frames)",
    "image": "mean over all tokens (CLS + patches)",
}
POOLINGS = ("mean", "last_token")
LAST_TOKEN = "state of the last token with attention_mask=1 (right padding)"


def embed(data_dir: Path | str, encoder_dir: Path | str, out_dir: Path | str, batch_size: int = 16,
          layers: str = "blocks", device: str = "auto", max_length: int | None = None, dtype: str = "auto",
          num_workers: int = 0, shard_rows: int = 4096, progress: bool = True) -> Path:
    """Embed every sample of a prepared dataset with a materialised encoder and write the feature store.

    Args:
        data_dir: a folder written by ``daamflow.data.datasets.prepare`` (manifest.csv, meta.json, inputs).
        encoder_dir: a folder written by ``daamflow.data.encoders.materialise``.
        out_dir: the feature store folder (replaced atomically).
        batch_size: samples per forward pass (batches hold samples of near-equal length).
        layers: "blocks" keeps the transformer blocks' outputs (hidden_states[1:], the paper's choice);
            "all" also keeps the embedding output (hidden_states[0]).
        device: "auto" (CUDA if available), "cpu", "cuda", "cuda:1", ...
        max_length: text only: truncate to this many tokens (default: the tokenizer's and model's limit).
        dtype: compute dtype; "auto": bfloat16 on a GPU (float16 where bfloat16 is unsupported), float32 on a CPU.
        num_workers: DataLoader worker processes that read and preprocess batches (0: in this process); text is
            tokenised in bulk up front, so its batches are always built here.
        shard_rows: rows between progress records (what an interruption can cost).
        progress: show a tqdm bar over batches.
    """
    if layers not in LAYER_CHOICES:
        raise ValueError(f"layers must be one of {LAYER_CHOICES}, got {layers!r}")
    if batch_size < 1 or shard_rows < 1 or num_workers < 0:
        raise ValueError(f"batch_size and shard_rows must be >= 1 and num_workers >= 0, "
                         f"got {batch_size}, {shard_rows}, {num_workers}")
    started = time.perf_counter()
    data_dir, encoder_dir, out_dir = Path(data_dir), Path(encoder_dir), Path(out_dir)
    df, meta = read_prepared(data_dir)
    info = read_encoder_info(encoder_dir)
    modality = meta["modality"]
    if info["modality"] != modality:
        raise ValueError(f"encoder {info['name']} takes {info['modality']} input but dataset {meta['source']} "
                         f"({data_dir}) is {modality}")
    dev = resolve_device(device)
    compute_dtype = resolve_dtype(dev, dtype)

    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(encoder_dir)
    pooling = info["spec"].get("pooling", "mean")
    check_poolable(config, modality, pooling, info["name"])
    inputs = make_inputs(modality, df, data_dir, load_processor(encoder_dir, modality), config, max_length)
    batches = plan_batches(inputs.lengths, batch_size)
    num_states = config.num_hidden_layers + 1
    keep = list(range(1, num_states)) if layers == "blocks" else list(range(num_states))
    shape = (len(df), len(keep), config.hidden_size)
    settings = {
        "layers": layers, "layer_indices": keep, "compute_dtype": str(compute_dtype).removeprefix("torch."),
        "device": dev.type, "batch_size": batch_size,
        "max_length": getattr(inputs, "max_length", None),
    }
    fingerprint = {
        "shape": list(shape), "settings": settings, "encoder_weights_sha256": info["weights"],
        "data": {name: sha256_file(data_dir / name) for name in ("manifest.csv", "meta.json")},
        "pooling": pooling,
    }
    scratch = Scratch(out_dir.parent / f".{out_dir.name}.partial", shape, fingerprint)
    resumed_at = scratch.done
    if resumed_at:
        log.info("resuming %s: %d of %d batches done earlier", scratch.folder, resumed_at, len(batches))
    extract_seconds = extract_cpu_seconds = 0.0
    if resumed_at < len(batches):
        model = load_model(encoder_dir, dev, compute_dtype)
        t0, cpu0 = time.perf_counter(), time.process_time()
        _extract(model, inputs, batches, keep, pooling, dev, compute_dtype, scratch, max(1, shard_rows // batch_size),
                 num_workers, ids=df["id"].to_numpy(), desc=f"embed {meta['source']} with {info['name']}",
                 progress=progress)
        extract_seconds, extract_cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    manifest = {
        "encoder": info["name"],
        "encoder_class": info["class"],
        "encoder_revision": info["revision"],  # as asked for in the config
        "encoder_commit": info["commit_hash"],  # what it resolved to (hub encoders)
        "encoder_weights_sha256": info["weights"],
        "encoder_spec": info["spec"],
        "dataset": meta["source"],
        "dataset_seed": meta["seed"],
        "modality": modality,
        **settings,
        "pooling": POOLING[modality] if pooling == "mean" else LAST_TOKEN,
        "timing": {
            "resumed_at_batch": resumed_at, "batches": len(batches), "extract_seconds": round(extract_seconds, 3),
            "extract_cpu_seconds": round(extract_cpu_seconds, 3),  # this process (threads), not its workers
            "total_seconds": round(time.perf_counter() - started, 3),
        },
    }
    store = adopt_store(out_dir, scratch.features_path, df[MANIFEST_COLUMNS], manifest)
    shutil.rmtree(scratch.folder)
    return store


def _extract(model, inputs, batches: list[np.ndarray], keep: list[int], pooling: str, dev, compute_dtype,
             scratch: Scratch,
             shard_batches: int, num_workers: int, ids: np.ndarray, desc: str, progress: bool) -> None:
    """Run the batches from ``scratch.done`` on, pooling on the device and committing every ``shard_batches``."""
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    num_states = model.config.num_hidden_layers + 1
    pool = masked_mean if pooling == "mean" else last_token
    # decoders (Llama) would otherwise fill a key/value cache as large as the hidden states, for nothing
    options = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    first = done = scratch.done
    workers = num_workers if inputs.worth_workers else 0
    loader = DataLoader(_Batches(inputs, batches[first:]), batch_size=None, collate_fn=_identity,
                        num_workers=workers, pin_memory=dev.type == "cuda", prefetch_factor=4 if workers else None)
    pending, started = [], time.perf_counter()
    writer, written = ThreadPoolExecutor(max_workers=1), None
    try:
        with torch.inference_mode():
            for rows, feed, mask in tqdm(loader, desc=desc, unit="batch", total=len(batches), initial=done,
                                         disable=not progress):
                feed = inputs.to_device(feed, dev, compute_dtype)
                hidden = model(**feed, **options, output_hidden_states=True).hidden_states
                check_hidden(model, hidden, num_states, len(rows))
                if mask is not None:
                    mask = mask.to(dev, non_blocking=True)
                    if inputs.mask_in_samples:  # audio: input mask → the frames whose receptive field is inside
                        mask = frame_mask(model, mask, hidden[0].shape[1])
                # layer by layer: stacking all states first would need (batch, layers, tokens, width) memory
                pending.append((rows, torch.stack([pool(hidden[i], mask) for i in keep], 1).to(torch.float16)))
                done += 1
                if done % shard_batches == 0 or done == len(batches):
                    rows = np.concatenate([r for r, _ in pending])
                    values = torch.cat([v for _, v in pending]).cpu().numpy()  # the one device sync per shard
                    pending = []
                    if written is not None:
                        written.result()  # at most one shard in flight: bounded memory, errors surface here
                    written = writer.submit(scratch.commit, rows, values, done, ids)
                    log.info("%d/%d batches, %.1f samples/s", done, len(batches),
                             sum(len(b) for b in batches[first:done]) / (time.perf_counter() - started))
        if written is not None:
            written.result()
    finally:
        writer.shutdown(wait=True)


class _Batches:
    """The batches as a map-style dataset: item k is the collated batch k (built in a DataLoader worker)."""

    def __init__(self, inputs, batches: list[np.ndarray]):
        self.inputs, self.batches = inputs, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, k: int):
        return self.inputs.collate(self.batches[k])


def _identity(batch):
    return batch


class Scratch:
    """A partial extraction: a preallocated float16 ``features.npy`` (manifest row order) and ``progress.json``.

    ``progress.json`` holds the fingerprint of the extraction and ``done``, the number of batches whose rows are
    flushed to disk. A folder with another fingerprint (data, encoder or settings changed) is started afresh.
    """

    def __init__(self, folder: Path, shape: tuple[int, int, int], fingerprint: dict):
        self.folder, self.features_path = Path(folder), Path(folder) / FEATURES
        self.fingerprint = json.loads(json.dumps(fingerprint))  # as it reads back from JSON
        try:
            state = json.loads((self.folder / PROGRESS).read_text())
            if state["fingerprint"] != self.fingerprint:
                raise ValueError("the data, encoder or settings changed")
            self.features = np.load(self.features_path, mmap_mode="r+")
            if self.features.shape != shape:
                raise ValueError(f"features.npy has shape {self.features.shape}, expected {shape}")
            self.done = int(state["done"])
        except (OSError, ValueError, KeyError) as err:
            if self.folder.exists():
                log.info("starting %s afresh: %s", self.folder, err)
                shutil.rmtree(self.folder)
            self.folder.mkdir(parents=True)
            self.features = np.lib.format.open_memmap(self.features_path, mode="w+", dtype=DTYPE, shape=shape)
            self.done = 0
            self._record()

    def _record(self) -> None:
        write_json(self.folder / PROGRESS, {"fingerprint": self.fingerprint, "done": self.done})

    def commit(self, rows: np.ndarray, values: np.ndarray, done: int, ids: np.ndarray | None = None) -> None:
        """Write ``values`` (float16) to ``rows``, flush, then record ``done`` batches."""
        finite = np.isfinite(values).all(axis=(1, 2))
        if not finite.all():
            row = int(rows[np.argmin(finite)])
            name = str(ids[row]) if ids is not None else row
            raise ValueError(f"features of sample {name!r} hold NaN, inf or values beyond the float16 range "
                             f"(|x| > 65504)")
        order = np.argsort(rows)
        self.features[rows[order]] = values[order]
        self.features.flush()
        self.done = done
        self._record()


def load_model(encoder_dir: Path | str, dev, compute_dtype):
    """The encoder in eval mode on ``dev``, in ``compute_dtype``; weights load straight onto the device (a 26 GB
    Llama-2-13B never passes through host memory as a whole)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(encoder_dir, dtype=compute_dtype, device_map=dev).eval()
    return model.get_encoder() if model.config.is_encoder_decoder else model


def check_poolable(config, modality: str, pooling: str, name: str) -> None:
    """Refuse, before any forward pass, an encoder whose config gives no per-layer width, or a pooling that does
    not apply to the modality."""
    if pooling not in POOLINGS:
        raise ValueError(f"encoder {name}: pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "last_token" and modality != "text":
        raise ValueError(f"encoder {name}: pooling last_token applies to text only; this dataset is {modality}")
    missing = [key for key in ("num_hidden_layers", "hidden_size") if not isinstance(getattr(config, key, None), int)]
    if missing:
        raise ValueError(
            f"encoder {name} ({type(config).__name__}) cannot be pooled per layer: its config has no {missing}. "
            f"A multi-tower model (e.g. CLIP) must be saved as the one tower to embed with (CLIPVisionModel)")


def check_hidden(model, hidden, num_states: int, batch: int) -> None:
    """Every hidden state must be one (batch, positions, hidden_size) tensor, one per layer plus the embeddings."""
    name = type(model).__name__
    if hidden is None or len(hidden) != num_states:
        raise RuntimeError(f"{name} returned {0 if hidden is None else len(hidden)} hidden states, expected "
                           f"num_hidden_layers + 1 = {num_states}")
    width = model.config.hidden_size
    shapes = [tuple(h.shape) for h in hidden]
    if any(len(s) != 3 or s[0] != batch or s[2] != width for s in shapes):
        raise ValueError(f"{name} cannot be pooled per layer: its hidden states have shapes {shapes}, expected "
                         f"(batch, positions, hidden_size={width}) for every layer")


def frame_mask(model, mask, frames: int):
    """The encoder frames of an audio model whose input span lies inside the clip: the model's own output-length
    rule (``_get_feat_extract_output_lengths``) applied to the valid input samples or feature frames of ``mask``."""
    import torch

    lengths = getattr(model, "_get_feat_extract_output_lengths", None)
    if lengths is None:
        raise ValueError(f"{type(model).__name__} gives no rule from input length to frames "
                         f"(_get_feat_extract_output_lengths): its padded frames cannot be told from the clip's")
    valid = lengths(mask.sum(-1)).to(torch.long)
    return torch.arange(frames, device=mask.device)[None, :] < valid[:, None]


def masked_mean(states, mask):
    """Mean of ``states`` (B, T, d) over the positions where ``mask`` (B, T) is 1 (all if None) → float32 (B, d)."""
    import torch

    if mask is None:
        return states.float().mean(1)
    weights = mask.to(states.device, dtype=torch.float32)
    total = torch.einsum("btd,bt->bd", states.float(), weights)
    return total / weights.sum(1).clamp_min(1.0)[:, None]


def last_token(states, mask):
    """The state at the last position where ``mask`` (B, T) is 1 (right padding; the last one if None) → float32."""
    import torch

    if mask is None:
        return states[:, -1].float()
    last = mask.to(states.device, dtype=torch.long).sum(1) - 1
    return states[torch.arange(states.shape[0], device=states.device), last].float()
