"""IEMOCAP (4 emotions, 5 sessions) from the user's licensed ``IEMOCAP_full_release`` folder; never downloaded.

Labels come from ``Session*/dialog/EmoEvaluation/*.txt`` (the lines starting with ``[``: time span, utterance,
consensus label, dimensional scores), audio from ``Session*/sentences/wav/<dialog>/<utterance>.wav``. ``exc``
(excited) is merged into ``hap``; every other label (``fru``, ``sur``, ``xxx``, ...) is dropped. The group of a
sample is its session, so five folds are leave-one-session-out (fold k = Session k).

The audio is not copied: each manifest row points at the source wav with a ``start``/``end`` sample span (at the
file's own rate; the embed step resamples to the encoder's rate when they differ). Segmentations:

- ``paper`` (the released code): every utterance is cut into consecutive 5 s chunks, each a sample with the
  utterance's label, zero-padded to 80,000 samples (5 s at 16 kHz; ``pad_to``) and pooled over all frames;
- ``utterance`` (the SUPERB convention): one sample per utterance, pooled over its valid frames only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.io import wavfile

URL = "https://sail.usc.edu/iemocap/"
SAMPLE_RATE = 16_000
CHUNK_SECONDS = 5.0
PAD_SAMPLES = 80_000  # 5 s at 16 kHz, as the released preprocess_features.py
# label ids as the released code: {'sadness': 0, 'neutral': 1, 'happiness_excited': 2, 'angry': 3}
CLASSES = ["sadness", "neutral", "happiness", "anger"]
EMOTIONS = {"sad": 0, "neu": 1, "hap": 2, "exc": 2, "ang": 3}
SEGMENTATIONS = ("paper", "utterance")
OPTIONS = {
    "root": None,  # path to IEMOCAP_full_release (required)
    "segmentation": "paper",
    "sessions": [1, 2, 3, 4, 5],
}
LAYOUT = (
    "expected the IEMOCAP_full_release folder as distributed by USC SAIL:\n"
    "  IEMOCAP_full_release/Session1 .. Session5/\n"
    "    dialog/EmoEvaluation/<dialog>.txt     label lines such as\n"
    "        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]\n"
    "    sentences/wav/<dialog>/<utterance>.wav\n"
    f"IEMOCAP needs a licence: request it at {URL}, unpack the archive, and set the dataset's "
    "`options: {root: /path/to/IEMOCAP_full_release}` in the config."
)


def _layout_error(problem: str) -> FileNotFoundError:
    return FileNotFoundError(f"iemocap: {problem}\n{LAYOUT}")


def _visible(paths) -> list[Path]:
    """Sorted paths without macOS resource forks (``._name``), which some copies of IEMOCAP carry."""
    return sorted(p for p in paths if not p.name.startswith("."))


def parse_evaluation(path: Path | str) -> list[tuple[str, str, float, float]]:
    """The (utterance, label, start s, end s) lines of one EmoEvaluation file, in file order."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, 1):
            if not line.startswith("["):
                continue
            parts = line.rstrip("\r\n").split("\t")
            try:
                start, end = (float(x) for x in parts[0].strip("[] ").split(" - "))
                utterance, label = parts[1].strip(), parts[2].strip()
            except (ValueError, IndexError) as err:
                raise ValueError(f"iemocap: {path}:{number}: malformed label line {line.strip()!r} "
                                 f"(expected '[start - end]<TAB>utterance<TAB>label<TAB>[v, a, d]')") from err
            rows.append((utterance, label, start, end))
    return rows


