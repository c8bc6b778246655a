"""Model inputs for the embed and finetune steps: per-modality input pipelines that turn a list of manifest rows into
one padded batch, the length-sorted batch plan (embed) and length-grouped training batches (finetune).

Each pipeline exposes
- ``lengths``: one per sample, in the model's input units, known before any batch is built;
- ``collate(rows) -> (rows, model inputs, pooling mask or None)``: runs in DataLoader workers (it may be pickled to
  them), so a pipeline holds only arrays, paths and the processor, never the model, and opens files lazily;
- ``to_device(inputs, device, dtype)``: the main process's last step before the forward;
- ``mask_in_samples``: the pooling mask counts input samples that the model maps to frames (audio);
- ``worth_workers``: whether collating costs enough to run in workers (decoding audio and resizing images do;
  gathering pre-tokenised text does not, and shipping its batches between processes would cost more).

Input contracts of a prepared folder (``manifest.csv`` + files):
- text: column ``text``; tokenised once, in bulk, when the pipeline is built (a fast tokenizer over the whole
  column), so a batch is a vectorised gather of token ids with right padding;
- image: ``images.npy`` uint8, (n, H, W) grayscale or (n, H, W, C) channels last, and column ``image_index``;
  grayscale data is repeated to 3 channels for an RGB encoder; or column ``path`` (an image file of any size, read
  with Pillow and converted to the encoder's channels: ``L`` or ``RGB``); the image processor resizes in the workers
  and the batch travels as uint8, its rescale and normalisation (the processor's own factors) then run on the device;
- audio: column ``path`` (a wav file, or flac/ogg/mp3/aiff read with soundfile; relative to the prepared folder or
  absolute) with optional columns
  ``start``/``end`` (a sample span at the file's own rate, end exclusive; empty = the whole file) and ``pad_to``
  (a length at the encoder's rate: the clip is cut or zero-padded to it and pooled over the whole padded length,
  the released IEMOCAP code's convention; empty or absent = pooled over the clip's valid frames only). Files at
  another rate are resampled (polyphase) to the encoder's; multi-channel files are averaged to mono. The feature
  extractor's own input is used: raw samples (``input_values``: wav2vec2, HuBERT, WavLM) padded to the longest clip,
  or features (``input_features``: Whisper) padded as the extractor's own default says (Whisper: its fixed window).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def plan_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices of each batch: sorted by length, longest first, so a batch pads to a near-equal length.

    Longest first also makes an out-of-memory batch fail at once rather than at the end of a long run.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def grouped_batches(order: np.ndarray, lengths: np.ndarray, batch_size: int, seed: int,
                    group: int = 16) -> list[np.ndarray]:
    """Training batches of near-equal length, as Hugging Face's ``group_by_length``: the shuffled ``order`` is cut
    into mega-batches of ``group`` batches, each sorted by length and cut into batches, whose order is then shuffled
    with ``seed``. A batch pads to less; which samples meet in a batch stays random from epoch to epoch."""
    mega = group * batch_size
    batches = []
    for start in range(0, len(order), mega):
        chunk = order[start:start + mega]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in np.random.default_rng(seed).permutation(len(batches))]


def make_inputs(modality: str, df: pd.DataFrame, data_dir: Path, processor, config, max_length: int | None):
    """The input pipeline of ``modality`` for the rows of ``df`` (``config``: the encoder's model config)."""
    if modality == "text":
        return TextInputs(df, processor, config, max_length)
    if max_length is not None:
        raise ValueError(f"max_length applies to text only; this dataset is {modality}")
    if modality == "audio":
        return AudioInputs(df, data_dir, processor)
    return ImageInputs(df, data_dir, processor, config.num_channels)


class _Inputs:
    """What the pipelines share: the defaults of the flags, and moving a batch to the device."""

    mask_in_samples, worth_workers = False, True

    @staticmethod
    def to_device(inputs: dict, dev, dtype) -> dict:
        """Tensors onto the device; floating ones (waveforms, pixels) in the compute dtype."""
        return {k: v.to(dev, dtype=dtype, non_blocking=True) if v.is_floating_point() else v.to(dev, non_blocking=True)
                for k, v in inputs.items()}


class TextInputs(_Inputs):
    """Pre-tokenised text: one flat array of token ids plus offsets; batches are vectorised gathers."""

    worth_workers = False

    def __init__(self, df: pd.DataFrame, tokenizer, config, max_length: int | None):
        positions = getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length
        # an explicit max_length overrides the tokenizer's advisory model_max_length (the paper: 4096 for Llama-2),
        # but never the model's position table
        self.max_length = min(max_length, positions) if max_length else min(positions, tokenizer.model_max_length)
        ids = tokenizer(df["text"].tolist(), truncation=True, max_length=self.max_length,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        self.lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        empty = np.flatnonzero(self.lengths == 0)
        if len(empty):
            raise ValueError(f"text of id {df['id'].iloc[empty[0]]!r} tokenises to nothing: nothing to pool")
        self.flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(self.lengths.sum()))
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]])
        # Llama-2 has no pad token; any id works as filler because padded positions are masked and pooled out
        self.pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)

    def collate(self, rows: np.ndarray):
        import torch

        lengths = self.lengths[rows]
        positions = np.arange(lengths.max())
        mask = positions[None, :] < lengths[:, None]
        gather = self.offsets[rows][:, None] + np.minimum(positions[None, :], lengths[:, None] - 1)
        ids = np.where(mask, self.flat[gather], self.pad_id)
        mask = torch.from_numpy(mask.astype(np.int64))
        return rows, {"input_ids": torch.from_numpy(ids), "attention_mask": mask}, mask


