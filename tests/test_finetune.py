"""LoRA / LoRA+ baselines: every adapter trains on every encoder, parameter counts are the analytic ones, each quirk
switch changes what it says and nothing else, resume is exact, and the finetune rule runs in the real workflow."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from scipy.io import wavfile

from conftest import MINILM, write_prepared
from daamflow.config import validate_config
from daamflow.data.manifest import read_prepared
from daamflow.run.dispatch import run_row
from daamflow.run.finetune import Prepared, run_split, splits_of
from daamflow.run.fit import Interrupted
from daamflow.run.identity import settings_hash
from daamflow.run.lora_model import Inputs, _gradient_watch, build_model, make_optimiser, parameter_counts
from daamflow.run.lora_settings import QUIRKS, finetune_settings

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
# dataset key of the test config → (encoder fixture name, modality)
DATASETS = {"aud": ("wavlm", "audio"), "img": ("beit", "image"), "llm": ("llama", "text"), "txt": ("minilm", "text")}
SOURCES = {"audio": "espeak_prosody", "image": "fashion_mnist", "text": "wordnet"}
N = 12  # samples per prepared dataset: 2 classes, 4 groups, every 4th sample in the official test split


def _config(**finetune) -> dict:
    encoders = {"minilm": MINILM, **{a: {"kind": "tiny", "arch": a} for a in ("wavlm", "beit", "llama")}}
    datasets = {
        key: {"source": SOURCES[modality], "encoder": enc,
              "evaluation": {"scheme": "seeds", "runs": 1} if modality == "image" else {"scheme": "kfold", "folds": 2}}
        for key, (enc, modality) in DATASETS.items()
    }
    return validate_config({
        "datasets": datasets, "encoders": encoders, "methods": ["lora_r4"],
        "training": {"defaults": {"epochs": 3, "lr": 1e-2, "batch_size": 4, "scheduler_patience": 5}},
        "finetune": finetune,
    })


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A prepared folder per modality with a class signal (loud/quiet pitch, bright half, wording)."""
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    rows = [{"id": f"s{i}", "label": i % 2, "group": f"g{i % 4}", "split": "test" if i % 4 == 0 else "train"}
            for i in range(N)]
    words = [["dog", "cat", "horse"], ["oak", "fern", "rose"]]
    text = [{**r, "text": f"a {words[r['label']][i % 3]} seen in sample {i}"} for i, r in enumerate(rows)]
    images = rng.integers(0, 60, size=(N, 28, 28), dtype=np.uint8)
    for i, r in enumerate(rows):
        images[i, : 14 if r["label"] else 28, : 14 if r["label"] else 28] += 150
    (root / "image").mkdir()
    np.save(root / "image/images.npy", images)
    (root / "audio/wav").mkdir(parents=True)
    t = np.arange(6400) / 16_000  # 0.4 s
    for i, r in enumerate(rows):
        wave = 8000 * np.sin(2 * np.pi * (200 if r["label"] else 700) * t) + 300 * rng.standard_normal(len(t))
        wavfile.write(root / f"audio/wav/{r['id']}.wav", 16_000, wave.astype(np.int16))
    image = [{**r, "image_index": i} for i, r in enumerate(rows)]
    audio = [{**r, "path": f"wav/{r['id']}.wav"} for r in rows]
    return {
        "text": write_prepared(root / "text", "text", text, ["animal", "plant"]),
        "image": write_prepared(root / "image", "image", image, ["a", "b"]),
        "audio": write_prepared(root / "audio", "audio", audio, ["a", "b"]),
    }


def _build(dataset, encoder_dir, data, method="lora_r4", seed=0, **finetune):
    enc, modality = DATASETS[dataset]
    settings = finetune_settings(_config(**finetune), dataset, method, "paper")
    path = encoder_dir(enc)  # before seeding: building a tiny encoder the first time draws random numbers
    torch.manual_seed(seed)
    model, base, targets = build_model(path, settings, num_classes=2)
    df, _ = read_prepared(data[modality])
    inputs = Inputs(data[modality], df, modality, base, encoder_dir(enc), None)
    return model, inputs, settings, targets


