"""LoRA / LoRA+ on every encoder family the heads take: tiny models built offline and saved as local hub encoders
(``test_encoder_families``), a real LoRA fold on each (``run_split``: fit's optimiser steps, selection and test),
the LoRA head's pooled vector equal to the embed step's feature at initialisation (both paths pool by one rule,
``last_token`` for a decoder included), and the error naming the config key for a family without known targets."""

import numpy as np
import pytest
import torch
import transformers

from daamflow.config import validate_config
from daamflow.data.embed import embed
from daamflow.data.encoders import materialise
from daamflow.data.features import load_store
from daamflow.data.manifest import read_prepared
from daamflow.run.finetune import Prepared, run_split, splits_of
from daamflow.run.lora_model import Inputs, build_model
from daamflow.run.lora_settings import finetune_settings
from test_encoder_families import TOL, WORDS, _family, _tokenizer, data  # noqa: F401  (data: a fixture)

torch.set_num_threads(1)
CPU = torch.device("cpu")
# family → (modality, the target modules LoRA must pick, the encoder spec's pooling)
CASES = {
    "whisper": ("audio", ["q_proj", "k_proj"], "mean"),
    "hubert": ("audio", ["q_proj", "k_proj"], "mean"),
    "wav2vec2": ("audio", ["q_proj", "k_proj"], "mean"),
    "vit": ("image", ["q_proj", "k_proj"], "mean"),
    "clip_vision": ("image", ["q_proj", "k_proj"], "mean"),
    "llama": ("text", ["q_proj", "k_proj"], "last_token"),
}


def _saved(family, folder, pooling="mean", **options):
    """A tiny model of ``family`` (its config changed by ``options``) saved as a from_pretrained folder and
    materialised as a hub encoder."""
    if family == "llama":
        config = transformers.LlamaConfig(vocab_size=len(WORDS) + 4, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
                                          max_position_embeddings=64, pad_token_id=0, bos_token_id=2, eos_token_id=3)
        processor = _tokenizer()
    else:
        config, processor = _family(family)
    config.update(options)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(folder / "saved")
    processor.save_pretrained(folder / "saved")
    spec = {"kind": "hub", "id": str(folder / "saved"), **({} if pooling == "mean" else {"pooling": pooling})}
    return spec, materialise(spec, folder / "encoder")


def _settings(spec, modality, method="lora_r4"):
    """The finetune settings of a dataset of ``modality`` embedded with the encoder ``spec``: one epoch, 3 folds."""
    source = {"audio": "espeak_prosody", "image": "fashion_mnist", "text": "wordnet"}[modality]  # for its modality
    config = validate_config({
        "datasets": {"own": {"source": source, "encoder": "enc", "evaluation": {"scheme": "kfold", "folds": 3}}},
        "encoders": {"enc": spec}, "methods": [method],
        "training": {"defaults": {"epochs": 1, "lr": 1e-2, "batch_size": 2}},
    })
    return finetune_settings(config, "own", method, "paper")


@pytest.mark.parametrize("family", CASES)
def test_a_lora_fold_trains_on_each_family(family, data, tmp_path):  # noqa: F811
    modality, targets, pooling = CASES[family]
    spec, encoder = _saved(family, tmp_path, pooling)
    settings = _settings(spec, modality)
    prepared = Prepared.read(data[modality])
    metrics = run_split(prepared, encoder, splits_of(prepared, settings)[0], settings, tmp_path / "fold", "cpu",
                        progress=False)
    assert metrics["target_modules"] == targets and metrics["adapters_without_gradient"] == []
    assert metrics["epochs_run"] == 1 and 0 <= metrics["accuracy"] <= 1
    assert metrics["params_without_classifier"] == 2 * 2 * 4 * 2 * 32  # 2 layers × 2 targets × (A + B), r=4, 32 wide
    # the optimiser stepped: peft starts every B at 0, the selected weights hold B ≠ 0 on every adapted module
    state = torch.load(tmp_path / "fold" / "model.pt", weights_only=True)
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert len(lora_b) == 2 * len(targets) and all(v.abs().sum() > 0 for v in lora_b)


@pytest.mark.parametrize("family", ["whisper", "hubert", "clip_vision", "llama"])
def test_the_lora_head_reads_the_embed_steps_pooled_feature(family, data, tmp_path):  # noqa: F811
    """At initialisation (B = 0) the adapted encoder is the frozen one: the vector the LoRA head reads is the last
    layer's feature of the embed step, padding, audio frame masks and last-token pooling included.

    The LoRA head reads the encoder's last_hidden_state, as Hugging Face's classification heads do; where a model
    applies a final layer norm that its hidden_states leave out (ViT, DeiT, speech models with do_stable_layer_norm),
    it reads the normed state: this HuBERT is built without that norm so that the two are one tensor."""
    modality, _, pooling = CASES[family]
    spec, encoder = _saved(family, tmp_path, pooling, **({"do_stable_layer_norm": False} if family == "hubert" else {}))
    settings = _settings(spec, modality)
    feature = load_store(embed(data[modality], encoder, tmp_path / "store", batch_size=6, progress=False)).features
    model, base, _ = build_model(encoder, settings, num_classes=2)
    df, _ = read_prepared(data[modality])
    inputs = Inputs(data[modality], df, modality, base, encoder, settings["finetune"]["max_length"])
    model.eval()
    with torch.no_grad():
        pooled = inputs.pooled(model, np.arange(len(df)), CPU, torch.float32).numpy()
    np.testing.assert_allclose(pooled, feature[:, -1], **TOL)
    if pooling == "last_token":  # not the mean, which the test would otherwise not tell from it
        with torch.no_grad():
            feed, mask = inputs.feed(np.arange(len(df)))
            hidden = base(**feed).last_hidden_state
        mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        assert np.abs(mean.numpy() - pooled).max() > 0.1