def _column(df: pd.DataFrame, name: str, default: np.ndarray) -> np.ndarray:
    """An optional integer column; absent or empty cells take ``default``."""
    if name not in df.columns:
        return default
    values = pd.to_numeric(df[name], errors="raise").to_numpy(dtype=np.float64)
    return np.where(np.isnan(values), default, values).astype(np.int64)


def _soundfile(path: str):
    try:
        import soundfile
    except ImportError as err:
        raise ModuleNotFoundError(f"{path}: decoding {Path(path).suffix} audio needs the soundfile package "
                                  f"(pip install soundfile); .wav files need nothing more") from err
    return soundfile


def audio_header(path: str) -> tuple[int, int]:
    """(sample rate, frames) of an audio file, from its header: wav with scipy, other formats with soundfile."""
    if Path(path).suffix.lower() == ".wav":
        from scipy.io import wavfile

        rate, data = wavfile.read(path, mmap=True)  # header only: the samples stay on disk
        return rate, data.shape[0]
    info = _soundfile(path).info(path)
    return int(info.samplerate), int(info.frames)


def read_audio(path: str, start: int, end: int) -> np.ndarray:
    """Samples ``start:end`` of an audio file as mono float32 in [-1, 1] (channels averaged)."""
    if Path(path).suffix.lower() != ".wav":
        return _soundfile(path).read(path, start=start, stop=end, dtype="float32", always_2d=True)[0].mean(axis=1)
    from scipy.io import wavfile

    _, data = wavfile.read(path, mmap=True)
    x = np.asarray(data[start:end])
    if x.dtype == np.uint8:
        x = (x.astype(np.float32) - 128.0) / 128.0
    elif x.dtype.kind == "i":
        x = x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))
    else:
        x = x.astype(np.float32)
    return x.mean(axis=1) if x.ndim == 2 else x


def read_image(path: str, channels: int) -> np.ndarray:
    """An image file as uint8 (H, W) for a 1-channel encoder or (H, W, 3) for an RGB one (Pillow's conversion)."""
    from PIL import Image

    if channels not in (1, 3):
        raise ValueError(f"{path}: the encoder expects {channels}-channel images; image files convert to 1 or 3")
    with Image.open(path) as image:
        return np.asarray(image.convert("L" if channels == 1 else "RGB"))


