"""Tiny stand-ins for the paper's datasets, in their real on-disk formats (the adapters read them unchanged)."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from scipy.io import wavfile

# (utterance suffix, label, seconds): exc merges into hap; fru and xxx are dropped
UTTERANCES = [("F000", "neu", 0.5), ("F001", "exc", 0.4), ("M000", "fru", 0.3), ("M001", "xxx", 0.3),
              ("F002", "ang", 0.3), ("M002", "sad", 0.35)]
LONG = ("F003", "hap", 5.5)  # Session 1 only: two chunks, 5 s + 0.5 s


def _tone(seconds: float, rate: int, seed: int) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    wave = 6000 * np.sin(2 * np.pi * (150 + 40 * seed) * t) + 800 * rng.standard_normal(len(t))
    return wave.astype(np.int16)


def make_iemocap(root: Path, sessions=(1, 2, 3, 4, 5), rate: int = 16_000) -> Path:
    """An ``IEMOCAP_full_release`` tree: per session one dialog, EmoEvaluation file in the real line format, wavs.

    Carries what real copies carry besides the labels: header and evaluator lines, a ``Categorical`` subfolder and
    macOS ``._`` resource forks, all of which the adapter must ignore.
    """
    for s in sessions:
        dialog = f"Ses0{s}F_impro01"
        labels = root / f"Session{s}/dialog/EmoEvaluation"
        wav_dir = root / f"Session{s}/sentences/wav/{dialog}"
        (labels / "Categorical").mkdir(parents=True)
        wav_dir.mkdir(parents=True)
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        clock = 6.2901
        for k, (suffix, label, seconds) in enumerate(UTTERANCES + ([LONG] if s == 1 else [])):
            utterance = f"{dialog}_{suffix}"
            lines += [f"[{clock:.4f} - {clock + seconds:.4f}]\t{utterance}\t{label}\t[2.5000, 2.5000, 2.5000]",
                      "C-E2:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  3;\t()", ""]
            clock += seconds + 1
            wavfile.write(wav_dir / f"{utterance}.wav", rate, _tone(seconds, rate, seed=10 * s + k))
        (labels / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
        (labels / f"._{dialog}.txt").write_bytes(b"\x00\x05\x16\x07 resource fork")
        (labels / "Categorical" / f"{dialog}_e1_cat.txt").write_text(f"{dialog}_F000 :Neutral state; ()\n")
        (wav_dir / f"._{dialog}_F000.wav").write_bytes(b"\x00\x05\x16\x07")
    return root


def make_cifar100(path: Path, per_class: dict[str, int] | None = None, classes=(3, 17, 42)) -> dict:
    """A ``cifar-100-python.tar.gz`` with the real members and pickle keys; pixel (r, g, b) = (label, i, 200)."""
    per_class = per_class or {"train": 3, "test": 2}
    made = {}
    members = {"meta": {b"fine_label_names": [f"class{c:02d}".encode() for c in range(100)],
                        b"coarse_label_names": [f"super{c:02d}".encode() for c in range(20)]}}
    for split, count in per_class.items():
        labels = [c for c in classes for _ in range(count)]
        data = np.zeros((len(labels), 3, 32, 32), dtype=np.uint8)
        data[:, 0] = np.array(labels, dtype=np.uint8)[:, None, None]
        data[:, 1] = np.arange(len(labels), dtype=np.uint8)[:, None, None]
        data[:, 2] = 200
        data[:, 2, 0, 1] = 7  # one marked pixel: row 0, column 1 of the blue plane
        members[split] = {b"batch_label": f"{split} batch".encode(), b"fine_labels": labels,
                          b"coarse_labels": [c // 5 for c in labels], b"data": data.reshape(len(labels), -1),
                          b"filenames": [f"img_{split}_{i}.png".encode() for i in range(len(labels))]}
        made[split] = labels
    with tarfile.open(path, "w:gz") as tar:
        for name, obj in members.items():
            raw = pickle.dumps(obj, protocol=2)  # the original archive was written by Python 2 (protocol 2)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return made


AGNEWS_ROWS = {
    "train": [
        (3, "Wall St. Bears Claw Back Into the Black (Reuters)",
         "Reuters - Short-sellers, Wall Street's dwindling\\band of ultra-cynics, are seeing green again."),
        (1, "Iraq \"vote\" delayed", "Officials said, on Monday, that the vote would wait."),
        (2, "Phelps wins", "Michael Phelps won his sixth gold."),
        (4, "New chip", "A faster chip, \"quietly\" announced."),
        (3, "Oil prices", "Crude rose."),
        (1, "Summit", "Leaders met."),
        (2, "Cup final", "A late goal."),
        (4, "Space probe", "It reached orbit."),
    ],
    "test": [(1, "A", "world news"), (2, "B", "sports news"), (3, "C", "business news"), (4, "D", "tech news")],
}


def make_agnews(folder: Path) -> dict[str, Path]:
    """``train.csv`` / ``test.csv`` as the official files: no header, every field quoted, quotes doubled."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, rows in AGNEWS_ROWS.items():
        quote = lambda v: '"' + str(v).replace('"', '""') + '"'  # noqa: E731
        paths[split] = folder / f"{split}.csv"
        paths[split].write_text("".join(",".join(map(quote, row)) + "\n" for row in rows))
    return paths