def _adapters(model):
    return [(n, p) for n, p in model.named_parameters() if "lora_" in n]


def _backward(model, inputs):
    model.eval()  # no dropout or layer drop: every layer is on the path
    rows = np.arange(4)
    F.cross_entropy(inputs.logits(model, rows, CPU, torch.float32), torch.tensor([0, 1, 0, 1])).backward()


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_adapter_gets_a_gradient(dataset, encoder_dir, data):
    model, inputs, _, targets = _build(dataset, encoder_dir, data)
    layers = model["encoder"].get_base_model().config.num_hidden_layers
    adapters = _adapters(model)
    assert len(adapters) == layers * 2 * 2  # two target matrices per layer, each with A and B
    with torch.no_grad():  # B starts at 0, which makes A's first gradient 0: move it off zero
        for name, p in adapters:
            if "lora_B" in name:
                p.normal_(std=0.1)
    _backward(model, inputs)
    silent = [n for n, p in adapters if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent, f"{targets}: no gradient for {silent}"
    assert all(p.grad.abs().sum() > 0 for p in model["head"].parameters())
    assert not any(p.requires_grad for n, p in model["encoder"].named_parameters() if "lora_" not in n)


def test_wavlm_attention_adapters_get_no_gradient(encoder_dir, data):
    """The trap the defaults avoid: WavLM reads q/k/v weights directly, so the released q/v targets never train."""
    model, inputs, _, targets = _build("aud", encoder_dir, data, quirks={"released_targets": True})
    assert targets == ["q_proj", "v_proj"]
    _backward(model, inputs)
    assert all(p.grad is None for _, p in _adapters(model))


def test_gradient_watch_spans_steps_and_skips_the_conv_feature_encoder(encoder_dir, data):
    """Layer drop skips whole WavLM layers in a step, so an adapter is reported only if no step reached it; the
    frozen conv feature encoder is not back-propagated through (its output needs no gradient)."""
    model, inputs, _, _ = _build("aud", encoder_dir, data)
    base = model["encoder"].get_base_model()
    watch = _gradient_watch(model)
    model.train()
    convs = base.feature_extractor if inputs.features is None else inputs.features.inner  # the frozen convs
    assert not convs(torch.randn(2, 6400)).requires_grad
    base.config.layerdrop = 1.0  # a step that skips every layer WavLM may drop (all but the first)
    rows = np.arange(4)
    F.cross_entropy(inputs.logits(model, rows, CPU, torch.float32), torch.tensor([0, 1, 0, 1])).backward()
    skipped = sorted(n for n, _ in _adapters(model["encoder"]) if ".layers.0." not in n)
    assert len(skipped) == 3 * 2 * 2 and watch() == skipped
    base.config.layerdrop = 0.0
    F.cross_entropy(inputs.logits(model, rows, CPU, torch.float32), torch.tensor([0, 1, 0, 1])).backward()
    assert watch() == []


def test_released_loraplus_on_wavlm_trains_nothing_and_still_runs(encoder_dir, data, tmp_path):
    """Inert q/v adapters and a head outside the optimiser: no parameter is on the graph; the run must still finish
    (scoring the model as initialised, as the released script did) and say which adapters never got a gradient."""
    settings = finetune_settings(_config(), "aud", "loraplus_r4@released", "paper")
    prepared = Prepared.read(data["audio"])
    split = splits_of(prepared, settings)[0]
    metrics = run_split(prepared, encoder_dir("wavlm"), split, settings, tmp_path, "cpu", progress=False)
    assert metrics["head_trained_params"] == 0 and metrics["epochs_run"] == 3
    saved = torch.load(tmp_path / "model.pt")
    assert len(metrics["adapters_without_gradient"]) == sum("lora_" in k for k in saved) > 0
    assert all(not v.any() for k, v in saved.items() if "lora_B" in k)  # B never left 0
    assert pd.read_csv(tmp_path / "history.csv")["select_accuracy"].nunique() == 1


def _analytic_adapters(cfg, model_type: str, r: int) -> int:
    """r × (in + out) per adapted matrix, from the encoder's config."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    if model_type == "wavlm":  # feed-forward: h → intermediate → h
        return layers * 2 * r * (h + cfg.intermediate_size)
    if model_type == "llama":  # q: h → h; k: h → kv heads × head dim
        kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
        return layers * r * ((h + h) + (h + kv))
    return layers * 2 * r * (h + h)  # beit, bert: query and key, h → h


@pytest.mark.parametrize("dataset,method", [("aud", "lora_r4"), ("img", "loraplus_r8"), ("llm", "lora_r8"),
                                            ("txt", "loraplus_r4")])
def test_parameter_counts_are_analytic(dataset, method, encoder_dir, data):
    model, _, settings, _ = _build(dataset, encoder_dir, data, method=method)
    cfg = model["encoder"].get_base_model().config
    adapters = _analytic_adapters(cfg, cfg.model_type, settings["finetune"]["rank"])
    head = cfg.hidden_size * 2 + 2
    counts = parameter_counts(model, make_optimiser(model, settings))
    assert counts["params"] == adapters + head and counts["params_without_classifier"] == adapters
    assert counts["adapter_params"] == adapters and counts["head_params"] == head


def test_quirk_switches_change_only_their_setting():
    default = finetune_settings(_config(), "llm", "loraplus_r4", "paper")
    assert not any(default["finetune"]["quirks"].values())
    for quirk in QUIRKS:
        changed = finetune_settings(_config(quirks={quirk: True}), "llm", "loraplus_r4", "paper")
        assert changed["finetune"]["quirks"] == {**default["finetune"]["quirks"], quirk: True}
        rest = {k: v for k, v in changed["finetune"].items() if k not in ("quirks", "targets")}
        assert rest == {k: v for k, v in default["finetune"].items() if k not in ("quirks", "targets")}
        assert (changed["finetune"]["targets"] != default["finetune"]["targets"]) == (quirk == "released_targets")
        assert settings_hash(changed) != settings_hash(default)
    # plain LoRA has no LoRA+ optimiser: that switch is a no-op and keeps the same run
    plain = finetune_settings(_config(quirks={"loraplus_head_outside_optimiser": True}), "llm", "lora_r4", "paper")
    assert settings_hash(plain) == settings_hash(finetune_settings(_config(), "llm", "lora_r4", "paper"))


def test_released_suffix_turns_every_quirk_on_and_is_its_own_row():
    released_setup = {"training": {"by_modality": {"text": {"epochs": 1, "batch_size": 1}}}, "max_length": 128}
    config = _config(released=released_setup)
    released = finetune_settings(config, "llm", "loraplus_r4@released", "paper")
    assert all(released["finetune"]["quirks"].values())
    assert released["method"] == "loraplus_r4" and released["label"] == "loraplus_r4@released"
    assert released["hyper"]["epochs"] == 1 and released["hyper"]["batch_size"] == 1
    assert released["finetune"]["max_length"] == 128
    assert released["finetune"]["targets"]["llama"] == ["q_proj", "v_proj"]
    plain = finetune_settings(config, "llm", "loraplus_r4", "paper")
    assert plain["hyper"]["epochs"] == 3 and "label" not in plain
    metrics = {k: 0 for k in ("seed", "accuracy", "macro_f1", "best_epoch", "epochs_run", "params",
                              "params_without_classifier", "wall_time_s", "settings_hash", "identity")}
    assert run_row(released, "fold1", {**metrics, "inputs": {}})["method"] == "loraplus_r4@released"
    with pytest.raises(ValueError, match="lora_r<rank>"):
        finetune_settings(config, "llm", "lora_r4@paper", "paper")


def _scalings(model):
    return {m.scaling["default"] for m in model.modules() if hasattr(m, "scaling") and isinstance(m.scaling, dict)}


def test_alpha_scaling_and_init_quirks(encoder_dir, data):
    plain, *_ = _build("llm", encoder_dir, data, method="lora_r8")
    scaled, *_ = _build("llm", encoder_dir, data, method="lora_r8", quirks={"alpha_scaling": True})
    released_init, *_ = _build("llm", encoder_dir, data, method="lora_r8", quirks={"released_init": True})
    assert _scalings(plain) == {16 / 8} and _scalings(scaled) == {16.0}
    for (name, a), (_, b) in zip(_adapters(plain), _adapters(scaled)):  # the weights themselves are unchanged
        assert torch.equal(a, b), name
    a_plain = torch.cat([p.flatten() for n, p in _adapters(plain) if "lora_A" in n])
    a_released = torch.cat([p.flatten() for n, p in _adapters(released_init) if "lora_A" in n])
    assert a_plain.abs().max() <= 64 ** -0.5  # Kaiming-uniform(a=√5): bound 1/sqrt(fan_in)
    assert a_released.std().item() == pytest.approx(8 ** -0.5, rel=0.05)  # N(0, 1/r)
    assert all(not p.any() for n, p in _adapters(released_init) if "lora_B" in n)


def test_released_targets_quirk(encoder_dir, data):
    _, _, _, default = _build("llm", encoder_dir, data)
    model, _, _, released = _build("llm", encoder_dir, data, quirks={"released_targets": True})
    assert (default, released) == (["q_proj", "k_proj"], ["q_proj", "v_proj"])
    adapted = {n.split(".")[-4] for n, _ in _adapters(model)}
    assert adapted == {"q_proj", "v_proj"}


@pytest.mark.parametrize("dataset,trained_head", [("llm", 0), ("aud", 256 * 2 + 2), ("img", 64 * 2 + 2)])
def test_frozen_head_quirk(dataset, trained_head, encoder_dir, data):
    """Text: the whole head stays at init (Llama `score`); audio: a frozen 256-wide projector; image: no change."""
    model, inputs, settings, _ = _build(dataset, encoder_dir, data, quirks={"frozen_head": True})
    optimiser = make_optimiser(model, settings)
    counts = parameter_counts(model, optimiser)
    assert counts["head_trained_params"] == trained_head
    assert counts["params"] == counts["adapter_params"] + trained_head
    before = {k: v.clone() for k, v in model["head"].state_dict().items()}
    with torch.no_grad():
        for name, p in _adapters(model):
            if "lora_B" in name:
                p.normal_(std=0.1)
    _backward(model, inputs)
    optimiser.step()
    frozen = [k for k, v in model["head"].state_dict().items() if torch.equal(v, before[k])]
    expected = {"llm": ["0.weight", "0.bias"], "aud": ["0.weight", "0.bias"], "img": []}[dataset]
    assert frozen == expected


def test_loraplus_optimiser_and_head_quirk(encoder_dir, data):
    model, _, settings, _ = _build("txt", encoder_dir, data, method="loraplus_r4")
    optimiser = make_optimiser(model, settings)
    lr = settings["hyper"]["lr"]
    lr_of = {id(p): g["lr"] for g in optimiser.param_groups for p in g["params"]}
    for name, p in _adapters(model):
        assert lr_of[id(p)] == pytest.approx(lr * (2.828 if "lora_B" in name else 1.0)), name
    assert all(id(p) in lr_of for p in model["head"].parameters())
    model, _, settings, _ = _build("txt", encoder_dir, data, method="loraplus_r4",
                                   quirks={"loraplus_head_outside_optimiser": True})
    optimiser = make_optimiser(model, settings)
    in_optimiser = {id(p) for g in optimiser.param_groups for p in g["params"]}
    assert not any(id(p) in in_optimiser for p in model["head"].parameters())
    assert all(id(p) in in_optimiser for _, p in _adapters(model))


def test_resume_gives_the_uninterrupted_numbers(encoder_dir, data, tmp_path):
    """WavLM in train mode draws dropout (torch) and layer drop / time masks (numpy): a resumed run must match."""
    settings = finetune_settings(_config(), "aud", "loraplus_r4", "clean")
    prepared = Prepared.read(data["audio"])
    split = splits_of(prepared, settings)[0]
    args = (prepared, encoder_dir("wavlm"), split, settings)
    full = run_split(*args, tmp_path / "full", "cpu", progress=False)
    with pytest.raises(Interrupted):
        run_split(*args, tmp_path / "cut", "cpu", stop_after_epoch=1, progress=False)
    assert not (tmp_path / "cut/metrics.json").exists()
    resumed = run_split(*args, tmp_path / "cut", "cpu", progress=False)
    for key in ("accuracy", "select_accuracy", "best_epoch", "epochs_run", "confusion", "params"):
        assert resumed[key] == full[key], key
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "cut/history.csv"), pd.read_csv(tmp_path / "full/history.csv"))
    assert pd.read_csv(tmp_path / "full/history.csv")["train_loss"].nunique() == 3  # the weights did move
    saved, again = torch.load(tmp_path / "full/model.pt"), torch.load(tmp_path / "cut/model.pt")
    assert saved.keys() == again.keys() and all(torch.equal(saved[k], again[k]) for k in saved)
    assert all("lora_" in k or k.startswith("head.") for k in saved)  # adapters and head only, no encoder weights
    assert set(json.loads((tmp_path / "full/metrics.json").read_text())) >= {
        "accuracy", "macro_f1", "confusion", "support", "best_epoch", "select_accuracy", "epochs_run", "seed",
        "split", "selection", "wall_time_s", "params", "params_without_classifier", "layers", "settings",
        "settings_hash", "device", "versions",
    }
    assert pd.read_csv(tmp_path / "full/predictions.csv").shape == (split.as_dict()["n_test"], 3)


def test_finetune_rule_in_the_workflow(tmp_path):
    """The finetune rule in a micro run: prepared data → LoRA runs → the tables, beside nothing else."""
    micro = yaml.safe_load((ROOT / "tests/configs/micro.yaml").read_text())
    fashion = {**micro["datasets"]["fashion"], "evaluation": {"scheme": "seeds", "runs": 2}}
    config = {
        "seed": 0, "threads": 1, "results_dir": str(tmp_path / "results"),
        "datasets": {"fashion": fashion}, "encoders": {"tiny-beit": micro["encoders"]["tiny-beit"]},
        "methods": ["lora_r4"], "protocols": ["paper"], "training": {"defaults": {"epochs": 1}},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", str(path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run_dir = tmp_path / "results/runs/fashion/tiny-beit/paper/lora_r4"
    runs = pd.read_csv(run_dir / "runs.csv")
    metrics = {"seed": 0, "accuracy": 0, "macro_f1": 0, "best_epoch": 0, "epochs_run": 0, "params": 0,
               "params_without_classifier": 0, "wall_time_s": 0, "settings_hash": "", "identity": "", "inputs": {}}
    names = {"dataset": "", "encoder": "", "protocol": "", "method": ""}
    assert list(runs.columns) == list(run_row(names, "", metrics))  # the heads' columns
    assert runs["fold"].tolist() == ["run1", "run2"] and set(runs["method"]) == {"lora_r4"}
    first = json.loads((run_dir / "run1/metrics.json").read_text())
    assert first["settings"]["finetune"]["rank"] == 4 and first["epochs_run"] == 1
    table = pd.read_csv(tmp_path / "results/tables/fashion_paper.csv").set_index("method")
    assert table.loc["lora_r4", "run1"] == pytest.approx(100 * first["accuracy"])
    assert table.loc["lora_r4", "params"] == first["params"]
    assert not (tmp_path / "results/features").exists()  # fine-tuning reads the prepared data, not the features


def test_logits_at_padding_quirk(encoder_dir, data):
    """The released AG News LoRA: texts padded to max_length with the pad (eos) token, logits read at the last position."""
    model, _, settings, _ = _build("llm", encoder_dir, data, quirks={"logits_at_padding": True})
    assert settings["finetune"]["quirks"]["logits_at_padding"]
    df, _ = read_prepared(data["text"])
    base = model["encoder"].get_base_model()
    at_pad = Inputs(data["text"], df, "text", base, encoder_dir("llama"), 40, at_padding=True)
    pooled = Inputs(data["text"], df, "text", base, encoder_dir("llama"), 40)
    rows = np.arange(4)
    feed, mask = at_pad.feed(rows)
    assert mask is None and tuple(feed["input_ids"].shape) == (4, 40)
    assert (at_pad.pipeline.lengths[rows] < 40).all()  # every text is shorter: its last position is padding
    assert (feed["input_ids"][:, -1] == at_pad.pipeline.pad_id).all() and not feed["attention_mask"][:, -1].any()
    model.eval()
    with torch.no_grad():
        last = model["head"](model["encoder"](**feed).last_hidden_state[:, -1])
        torch.testing.assert_close(at_pad.logits(model, rows, CPU, torch.float32), last)
        assert not torch.allclose(pooled.logits(model, rows, CPU, torch.float32), last)  # default: masked mean
    for dataset in ("aud", "img"):  # only token sequences have a padding position to read
        other = finetune_settings(_config(quirks={"logits_at_padding": True}), dataset, "lora_r4", "paper")
        assert not other["finetune"]["quirks"]["logits_at_padding"]


def test_model_across_folds_quirk(encoder_dir, data, tmp_path):
    """The released IEMOCAP LoRA script built its model once: fold 2 starts from fold 1's final weights."""
    from daamflow.run.finetune import finetune_all
    from daamflow.data.manifest import sha256_file

    def settings_for(quirk: bool, lr: float) -> dict:
        s = finetune_settings(_config(quirks={"model_across_folds": quirk}), "llm", "lora_r4", "paper")
        return {**s, "hyper": {**s["hyper"], "epochs": 2, "lr": lr}}

    def run(name: str, quirk: bool, lr: float = 1e-2, **kw):
        finetune_all(data["text"], encoder_dir("llama"), settings_for(quirk, lr), tmp_path / name, "cpu", **kw)
        return tmp_path / name

    # lr 0: no weight moves, so each fold's selected weights are the weights it started from
    carried, fresh = run("still_on", True, lr=0.0), run("still_off", False, lr=0.0)
    load = torch.load
    start = load(carried / "fold1/model.pt")
    assert all(torch.equal(start[k], v) for k, v in load(carried / "fold2/model.pt").items())
    assert any(not torch.equal(start[k], v) for k, v in load(fresh / "fold2/model.pt").items())
    assert not (fresh / "fold1/final.pt").exists()
    # training: fold 2 records where it started, and its run differs from the fresh start
    on, off = run("on", True), run("off", False)
    first, second = (json.loads((on / f"fold{k}/metrics.json").read_text()) for k in (1, 2))
    assert first["carried_from"] is None
    assert second["carried_from"] == {"fold": "fold1", "sha256": sha256_file(on / "fold1/final.pt")}
    assert json.loads((off / "fold2/metrics.json").read_text())["carried_from"] is None
    trained_on, trained_off = load(on / "fold2/model.pt"), load(off / "fold2/model.pt")
    assert any(not torch.equal(trained_on[k], v) for k, v in trained_off.items())
    with pytest.raises(RuntimeError, match="final weights of fold1"):  # folds run in order
        run("alone", True, only=["fold2"])
    seeded = finetune_settings(_config(quirks={"model_across_folds": True}), "img", "lora_r4", "paper")
    assert not seeded["finetune"]["quirks"]["model_across_folds"]  # seeded runs of one split: no fold loop


def test_clean_refit_of_a_lora_run(encoder_dir, data, tmp_path):
    base = finetune_settings(_config(), "llm", "lora_r4", "clean")
    settings = {**base, "hyper": {**base["hyper"], "epochs": 2, "refit": True}}
    prepared = Prepared.read(data["text"])
    split = splits_of(prepared, settings)[0]
    args = (prepared, encoder_dir("llama"), split)
    plain = run_split(*args, base | {"hyper": {**base["hyper"], "epochs": 2}}, tmp_path / "plain", "cpu", progress=False)
    metrics = run_split(*args, settings, tmp_path / "refit", "cpu", progress=False)
    rows = len(split.train) + len(split.select)
    assert plain["refit"] is False and metrics["refit"] is True
    assert metrics["refit_epochs"] == metrics["best_epoch"] == plain["best_epoch"]
    assert metrics["split"]["n_train"] == rows and metrics["refit_rows_seen"] == metrics["refit_epochs"] * rows
