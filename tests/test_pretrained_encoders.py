"""Pretrained tiny encoders (daamflow.data.pretrain): deterministic, disjoint from the evaluation sample, loadable with
from_pretrained, the loss falls, bad settings fail clearly. Tiny settings keep each test to a few seconds."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoModel

from daamflow.config import ConfigError, load_config
from daamflow.data.datasets import prepare
from daamflow.data.encoders import encoder_name, load_processor, materialise, read_encoder_info
from daamflow.data.pretrain import images, resolve, selection, speech

SMALL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
BEIT = {"kind": "tiny", "arch": "beit", "seed": 3, "config": SMALL,
        "pretrain": {"steps": 30, "batch_size": 16, "lr": 3e-3, "visual_tokens": 16, "log_every": 10,
                     "pooled_reconstruction": 3.0}}
WAVLM = {"kind": "tiny", "arch": "wavlm", "seed": 3, "config": {**SMALL, "conv_dim": [16, 16, 16, 16]},
         "pretrain": {"steps": 12, "batch_size": 2, "clips": 6, "max_seconds": 1.0, "crop_seconds": 0.5,
                      "clusters": 8, "log_every": 4, "lr": 3e-3}}


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "fashion"
    prepare("fashion_mnist", out, seed=0, per_class_train=20, per_class_test=5)
    return out


@pytest.fixture(scope="module")
def beit(tmp_path_factory, fashion):
    root = tmp_path_factory.mktemp("pretrained")
    return [materialise(BEIT, root / name, exclude=[fashion]) for name in ("a", "b")]


@pytest.fixture(scope="module")
def prosody(tmp_path_factory):
    pytest.importorskip("scipy")
    from daamflow.data.datasets import espeak

    try:
        espeak.espeak_version()
    except (RuntimeError, OSError):
        pytest.skip("espeak-ng is not installed")
    out = tmp_path_factory.mktemp("data") / "prosody"
    prepare("espeak_prosody", out, seed=0, voices=["en-us", "en-gb"], per_class_per_voice=1, max_seconds=1.0)
    return out


def test_beit_deterministic_and_loadable(beit):
    a, b = beit
    info_a, info_b = read_encoder_info(a), read_encoder_info(b)
    assert info_a["weights"] == info_b["weights"]  # same seed, same bytes
    assert info_a["pretraining"]["loss_curve"] == info_b["pretraining"]["loss_curve"]
    assert info_a["pretraining"]["pooled_reconstruction_curve"] == info_b["pretraining"]["pooled_reconstruction_curve"]
    model = AutoModel.from_pretrained(a)
    assert type(model).__name__ == info_a["class"] == "BeitModel" and info_a["name"] == "tiny-beit-mim-seed3"
    assert model.config.use_absolute_position_embeddings  # MIM needs positions; the plain tiny BEiT has none
    out = model(torch.zeros(2, 1, 28, 28), output_hidden_states=True)
    assert len(out.hidden_states) == 3 and out.hidden_states[-1].shape == (2, 50, 32)
    assert load_processor(a, "image") is not None


def test_beit_residual_stream_is_rescaled(beit, fashion):
    # pooled block outputs on a scale a head's learning rate suits (MIM alone leaves them around 0.01)
    model = AutoModel.from_pretrained(beit[0]).eval()
    pixels = torch.tensor(np.load(fashion / "images.npy")[:64], dtype=torch.float32).div(255).sub(0.5).div(0.5)
    with torch.no_grad():
        hidden = model(pixels[:, None], output_hidden_states=True).hidden_states[1:]
    spread = torch.stack(hidden).mean(2).std(1).mean().item()
    assert 0.3 < spread < 3 and read_encoder_info(beit[0])["pretraining"]["residual_scale"] > 1


def test_rescaling_changes_the_scale_only():
    import transformers

    torch.manual_seed(0)
    model = transformers.BeitModel(transformers.BeitConfig(
        image_size=28, patch_size=4, num_channels=1, use_absolute_position_embeddings=True, **SMALL)).eval()
    pixels = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        before = model(pixels, output_hidden_states=True).hidden_states
    factor = images.rescale_residual_stream(model, pixels)
    with torch.no_grad():
        after = model(pixels, output_hidden_states=True).hidden_states
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b * factor, rtol=1e-4, atol=1e-4)


def test_beit_loss_falls_and_is_recorded(beit):
    record = read_encoder_info(beit[0])["pretraining"]
    curve = [loss for _, loss in record["loss_curve"]]
    assert [s for s, _ in record["loss_curve"]] == [10, 20, 30]
    assert curve[-1] < curve[0] - 0.3, curve
    assert record["settings"]["seed"] == 3 and record["settings"]["steps"] == 30 and record["wall_time_s"] > 0
    assert record["data"]["images"] == 30 * 16 and record["data"]["split"] == "train"


def test_pooled_reconstruction_is_used_and_falls(beit, tmp_path, fashion):
    # the term's own curve falls, and it changes the weights: without it (weight 0) the same seed gives other bytes
    record = read_encoder_info(beit[0])["pretraining"]
    term = [value for _, value in record["pooled_reconstruction_curve"]]
    assert [s for s, _ in record["pooled_reconstruction_curve"]] == [10, 20, 30] and term[-1] < 0.8 * term[0], term
    plain = materialise({**BEIT, "pretrain": {**BEIT["pretrain"], "pooled_reconstruction": 0}}, tmp_path / "plain",
                        exclude=[fashion])
    info = read_encoder_info(plain)
    assert "pooled_reconstruction_curve" not in info["pretraining"]
    assert info["weights"] != read_encoder_info(beit[0])["weights"]


def test_beit_pretraining_images_are_disjoint_from_the_sample(fashion):
    settings = resolve("beit", {"steps": 100, "batch_size": 500}, 0)  # 50,000 of the 60,000 training images
    _, picked, data = images.pretraining_pool(settings, [fashion])
    manifest = json.loads((fashion / "meta.json").read_text())
    sample = {int(i.rsplit("-", 1)[1]) for i in
              __import__("pandas").read_csv(fashion / "manifest.csv")["id"] if i.startswith("fmnist-train-")}
    assert len(sample) == 20 * 10 and manifest["source"] == "fashion_mnist"
    assert not sample & set(picked.tolist()) and len(picked) == 50_000 == len(set(picked.tolist()))
    assert data["excluded"][0]["excluded_train_images"] == 200 and data["pool"] == 60_000 - 200


def test_validation_images_are_disjoint_from_the_sample(fashion):
    import pandas as pd

    draws = dict(draws=3, per_class_train=4, per_class_test=2)
    _, labels, splits = selection.validation_draws([fashion], **draws)
    sample = {int(i.rsplit("-", 1)[1]) for i in pd.read_csv(fashion / "manifest.csv")["id"] if "-test-" in i}
    used = np.concatenate([np.concatenate(s) for s in splits])
    assert len(sample) == 5 * 10 and not sample & set(used.tolist()) and len(set(used.tolist())) == 3 * 60
    for fit, scored in splits:  # balanced per class, as the demo sample
        assert np.bincount(labels[fit]).tolist() == [4] * 10 and np.bincount(labels[scored]).tolist() == [2] * 10
    again = selection.validation_draws([fashion], **draws)[2]  # the same images for every recipe compared
    assert all((a == b).all() for s, t in zip(splits, again) for a, b in zip(s, t))


def test_validation_features_are_the_embed_steps(beit, fashion, tmp_path):
    # the selection scores what the demo's probe reads: the embed step's pooled block outputs
    from daamflow.data.embed import embed
    from daamflow.data.features import load_store

    store = load_store(embed(fashion, beit[0], tmp_path / "store", progress=False))
    index = __import__("pandas").read_csv(fashion / "manifest.csv")["image_index"]
    ours = selection.pooled_features(beit[0], np.load(fashion / "images.npy")[index])
    np.testing.assert_allclose(ours, store.features, rtol=2e-3, atol=2e-3)


def test_validation_probe_reads_the_features(beit, fashion):
    result = selection.validation_probe(beit[0], [fashion], draws=2, per_class_train=10, per_class_test=5)
    assert len(result["by_layer"]) == 2 and result["best"] == max(result["by_layer"])
    assert result["draws"] == 2 and result["scored_per_draw"] == 50
    assert result["best"] > 0.3  # far above chance (0.1): the features carry the class


def test_wavlm_pretraining(tmp_path, prosody):
    a = materialise(WAVLM, tmp_path / "a", exclude=[prosody])
    b = materialise(WAVLM, tmp_path / "b", exclude=[prosody])
    info = read_encoder_info(a)
    assert info["weights"] == read_encoder_info(b)["weights"]
    assert type(AutoModel.from_pretrained(a)).__name__ == "WavLMModel"
    assert AutoModel.from_pretrained(a).config.conv_bias  # loudness survives the conv stack's layer norm
    assert load_processor(a, "audio").do_normalize is False  # and the processor does not normalise it away
    record = info["pretraining"]
    curve = [loss for _, loss in record["loss_curve"]]
    assert curve[-1] < curve[0], curve
    assert not set(record["data"]["voices"]) & {"en-us", "en-gb"}


def test_wavlm_clips_are_disjoint_from_the_sample(prosody):
    import pandas as pd

    plan, data = speech.pretraining_clips(resolve("wavlm", {"clips": 200}, 0), [prosody])
    sample = pd.read_csv(prosody / "manifest.csv")
    assert not {c["text"] for c in plan} & set(sample["text"])
    assert not {c["voice"] for c in plan} & set(sample["voice"])
    with pytest.raises(ValueError, match="evaluation voices"):
        speech.pretraining_clips(resolve("wavlm", {"voices": ["en-us"]}, 0), [prosody])


def test_exclusions_must_match_the_source(tmp_path, fashion, prosody):
    with pytest.raises(ValueError, match="can only exclude fashion_mnist"):
        images.pretraining_pool(resolve("beit", {"steps": 1, "batch_size": 1}, 0), [prosody])
    with pytest.raises(ValueError, match="espeak_prosody"):
        speech.pretraining_clips(resolve("wavlm", {}, 0), [fashion])


@pytest.mark.parametrize("spec, message", [
    ({**BEIT, "pretrain": {"step": 3}}, r"unknown keys \['step'\]"),
    ({**BEIT, "pretrain": {"objective": "hubert"}}, "objective must be one of"),
    ({**BEIT, "pretrain": {"steps": 0}}, "steps must be an integer >= 1"),
    ({**BEIT, "pretrain": {"pooled_layers": "first"}}, "pooled_layers must be"),
    ({**BEIT, "pretrain": {"pooled_reconstruction": -1}}, "pooled_reconstruction >= 0"),
    ({"kind": "tiny", "arch": "llama", "pretrain": {}}, "only tiny"),
    ({"kind": "package", "package": "x", "pretrain": {}}, "unknown keys"),
])
def test_bad_specs_fail_before_any_work(tmp_path, spec, message):
    with pytest.raises(ValueError, match=message):
        materialise(spec, tmp_path / "enc")
    assert not (tmp_path / "enc").exists()


def test_exclude_without_pretrain_is_refused(tmp_path, fashion):
    with pytest.raises(ValueError, match="pretrained tiny encoders only"):
        materialise({"kind": "tiny", "arch": "beit"}, tmp_path / "enc", exclude=[fashion])


def test_plain_tiny_is_unchanged():
    # the micro config's random encoders (and their golden digests) do not move
    assert encoder_name({"kind": "tiny", "arch": "beit", "seed": 0}) == "tiny-beit-seed0"
    assert resolve("wavlm", {}, 7)["seed"] == 7 and resolve("wavlm", {"seed": 1}, 7)["seed"] == 1


def test_config_checks(tmp_path):
    import yaml

    cfg = yaml.safe_load(open("config/config.yaml"))
    assert "pretrain" in cfg["encoders"]["tiny-beit"] and "pretrain" in cfg["encoders"]["tiny-wavlm"]
    cfg["encoders"]["tiny-beit"]["pretrain"] = {"visual_token": 8}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="visual_token"):
        load_config(bad)
    cfg["encoders"]["tiny-beit"]["pretrain"] = {}
    cfg["datasets"]["prosody"]["encoder"] = "tiny-beit"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="cannot be kept apart"):
        load_config(bad)