@pytest.mark.parametrize("released", [False, True])
def test_a_family_without_query_key_projections_names_the_config_key(released, data, tmp_path):  # noqa: F811
    spec, encoder = _saved("gpt2", tmp_path)  # one fused c_attn for query, key and value
    settings = _settings(spec, "text", "lora_r4@released" if released else "lora_r4")
    key = "released_targets" if released else "targets"
    with pytest.raises(ValueError, match=rf"model_type 'gpt2' .* set finetune\.{key}\.gpt2 to some of its linear "
                                         rf"layers' names \(\['c_attn', 'c_fc', 'c_proj'\]\)"):
        build_model(encoder, settings, num_classes=2)
    config = {**settings, "finetune": {**settings["finetune"],
                                       "targets": {**settings["finetune"]["targets"], "gpt2": ["c_attn"]}}}
    _, _, targets = build_model(encoder, config, num_classes=2)  # what the error asks for, done
    assert targets == ["c_attn"]


def test_pooling_enters_the_settings_only_when_not_the_mean():
    mean = _settings({"kind": "tiny", "arch": "llama"}, "text")
    last = _settings({"kind": "tiny", "arch": "llama", "pooling": "last_token"}, "text")
    assert "pooling" not in mean["finetune"] and last["finetune"]["pooling"] == "last_token"
    last["finetune"].pop("pooling")
    assert last == mean  # the mean-pooled settings (and hash) are as before pooling was configurable


@pytest.mark.parametrize("family", ["hubert", "wav2vec2"])
def test_the_frozen_conv_feature_encoder_is_not_back_propagated(family, data, tmp_path):  # noqa: F811
    """HubertModel has no freeze_feature_encoder; its conv feature encoder would otherwise mark its output as
    requiring grad in training mode, and every step would back-propagate through the frozen convs."""
    spec, encoder = _saved(family, tmp_path)
    model, base, _ = build_model(encoder, _settings(spec, "audio"), num_classes=2)
    seen = []
    base.feature_extractor.register_forward_hook(lambda module, args, out: seen.append(out.requires_grad))
    df, _ = read_prepared(data["audio"])
    inputs = Inputs(data["audio"], df, "audio", base, encoder, None)
    model.train()
    inputs.logits(model, np.arange(2), CPU, torch.float32).sum().backward()
    assert seen and not any(seen)  # one call per batch, or per clip when the fold caches the features


@pytest.mark.parametrize("family,norm,cached", [("wavlm", "layer", True), ("hubert", "layer", True),
                                                ("wav2vec2", "group", False)])
def test_a_fold_computes_each_clips_conv_features_once(family, norm, cached, data, tmp_path, monkeypatch):  # noqa: F811
    """The frozen conv features are computed once per clip (each on its own samples) and reused by later batches,
    which read the same pooled vectors as without the cache; not with group norm, whose frames see the padding."""
    from daamflow.run import lora_model

    spec, encoder = _saved(family, tmp_path, feat_extract_norm=norm)
    model, base, _ = build_model(encoder, _settings(spec, "audio"), num_classes=2)
    model.eval()  # no dropout, layer drop or time masking: both paths see the same model
    df, _ = read_prepared(data["audio"])
    rows = np.arange(len(df))
    with monkeypatch.context() as patched:
        patched.setattr(lora_model, "FEATURE_CACHE_BYTES", 0)
        plain = Inputs(data["audio"], df, "audio", base, encoder, None)
        assert plain.features is None
        reference = plain.pooled(model, rows, CPU, torch.float32).detach()
    inner, calls = base.feature_extractor, []
    inner.register_forward_hook(lambda module, args, out: calls.append(args[0].shape))
    inputs = Inputs(data["audio"], df, "audio", base, encoder, None)
    assert (inputs.features is not None) == cached
    with torch.no_grad():
        first = inputs.pooled(model, rows, CPU, torch.float32)
        again = inputs.pooled(model, rows[[5, 0, 3]], CPU, torch.float32)  # another batch: other padding
    torch.testing.assert_close(first, reference, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(again, reference[[5, 0, 3]], atol=1e-5, rtol=1e-4)
    if cached:  # one call per clip, each on its own samples, and none for the second batch
        assert len(calls) == len(df) and all(shape[0] == 1 for shape in calls)
    else:
        assert len(calls) == 2
