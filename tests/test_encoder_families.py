"""Any Hugging Face encoder through the real encoder and embed steps: tiny models of each family, built offline from
their configs and saved to a folder that the config names as a hub encoder (``kind: hub, id: <folder>``)."""

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
from PIL import Image
from scipy.io import wavfile

from daamflow.data.datasets import prepare
from daamflow.data.embed import embed
from daamflow.data.encoders import materialise, read_encoder_info
from daamflow.data.features import load_store

torch.set_num_threads(1)
TOL = {"rtol": 2e-3, "atol": 2e-3}  # float16 storage
WORDS = "the a cat dog sat ran on under mat tree big small red blue quickly slowly".split()
SPEECH = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "conv_dim": [16, 16, 16, 16], "conv_kernel": [10, 8, 4, 4], "conv_stride": [5, 4, 4, 4],
          "feat_extract_norm": "layer", "do_stable_layer_norm": True, "num_conv_pos_embeddings": 16,
          "num_conv_pos_embedding_groups": 2}
VISION = {"image_size": 32, "patch_size": 8, "num_channels": 3, "hidden_size": 32, "num_hidden_layers": 2,
          "num_attention_heads": 2, "intermediate_size": 64}


def _tokenizer():
    """A word-level tokenizer over WORDS (a tokenizer.json any text model folder can carry)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "<s>", "</s>"] + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                                bos_token="<s>", eos_token="</s>", model_max_length=64)


def _image_processor(name, channels=3, **extra):
    cls = getattr(transformers, f"{name}ImageProcessorPil", None) or getattr(transformers, f"{name}ImageProcessor")
    return cls(image_mean=[0.5] * channels, image_std=[0.5] * channels, **extra)


def _wav2vec2_extractor():
    return transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                                                 do_normalize=True, return_attention_mask=True)


def _family(name):
    """(config, processor) of a tiny model of each family."""
    t = transformers
    vocab = len(WORDS) + 4
    size = {"height": 32, "width": 32}
    return {
        "bert": (t.BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=64), _tokenizer()),
        "gpt2": (t.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=2, n_positions=64), _tokenizer()),
        "t5": (t.T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                          decoder_start_token_id=0, pad_token_id=0), _tokenizer()),
        "wav2vec2": (t.Wav2Vec2Config(**SPEECH), _wav2vec2_extractor()),
        "hubert": (t.HubertConfig(**SPEECH), _wav2vec2_extractor()),
        "wavlm": (t.WavLMConfig(**SPEECH), _wav2vec2_extractor()),
        # a 1 s window of 16 mel bins: 100 frames, 50 encoder positions
        "whisper": (t.WhisperConfig(vocab_size=vocab, num_mel_bins=16, d_model=32, encoder_layers=2,
                                    encoder_attention_heads=2, decoder_layers=1, decoder_attention_heads=2,
                                    encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=50,
                                    max_target_positions=16, pad_token_id=0, bos_token_id=2, eos_token_id=3,
                                    decoder_start_token_id=2),
                    t.WhisperFeatureExtractor(feature_size=16, sampling_rate=16_000, hop_length=160, chunk_length=1,
                                              n_fft=400)),
        "vit": (t.ViTConfig(**VISION), _image_processor("ViT", size=size)),
        "beit": (t.BeitConfig(**VISION), _image_processor("Beit", size=size, do_center_crop=False)),
        "deit": (t.DeiTConfig(**VISION), _image_processor("DeiT", size=size, crop_size=size)),
        "clip_vision": (t.CLIPVisionConfig(**VISION), _image_processor("CLIP", size={"shortest_edge": 32},
                                                                       crop_size=size)),
        "swin": (t.SwinConfig(image_size=32, patch_size=4, num_channels=3, embed_dim=16, depths=[1, 1],
                              num_heads=[2, 2], window_size=4), _image_processor("ViT", size=size)),
    }[name]


def _saved(name, folder):
    """A tiny model of family ``name`` saved as a from_pretrained folder, then materialised as a hub encoder."""
    config, processor = _family(name)
    torch.manual_seed(0)
    model = transformers.AutoModel.from_config(config)
    model.save_pretrained(folder / "saved")
    processor.save_pretrained(folder / "saved")
    return materialise({"kind": "hub", "id": str(folder / "saved")}, folder / "encoder")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Prepared text (table), audio and image (folder) datasets of 6 samples each, of varying lengths and sizes."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=n)) for n in (3, 9, 5, 14, 2, 7)]
    pd.DataFrame({"text": texts, "label": ["x", "y"] * 3}).to_csv(root / "texts.csv", index=False)
    for i, seconds in enumerate([0.3, 1.4, 0.7, 0.5, 1.0, 0.4]):
        rate = 8_000 if i % 3 == 0 else 16_000  # resampled to the encoders' 16 kHz
        t = np.arange(int(seconds * rate)) / rate
        (root / "audio" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        wave = 6000 * np.sin(2 * np.pi * (150 + 90 * i) * t) + 300 * rng.standard_normal(len(t))
        wavfile.write(root / "audio" / "ab"[i % 2] / f"clip{i}.wav", rate, wave.astype(np.int16))
    for i, (h, w) in enumerate([(20, 30), (40, 40), (17, 50), (32, 32), (64, 48), (25, 25)]):
        (root / "images" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0]) if i % 2 else Image.fromarray(pixels)  # grayscale → RGB encoder
        image.save(root / "images" / "ab"[i % 2] / f"im{i}.png")
    prepare("table", root / "text", 0, path=str(root / "texts.csv"), input="text", folds=3)
    prepare("folder", root / "audio_data", 0, root=str(root / "audio"), folds=3)
    prepare("folder", root / "image_data", 0, root=str(root / "images"), folds=3)
    return {"text": root / "text", "audio": root / "audio_data", "image": root / "image_data"}


FAMILIES = {"bert": "text", "gpt2": "text", "t5": "text", "wav2vec2": "audio", "hubert": "audio", "wavlm": "audio",
            "whisper": "audio", "vit": "image", "beit": "image", "deit": "image", "clip_vision": "image"}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_embeds_independently_of_its_batch(family, data, tmp_path):
    encoder = _saved(family, tmp_path)
    modality = FAMILIES[family]
    assert read_encoder_info(encoder)["modality"] == modality
    one = load_store(embed(data[modality], encoder, tmp_path / "one", batch_size=1, progress=False))
    many = load_store(embed(data[modality], encoder, tmp_path / "many", batch_size=6, progress=False))
    assert one.features.shape == (6, 2, 32) and np.isfinite(one.features).all()
    assert np.abs(np.diff(one.features[:, -1], axis=0)).max() > 1e-3  # the samples differ
    # padding to the batch's longest sample never changes a sample's features
    np.testing.assert_allclose(many.features, one.features, **TOL)


def test_last_token_pooling_reads_each_texts_last_token(data, tmp_path):
    config, tokenizer = _family("gpt2")
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    encoder = materialise({"kind": "hub", "id": str(tmp_path / "saved"), "pooling": "last_token"}, tmp_path / "enc")
    store = load_store(embed(data["text"], encoder, tmp_path / "out", batch_size=4, progress=False))
    assert store.manifest["pooling"].startswith("state of the last token")
    model = transformers.AutoModel.from_pretrained(encoder).eval()
    texts = pd.read_csv(data["text"] / "manifest.csv")["text"]
    with torch.no_grad():
        for i, text in enumerate(texts):
            hidden = model(**tokenizer(text, return_tensors="pt"), output_hidden_states=True).hidden_states
            expected = torch.stack([h[0, -1] for h in hidden[1:]]).numpy()
            np.testing.assert_allclose(store.features[i], expected, **TOL)


def test_models_whose_states_cannot_be_pooled_per_layer_are_refused(data, tmp_path):
    swin = _saved("swin", tmp_path)  # hierarchical: a different width per stage
    with pytest.raises(ValueError, match=r"SwinModel cannot be pooled per layer: its hidden states have shapes"):
        embed(data["image"], swin, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    wavlm = _saved("wavlm", tmp_path / "w")
    pooled = materialise({"kind": "hub", "id": str(tmp_path / "w" / "saved"), "pooling": "last_token"},
                         tmp_path / "w" / "last")
    with pytest.raises(ValueError, match="pooling last_token applies to text only; this dataset is audio"):
        embed(data["audio"], pooled, tmp_path / "out", progress=False)
    assert read_encoder_info(wavlm)["spec"].get("pooling") is None
