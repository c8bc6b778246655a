"""Speech synthesised by espeak-ng in four prosody classes: the offline stand-in for emotion recognition (IEMOCAP).

Each class is a region of (rate, pitch, amplitude); every clip draws its settings uniformly inside its class's
ranges, so the classes overlap in voice and wording and differ only in prosody. The voice is the fold group, which
makes grouped 5-fold CV over five voices behave like IEMOCAP's leave-one-session-out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.io import wavfile

from daamflow.data.datasets import wordnet
from daamflow.data.manifest import sha256_file

SAMPLE_RATE = 16_000
ESPEAK_RATE = 22_050  # espeak-ng's fixed output rate
OPTIONS = {
    "voices": ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp"],
    "per_class_per_voice": 8,
    "sentences": None,  # None: moderate-length WordNet glosses, chosen with the seed
    "max_seconds": 3.0,
    "wordnet_path": str(wordnet.DEFAULT_PATH),
}
# (low, high) inclusive: -s words per minute, -p pitch 0-99, -a amplitude 0-200
PROSODY = {
    "neutral": {"rate": (150, 175), "pitch": (40, 55), "amplitude": (90, 110)},
    "happy": {"rate": (175, 215), "pitch": (60, 80), "amplitude": (110, 140)},
    "sad": {"rate": (95, 130), "pitch": (20, 40), "amplitude": (50, 80)},
    "angry": {"rate": (185, 230), "pitch": (45, 65), "amplitude": (160, 200)},
}
_SENTENCE_CHARS = (40, 90)


def _espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("espeak-ng is not installed or not on PATH: apt-get install espeak-ng")
    return exe


def espeak_version() -> str:
    """``espeak-ng --version`` without the data path (the synthesis is deterministic for one version)."""
    out = subprocess.run([_espeak(), "--version"], capture_output=True, text=True, check=True).stdout
    return out.split("Data at:")[0].strip()


def available_voices() -> set[str]:
    """Voice names espeak-ng accepts with ``-v``: languages, voice names and voice files of ``--voices``."""
    out = subprocess.run([_espeak(), "--voices"], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 5:
            names.update({cols[1], cols[3], cols[4]})
    return names


def default_sentences(wordnet_path: Path | str, count: int, seed: int) -> list[str]:
    """``count`` WordNet definitions (gloss before the first ';') of 40-90 characters, chosen with ``seed``."""
    glosses = wordnet.read_glosses(wordnet_path)["gloss"].str.split(";").str[0].str.strip()
    lengths = glosses.str.len()
    pool = glosses[(lengths >= _SENTENCE_CHARS[0]) & (lengths <= _SENTENCE_CHARS[1]) & ~glosses.str.startswith("(")]
    pool = sorted(set(pool))
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), size=min(count, len(pool)), replace=False)]


def synthesise(text: str, voice: str, rate: int, pitch: int, amplitude: int, max_seconds: float | None) -> np.ndarray:
    """Speak ``text`` with espeak-ng and return 16 kHz mono int16 samples (truncated to ``max_seconds``)."""
    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = [_espeak(), "-v", voice, "-s", str(rate), "-p", str(pitch), "-a", str(amplitude),
               "-w", str(wav), "--stdin"]
        done = subprocess.run(cmd, input=text, capture_output=True, text=True)
        if done.returncode != 0 or not wav.is_file():
            raise RuntimeError(f"espeak-ng failed ({' '.join(cmd)}): {done.stderr.strip()}")
        sr, x = wavfile.read(wav)
    if sr != ESPEAK_RATE or x.ndim != 1:
        raise RuntimeError(f"espeak-ng wrote {sr} Hz with shape {x.shape}; expected {ESPEAK_RATE} Hz mono")
    from scipy.signal import resample_poly  # deferred: scipy.signal costs ~0.7 s to import

    if max_seconds is not None:
        x = x[: int(round(max_seconds * ESPEAK_RATE))]
    y = resample_poly(x.astype(np.float32), SAMPLE_RATE // 50, ESPEAK_RATE // 50)  # 320/441
    if max_seconds is not None:
        y = y[: int(round(max_seconds * SAMPLE_RATE))]
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def build(work_dir: Path, seed: int, voices: list[str], per_class_per_voice: int, sentences: list[str] | None,
          max_seconds: float | None, wordnet_path: str):
    """Synthesise ``per_class_per_voice`` clips for every (voice, class) into ``work_dir/wav/<id>.wav``.

    All random draws (sentence, rate, pitch, amplitude) happen up front with ``seed``, so the thread pool's
    scheduling cannot change the result. Returns (manifest rows, class names, versions).
    """
    if not voices or len(set(voices)) != len(voices):
        raise ValueError(f"espeak_prosody: voices must be a non-empty list of distinct voices, got {voices}")
    known = available_voices()
    unknown = [v for v in voices if v.split("+")[0] not in known]
    if unknown:
        english = sorted(v for v in known if v.startswith("en"))
        raise ValueError(f"espeak_prosody: espeak-ng has no voice {unknown}; English voices here: {english}")
    if per_class_per_voice < 1:
        raise ValueError(f"espeak_prosody: per_class_per_voice must be >= 1, got {per_class_per_voice}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"espeak_prosody: max_seconds must be > 0 or None, got {max_seconds}")
    classes = list(PROSODY)
    n = len(voices) * len(classes) * per_class_per_voice
    versions = {"espeak-ng": espeak_version()}
    if sentences is None:
        sentences = default_sentences(wordnet_path, count=min(n, 500), seed=seed)
        versions["wordnet_data_noun"] = {"path": str(wordnet_path), "sha256": sha256_file(wordnet_path)}
    elif not sentences or not all(isinstance(s, str) and s.strip() for s in sentences):
        raise ValueError("espeak_prosody: sentences must be a non-empty list of non-empty strings")
    rng = np.random.default_rng(seed)
    jobs = []
    for voice in voices:
        for label, name in enumerate(classes):
            ranges = PROSODY[name]
            for k in range(per_class_per_voice):
                settings = {key: int(rng.integers(lo, hi + 1)) for key, (lo, hi) in ranges.items()}
                jobs.append({
                    "id": f"esp-{voice}-{name}-{k:03d}", "label": label, "label_name": name, "group": voice,
                    "voice": voice, "text": sentences[int(rng.integers(len(sentences)))], **settings,
                })
    (work_dir / "wav").mkdir()

    def run(job: dict) -> None:
        audio = synthesise(job["text"], job["voice"], job["rate"], job["pitch"], job["amplitude"], max_seconds)
        wavfile.write(work_dir / "wav" / f"{job['id']}.wav", SAMPLE_RATE, audio)

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(run, jobs))  # list() re-raises the first failure
    df = pd.DataFrame(jobs)
    df["path"] = "wav/" + df["id"] + ".wav"
    df["split"] = ""
    df = df[["id", "label", "label_name", "group", "split", "path", "text", "voice", "rate", "pitch", "amplitude"]]
    return df, classes, versions