class AudioInputs(_Inputs):
    """Wav segments read, resampled and normalised per batch (in the workers), through the feature extractor."""

    mask_in_samples = True

    def __init__(self, df: pd.DataFrame, data_dir: Path, extractor):
        self.extractor, self.rate = extractor, int(extractor.sampling_rate)
        self.input_name = extractor.model_input_names[0]  # input_values (raw samples) or input_features (Whisper)
        # the extractor's own default when it pads to a fixed window (Whisper), else the longest clip of the batch
        default = inspect.signature(type(extractor).__call__).parameters.get("padding")
        self.padding = "max_length" if default is not None and default.default == "max_length" else True
        self.paths = [str(Path(data_dir, p)) for p in df["path"]]  # an absolute path stays as it is
        headers = {p: audio_header(p) for p in dict.fromkeys(self.paths)}
        self.file_rate = np.array([headers[p][0] for p in self.paths], dtype=np.int64)
        file_len = np.array([headers[p][1] for p in self.paths], dtype=np.int64)
        self.start = _column(df, "start", np.zeros(len(df), dtype=np.int64))
        self.end = _column(df, "end", file_len)
        bad = np.flatnonzero((self.start < 0) | (self.end <= self.start) | (self.end > file_len))
        if len(bad):
            i = bad[0]
            raise ValueError(f"audio id {df['id'].iloc[i]!r}: span [{self.start[i]}, {self.end[i]}) does not lie "
                             f"inside {self.paths[i]} ({file_len[i]} samples)")
        self.pad_to = _column(df, "pad_to", np.zeros(len(df), dtype=np.int64))
        resampled = -(-(self.end - self.start) * self.rate // self.file_rate)  # ceil, as resample_poly's length
        self.lengths = np.where(self.pad_to > 0, self.pad_to, resampled)
        if self.input_name != "input_values" and self.pad_to.any():
            raise ValueError(f"pad_to (rows such as {df['id'].iloc[int(np.argmax(self.pad_to > 0))]!r}) needs an "
                             f"encoder that takes raw samples; this one takes {self.input_name}")
        window = getattr(extractor, "n_samples", None) if self.padding == "max_length" else None
        if window and (self.lengths > window).any():
            log.warning("%d clips are longer than the encoder's %.1f s window: only their first %.1f s are encoded",
                        int((self.lengths > window).sum()), window / self.rate, window / self.rate)

    def _read(self, i: int) -> np.ndarray:
        x = read_audio(self.paths[i], int(self.start[i]), int(self.end[i]))
        if self.file_rate[i] != self.rate:
            from scipy.signal import resample_poly

            g = math.gcd(int(self.file_rate[i]), self.rate)
            x = resample_poly(x, self.rate // g, int(self.file_rate[i]) // g).astype(np.float32)
        return x[:self.pad_to[i]] if self.pad_to[i] > 0 else x

    def collate(self, rows: np.ndarray):
        import torch

        waves = [self._read(i) for i in rows]
        enc = self.extractor(waves, sampling_rate=self.rate, padding=self.padding, return_attention_mask=True,
                             return_tensors="np")
        values, mask = enc[self.input_name].astype(np.float32), enc["attention_mask"].astype(np.int64)
        if self.pad_to[rows].any():  # raw samples only (__init__ refuses pad_to for other inputs)
            width = int(self.lengths[rows].max())
            if width > values.shape[1]:  # pad_to beyond the longest clip: zeros, as the extractor's padding_value
                extra = width - values.shape[1]
                values = np.pad(values, ((0, 0), (0, extra)), constant_values=self.extractor.padding_value)
                mask = np.pad(mask, ((0, 0), (0, extra)))
            # pad_to rows: the zero padding counts as signal (no mask), as the released code fed it
            mask |= (np.arange(width)[None, :] < self.pad_to[rows][:, None]).astype(np.int64)
        values, mask = torch.from_numpy(values), torch.from_numpy(mask)
        inputs = {self.input_name: values}
        # models trained without a mask (e.g. wav2vec2-base) expect plain zero padding, as in their own recipe
        if self.extractor.return_attention_mask:
            inputs["attention_mask"] = mask
        return rows, inputs, mask


class ImageInputs(_Inputs):
    """Images gathered from ``images.npy`` (or read from their files) and run through the encoder's image processor
    (resize, normalise)."""

    def __init__(self, df: pd.DataFrame, data_dir: Path, processor, channels: int):
        self.path, self.processor, self.channels = Path(data_dir) / "images.npy", processor, int(channels)
        self.files = [str(Path(data_dir, p)) for p in df["path"]] if "image_index" not in df.columns else None
        if self.files is None:
            self._check_array(df, data_dir)
        self.lengths = np.zeros(len(df), dtype=np.int64)  # one size: the processor resizes every image alike
        # rescale and normalise on the device: 2.3x less work per image in the workers, 4x less data to move
        names = ("do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
        self.deferred = all(hasattr(processor, name) for name in names)
        if self.deferred:
            self.scale = float(processor.rescale_factor) if processor.do_rescale else 1.0
            self.mean = np.asarray(processor.image_mean if processor.do_normalize else 0.0, dtype=np.float32)
            self.std = np.asarray(processor.image_std if processor.do_normalize else 1.0, dtype=np.float32)
        self._images = None  # opened in the process that reads (a memory map does not survive pickling cheaply)

    def _check_array(self, df: pd.DataFrame, data_dir: Path) -> None:
        self.index = df["image_index"].to_numpy()
        images = np.load(self.path, mmap_mode="r")
        if images.ndim not in (3, 4) or images.dtype != np.uint8:
            raise ValueError(f"{self.path}: {images.dtype} {images.shape}; expected uint8 (n, H, W) or (n, H, W, C)")
        stored = 1 if images.ndim == 3 else images.shape[-1]
        if stored != self.channels and not (stored == 1 and self.channels == 3):
            raise ValueError(f"{self.path} holds {stored}-channel images, the encoder expects {self.channels}")
        if self.index.max() >= len(images):
            raise ValueError(f"{data_dir}: image_index up to {self.index.max()} but images.npy has {len(images)}")

    def __getstate__(self):
        return {**self.__dict__, "_images": None}

    def collate(self, rows: np.ndarray):
        if self.files is not None:
            images = [read_image(self.files[i], self.channels) for i in rows]
            images = [x[..., None] if x.ndim == 2 else x for x in images]  # channels last
        else:
            images = self._gather(rows)
        deferred = {"do_rescale": False, "do_normalize": False} if self.deferred else {}
        enc = self.processor(list(images), return_tensors="pt", input_data_format="channels_last", **deferred)
        return rows, {"pixel_values": enc["pixel_values"]}, None

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        images = np.asarray(self._images[self.index[rows]])
        if images.ndim == 3:  # grayscale (n, H, W) → channels last
            images = images[..., None]
        if images.shape[-1] == 1 and self.channels == 3:  # grayscale data, RGB encoder
            images = np.repeat(images, 3, axis=-1)
        return images

    def to_device(self, inputs: dict, dev, dtype) -> dict:
        if not self.deferred:
            return super().to_device(inputs, dev, dtype)
        import torch

        pixels = inputs["pixel_values"].to(dev, non_blocking=True).float()
        mean = torch.as_tensor(self.mean, device=dev).reshape(-1, 1, 1)
        std = torch.as_tensor(self.std, device=dev).reshape(-1, 1, 1)
        return {"pixel_values": ((pixels * self.scale - mean) / std).to(dtype)}