def scan(root: Path | str, sessions: list[int]) -> pd.DataFrame:
    """Every labelled utterance of ``sessions``: utterance, emotion (raw label), session, path (absolute)."""
    if root is None:
        raise _layout_error("no root given.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _layout_error(f"root {str(root)!r} is not a folder.")
    if not sessions or any(s not in range(1, 6) for s in sessions) or len(set(sessions)) != len(sessions):
        raise ValueError(f"iemocap: sessions must be distinct numbers among 1-5, got {sessions}")
    rows = []
    for s in sessions:
        labels_dir, wav_dir = root / f"Session{s}/dialog/EmoEvaluation", root / f"Session{s}/sentences/wav"
        missing = [str(d.relative_to(root)) for d in (labels_dir, wav_dir) if not d.is_dir()]
        if missing:
            raise _layout_error(f"{root} lacks {missing}.")
        label_files = _visible(labels_dir.glob("*.txt"))
        if not label_files:
            raise _layout_error(f"{labels_dir} holds no .txt label files.")
        wavs = {p.stem: p for p in _visible(wav_dir.glob("*/*.wav"))}
        labelled = [(u, e) for f in label_files for u, e, _, _ in parse_evaluation(f)]
        if not labelled:
            raise _layout_error(f"no label lines (starting with '[') in {labels_dir}/*.txt.")
        lost = [u for u, _ in labelled if u not in wavs]
        if lost:
            raise _layout_error(f"{len(lost)} labelled utterances of Session{s} have no wav in {wav_dir}, "
                                f"e.g. {lost[:3]}.")
        rows += [(u, e, f"Session{s}", str(wavs[u].resolve())) for u, e in labelled]
    return pd.DataFrame(rows, columns=["utterance", "emotion", "session", "path"])


def _provenance(root: Path, sessions: list[int], paths: pd.Series) -> dict:
    """A digest of the label files (small) and the size of the audio (hashing ~7 GB of wav would take minutes)."""
    h = hashlib.sha256()
    for s in sessions:
        for f in _visible((root / f"Session{s}/dialog/EmoEvaluation").glob("*.txt")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    sizes = [Path(p).stat().st_size for p in paths.unique()]
    return {"root": str(root.resolve()), "label_files_sha256": h.hexdigest(), "wav_files": len(sizes),
            "wav_bytes": int(sum(sizes))}


def build(work_dir: Path, seed: int, root: str | None, segmentation: str, sessions: list[int]):
    """The manifest of the 4-class IEMOCAP subset: one row per chunk (``paper``) or per utterance (``utterance``).

    Nothing is written besides the manifest: rows reference the source wavs (``path``, ``start``, ``end``, and
    ``pad_to`` for ``paper``). ``seed`` is unused (the dataset is taken whole).
    """
    if segmentation not in SEGMENTATIONS:
        raise ValueError(f"iemocap: segmentation must be one of {SEGMENTATIONS}, got {segmentation!r}")
    utterances = scan(root, sessions)
    utterances = utterances[utterances["emotion"].isin(EMOTIONS)].reset_index(drop=True)
    if utterances.empty:
        raise _layout_error(f"no utterance of {root} carries one of the labels {sorted(EMOTIONS)}.")
    rates, lengths = [], []
    for path in utterances["path"]:
        rate, audio = wavfile.read(path, mmap=True)  # header only: the samples stay on disk
        rates.append(rate)
        lengths.append(audio.shape[0])
    utterances["rate"], utterances["samples"] = rates, lengths
    if segmentation == "paper":
        chunk = (np.round(CHUNK_SECONDS * utterances["rate"])).astype(np.int64)
        starts = [np.arange(0, n, c) for n, c in zip(utterances["samples"], chunk)]
        df = utterances.loc[np.repeat(utterances.index, [len(s) for s in starts])].reset_index(drop=True)
        df["chunk"] = np.concatenate([np.arange(len(s)) for s in starts])
        df["start"] = np.concatenate(starts)
        df["end"] = np.minimum(df["start"] + np.repeat(chunk.to_numpy(), [len(s) for s in starts]), df["samples"])
        df["pad_to"] = PAD_SAMPLES
        df["id"] = df["utterance"] + "_c" + df["chunk"].astype(str)
    else:
        df = utterances.assign(chunk=0, start=0, end=utterances["samples"], id=utterances["utterance"])
    df["label"] = df["emotion"].map(EMOTIONS).astype(np.int64)
    df["label_name"] = np.asarray(CLASSES, dtype=object)[df["label"]]
    df["group"], df["split"] = df["session"], ""
    columns = ["id", "label", "label_name", "group", "split", "path", "start", "end"]
    columns += ["pad_to"] if segmentation == "paper" else []
    df = df[columns + ["utterance", "emotion", "chunk", "rate"]]
    return df, CLASSES, {"iemocap": _provenance(Path(root).expanduser(), sessions, utterances["path"])}
