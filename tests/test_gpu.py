"""GPU checks: the real code paths on a CUDA device, compared with the CPU in float32 (run by scripts/gpu-check.sh).

Each check runs one stage as the workflow runs it on a GPU and compares it with the same stage on the CPU in float32:
extraction in bfloat16 (a package-shipped MiniLM, a tiny BEiT and a tiny WavLM), a fold of head training under
``amp: auto`` (bfloat16 autocast), one LoRA step with the frozen encoder in bfloat16, the VQ-VAE's training, and
DAAM's forward/backward throughput against the device's measured copy bandwidth. Every check records its numbers, its
wall time and the peak GPU memory of its stage (``torch.cuda.max_memory_allocated``) into the JSON file named by
``DAAMFLOW_GPU_REPORT`` (if set), which ``benchmarks/gpu_report.py`` prints.

The device: CUDA when torch sees one; ``DAAMFLOW_GPU_CHECK_DEVICE`` chooses one (``cuda:1``), and ``cpu`` runs the
same checks on the CPU, so that they can be seen to work without a GPU: extraction then computes in bfloat16 on the
CPU, and head training and the LoRA step autocast to bfloat16 on the CPU (the workflow itself never autocasts on a
CPU: ``fit.use_amp`` is CUDA-only, so this mode switches that one decision on). Without CUDA and without the variable
every check is skipped.

Tolerances: bfloat16 keeps 8 significant bits (unit roundoff 2^-9 ≈ 0.2 %, about 3 significant digits); a frozen
encoder's forward pass compounds that over its layers, a training run over its steps. Each tolerance below says what
it bounds and why.
"""
import contextlib
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.io import wavfile

from conftest import write_prepared
from daamflow.atomic import write_json
from daamflow.config import load_config, train_settings
from daamflow.data.embed import embed
from daamflow.data.features import load_store, write_store
from daamflow.data.folds import make_splits
from daamflow.data.manifest import read_prepared
from daamflow.device import resolve_device, resolve_dtype
from daamflow.models.daam import DAAM
from daamflow.run import finetune, fit
from daamflow.run.lora_model import Inputs, build_model, make_optimiser
from daamflow.run.lora_settings import finetune_settings
from daamflow.run.train import run_split
from daamflow.vqvae.config import VQVAEConfig
from daamflow.vqvae.train import train_run

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
DEVICE_ENV, REPORT_ENV = "DAAMFLOW_GPU_CHECK_DEVICE", "DAAMFLOW_GPU_REPORT"
CPU = torch.device("cpu")

# Extraction: per (sample, layer), ||features - float32 features|| / ||float32 features|| over the width. The encoder
# computes in bfloat16 end to end (weights and activations, as embed's dtype "auto" on a GPU), so every matmul rounds
# its inputs to 2^-9 and the error grows over the blocks; the pooled means average some of it out. Measured on the CPU
# in bfloat16 (24 samples): at most 1.2 % (MiniLM), 1.5 % (tiny BEiT), 0.6 % (tiny WavLM). 5 % is a wrong result,
# not rounding; the cosine bound (>= 0.998, measured >= 0.9999) catches a feature that turned.
EXTRACTION_REL_TOL = 0.05
EXTRACTION_MIN_COSINE = 0.998
# Head training: a fold trained under bfloat16 autocast against the same fold in float32 on the CPU. The first
# epoch's mean training loss sees the same batches and nearly the same weights: it moves by the rounding of the
# autocast matmuls only (measured on the CPU: 1e-5 to 1e-4 relative; 2 % allows for the GPU's kernels). Later epochs
# diverge as any two float orders do, so the fold's test accuracy and macro-F1 may differ by a few test rows (0.05 =
# 2.4 of the 48 rows; measured on the CPU: equal); a real bug (a wrong cast, a layer left in the wrong dtype) costs
# far more on this store, which both heads learn (CPU accuracy 0.92 and 0.98).
HEAD_FIRST_LOSS_REL_TOL = 0.02
HEAD_METRIC_TOL = 0.05
# LoRA step (eval mode: no dropout, so both devices compute the same function): the logits and the loss with the frozen
# encoder in finetune's GPU dtype (bfloat16; also in the CPU mode) under bfloat16 autocast, against float32, within
# 5 % of the logits' scale (6 blocks compound bfloat16 rounding, as in extraction; measured on the CPU: logits 1.5 %,
# loss 0.08 %), and the gradient of the trained tensors pointing the same way
# (cosine >= 0.99 of the flattened adapter-B and head gradients, measured 0.9999; an Adam step follows its sign).
LORA_REL_TOL = 0.05
LORA_MIN_GRAD_COSINE = 0.99
# VQ-VAE: float32 on every device (no autocast); a GPU differs from the CPU by its convolution algorithms (cuDNN may
# use TF32, 10-bit mantissas) and the summation order, which can move a code assignment at a tie. The last (second)
# epoch's mean training loss within 5 %, relative (in the CPU mode both runs are one computation: equal).
VQVAE_LOSS_REL_TOL = 0.05
# DAAM forward/backward on the device against float64 on the CPU, per output (y, dx, d delta, d xi), relative in norm.
# Elementwise float32 is exact to ~1e-7, but the variance is a difference of moments (mean(x^2) - mu^2) over the 3
# layers of a head: where it nearly cancels, float32 loses digits and r = 1/sqrt(v) amplifies them (measured on the
# CPU: 5e-6 for y, 4e-4 for dx and d delta). 2e-3 leaves room for another summation order; a wrong formula or dtype
# is off by O(1).
DAAM_REL_TOL = 2e-3


# ------------------------------------------------------------------------------------------------ device and report
@pytest.fixture(scope="session")
def dev() -> torch.device:
    """The device under check: CUDA when torch sees one, else what DAAMFLOW_GPU_CHECK_DEVICE asks for, else skip."""
    asked = os.environ.get(DEVICE_ENV, "").strip()
    if not asked:
        if not torch.cuda.is_available():
            pytest.skip(f"GPU checks: torch sees no CUDA device (torch {torch.__version__}); set {DEVICE_ENV}=cpu to "
                        f"run their code paths on the CPU")
        asked = "cuda"
    try:
        return resolve_device(asked)
    except ValueError as err:
        pytest.fail(f"{DEVICE_ENV}={asked}: {err}")


@pytest.fixture(scope="session")
def report(dev):
    """``report(name, passed, **numbers)`` adds a check to the report file ($DAAMFLOW_GPU_REPORT), rewritten after
    every check, so that a run stopped by a time limit still reports the checks it finished."""
    checks: list[dict] = []  # in the order they ran
    started, path, device = time.perf_counter(), os.environ.get(REPORT_ENV), _describe(dev)

    def add(name: str, passed: bool, **numbers) -> None:
        checks.append({"name": name, "passed": bool(passed), **numbers})
        if path:
            write_json(path, {"device": device, "checks": checks, "wall_s": round(time.perf_counter() - started, 1)})

    return add


def _describe(dev: torch.device) -> dict:
    info = {"device": str(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
            "opt_in": os.environ.get(DEVICE_ENV) or None}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    else:
        info.update(name=f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    return info


def gpu_dtype(dev: torch.device) -> str:
    """The dtype a frozen encoder computes in on a GPU: embed's and finetune's "auto" on CUDA (bfloat16, float16
    where unsupported); bfloat16 in the CPU mode, where "auto" would mean float32."""
    return "auto" if dev.type == "cuda" else "bfloat16"


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@contextlib.contextmanager
def stage(dev: torch.device):
    """Wall time and peak GPU memory (MiB, None on a CPU) of the block, filled into the dict it yields."""
    numbers: dict = {}
    if dev.type == "cuda":
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    yield numbers
    _sync(dev)
    numbers["seconds"] = round(time.perf_counter() - t0, 2)
    numbers["peak_mib"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None


@pytest.fixture
def amp_on_device(dev, monkeypatch):
    """``amp: auto`` as on a GPU: on a CUDA device nothing changes; in the CPU mode, ``use_amp`` answers as it does on
    a GPU with bfloat16 (True unless ``amp: off``), so fit and finetune autocast to bfloat16 on the CPU."""
    if dev.type == "cpu":
        def as_on_a_gpu(hp: dict, _dev: torch.device) -> bool:
            return hp["amp"] != "off"

        monkeypatch.setattr(fit, "use_amp", as_on_a_gpu)
        monkeypatch.setattr(finetune, "use_amp", as_on_a_gpu)
    return fit.use_amp


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))


# ---------------------------------------------------------------------------------------------------------- inputs
N_SAMPLES = 24


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    """A prepared folder per modality; texts and clips of varied lengths, so that batches carry padding and masks."""
    root = tmp_path_factory.mktemp("gpu-prepared")
    rng = np.random.default_rng(0)
    rows = [{"id": f"s{i}", "label": i % 2} for i in range(N_SAMPLES)]
    words = "the a dog cat oak fern river stone light sound moves under over quickly slowly small large".split()
    text = [{**r, "text": " ".join(rng.choice(words, size=2 + 3 * (i % 7)))} for i, r in enumerate(rows)]
    (root / "image").mkdir()
    np.save(root / "image/images.npy", rng.integers(0, 256, size=(N_SAMPLES, 28, 28), dtype=np.uint8))
    image = [{**r, "image_index": i} for i, r in enumerate(rows)]
    (root / "audio/wav").mkdir(parents=True)
    for i, r in enumerate(rows):
        t = np.arange(4000 + 1500 * (i % 9)) / 16_000  # 0.25-1 s
        wave = 6000 * np.sin(2 * np.pi * (180 + 40 * i) * t) + 400 * rng.standard_normal(len(t))
        wavfile.write(root / f"audio/wav/{r['id']}.wav", 16_000, wave.astype(np.int16))
    audio = [{**r, "path": f"wav/{r['id']}.wav"} for r in rows]
    return {
        "text": write_prepared(root / "text", "text", text, ["a", "b"]),
        "image": write_prepared(root / "image", "image", image, ["a", "b"]),
        "audio": write_prepared(root / "audio", "audio", audio, ["a", "b"]),
    }


# ------------------------------------------------------------------------------------------------------ extraction
@pytest.mark.parametrize("encoder,modality", [("minilm", "text"), ("beit", "image"), ("wavlm", "audio")])
def test_extraction_in_bfloat16_matches_cpu_float32(encoder, modality, dev, report, encoder_dir, prepared, tmp_path):
    """embed on the device in its GPU dtype ("auto": bfloat16 on a GPU; bfloat16 asked for on the CPU) against
    float32 on the CPU, both through the float16 feature store."""
    path = encoder_dir(encoder)
    reference = load_store(embed(prepared[modality], path, tmp_path / "cpu", batch_size=8, device="cpu",
                                 dtype="float32", progress=False))
    with stage(dev) as numbers:
        store = load_store(embed(prepared[modality], path, tmp_path / "dev", batch_size=8, device=str(dev),
                                 dtype=gpu_dtype(dev), progress=False))
    got, want = (torch.from_numpy(np.asarray(s.features, dtype=np.float32)) for s in (store, reference))
    rel = (got - want).norm(dim=2) / want.norm(dim=2).clamp_min(1e-12)  # (sample, layer)
    cosine = F.cosine_similarity(got, want, dim=2)
    numbers.update(dtype=store.manifest["compute_dtype"], shape=list(got.shape), max_rel_err=round(float(rel.max()), 5),
                   median_rel_err=round(float(rel.median()), 5), min_cosine=round(float(cosine.min()), 5),
                   tolerance=f"rel <= {EXTRACTION_REL_TOL}, cosine >= {EXTRACTION_MIN_COSINE}")
    passed = float(rel.max()) <= EXTRACTION_REL_TOL and float(cosine.min()) >= EXTRACTION_MIN_COSINE
    report(f"extraction {encoder}", passed, **numbers)
    assert store.manifest["compute_dtype"] in ("bfloat16", "float16") and store.manifest["device"] == dev.type
    assert passed, numbers


# --------------------------------------------------------------------------------------------------- head training
@pytest.fixture(scope="module")
def head_store(tmp_path_factory) -> Path:
    """A feature store of MiniLM's shape (6 layers x 384) with a class signal in layers 2-3 under unit noise."""
    rng = np.random.default_rng(1)
    n, layers, width, classes = 240, 6, 384, 4
    labels = np.arange(n) % classes
    x = rng.normal(size=(n, layers, width)).astype(np.float32)
    x[:, 2:4, :classes * 8] += 2.0 * np.repeat(np.eye(classes), 8, axis=1)[labels][:, None, :]
    index = pd.DataFrame({"id": [f"s{i}" for i in range(n)], "label": labels,
                          "label_name": [f"c{k}" for k in labels], "group": [f"s{i}" for i in range(n)],
                          "split": ""})
    return write_store(tmp_path_factory.mktemp("gpu-store"), x, index, {"encoder": "synthetic"})


@pytest.mark.parametrize("method", ["daam_v1", "mha"])
def test_head_fold_under_autocast_matches_cpu_float32(method, dev, report, head_store, amp_on_device, tmp_path):
    """run/train.py's fold (wordnet's settings from config/config.yaml, 8 epochs at lr 1e-3) with ``amp: auto`` on the
    device against ``amp: off`` on the CPU."""
    base = train_settings(load_config(ROOT / "config/config.yaml"), "wordnet", method, "clean")
    hyper = {**base["hyper"], "epochs": 8, "lr": 1e-3}
    store = load_store(head_store)
    split = make_splits(store.labels, store.groups, store.splits, base["evaluation"], "clean", base["seed"],
                        hyper["dev_fraction"])[0]
    ids, classes = store.index["id"].astype(str).to_numpy(), int(store.labels.max()) + 1

    def run(device: str, amp: str, out: str) -> tuple[dict, pd.DataFrame]:
        settings = {**base, "hyper": {**hyper, "amp": amp}}
        metrics = run_split(store.features, store.labels, ids, classes, split, settings, tmp_path / out, device,
                            progress=False)
        return metrics, pd.read_csv(tmp_path / out / "history.csv")

    reference, ref_history = run("cpu", "off", "cpu")
    with stage(dev) as numbers:
        metrics, history = run(str(dev), "auto", "dev")
    first = abs(history["train_loss"][0] - ref_history["train_loss"][0]) / ref_history["train_loss"][0]
    gaps = {k: abs(metrics[k] - reference[k]) for k in ("accuracy", "macro_f1")}
    numbers.update(autocast=amp_on_device(hyper | {"amp": "auto"}, dev), accuracy=round(metrics["accuracy"], 4), cpu_accuracy=round(reference["accuracy"], 4),
                   macro_f1=round(metrics["macro_f1"], 4), cpu_macro_f1=round(reference["macro_f1"], 4),
                   first_loss_rel_err=round(float(first), 5), test_rows=len(split.test),
                   tolerance=f"first-epoch loss rel <= {HEAD_FIRST_LOSS_REL_TOL}, "
                             f"accuracy/macro-F1 +-{HEAD_METRIC_TOL}")
    passed = first <= HEAD_FIRST_LOSS_REL_TOL and max(gaps.values()) <= HEAD_METRIC_TOL
    report(f"head fold {method} (autocast)", passed, **numbers)
    assert reference["accuracy"] > 0.8, "the store's signal is meant to be learnt; the reference did not learn it"
    assert metrics["device"] == str(dev)
    assert passed, numbers


# ------------------------------------------------------------------------------------------------------------ LoRA
def test_lora_step_in_bfloat16_matches_cpu_float32(dev, report, encoder_dir, prepared, amp_on_device):
    """One LoRA step through run/lora_model.py (wordnet's lora_r8 settings on the package-shipped MiniLM): the frozen
    encoder in the dtype finetune gives it on the device, under fit's autocast, against float32 on the CPU."""
    settings = finetune_settings(load_config(ROOT / "config/config.yaml"), "wordnet", "lora_r8", "clean")
    path, hp = encoder_dir("minilm"), settings["hyper"]
    df, meta = read_prepared(prepared["text"])
    rows, labels = np.arange(8), torch.from_numpy(df["label"].to_numpy()[:8])

    def step(device: torch.device, amp: bool) -> dict:
        dtype = resolve_dtype(device, gpu_dtype(device)) if amp else torch.float32  # finetune.run_split's choice
        torch.manual_seed(0)
        model, base, _ = build_model(path, settings, len(meta["classes"]), device, dtype)
        model.eval()  # no dropout: both devices compute the same function
        feed = Inputs(prepared["text"], df, "text", base, path, settings["finetune"]["max_length"])
        optimiser = make_optimiser(model, settings)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):  # as fit runs a step
            logits = feed.logits(model, rows, device, dtype)
        loss = fit.loss_of(logits.float(), labels.to(device), hp)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        grads = torch.cat([p.grad.detach().float().flatten().cpu() for n, p in model.named_parameters()
                           if p.requires_grad and p.grad is not None and ("lora_B" in n or n.startswith("head."))])
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        optimiser.step()
        moved = any(not torch.equal(a, p.detach()) for a, p in zip(before, (p for p in model.parameters()
                                                                            if p.requires_grad)))
        return {"logits": logits.detach().float().cpu(), "loss": loss.detach().item(), "grads": grads, "moved": moved,
                "dtype": str(next(base.parameters()).dtype).removeprefix("torch.")}

    reference = step(CPU, amp=False)
    with stage(dev) as numbers:
        got = step(dev, amp=amp_on_device(hp, dev))
    logit_err, cosine = _relative(got["logits"], reference["logits"]), _cosine(got["grads"], reference["grads"])
    loss_err = abs(got["loss"] - reference["loss"]) / reference["loss"]
    numbers.update(encoder_dtype=got["dtype"], loss=round(got["loss"], 5), cpu_loss=round(reference["loss"], 5),
                   logits_rel_err=round(logit_err, 5), loss_rel_err=round(loss_err, 5), grad_cosine=round(cosine, 5),
                   tolerance=f"logits/loss rel <= {LORA_REL_TOL}, gradient cosine >= {LORA_MIN_GRAD_COSINE}")
    passed = logit_err <= LORA_REL_TOL and loss_err <= LORA_REL_TOL and cosine >= LORA_MIN_GRAD_COSINE
    report("LoRA step (lora_r8, MiniLM)", passed and got["moved"], **numbers)
    assert got["moved"] and math.isfinite(got["loss"])
    assert passed, numbers


# ---------------------------------------------------------------------------------------------------------- VQ-VAE
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """An image_dir dataset (the COCO layout: train2017/, val2017/) of 32 x 32 PNGs with shapes on noise."""
    root = tmp_path_factory.mktemp("gpu-images")
    rng = np.random.default_rng(2)
    for split, count in (("train2017", 64), ("val2017", 16)):
        (root / split).mkdir()
        for i in range(count):
            image = rng.integers(0, 60, size=(32, 32, 3), dtype=np.uint8)
            top, left = rng.integers(0, 20, size=2)
            image[top:top + 12, left:left + 12] = rng.integers(120, 256, size=3, dtype=np.uint8)
            Image.fromarray(image).save(root / split / f"{i:03d}.png")
    return root


def test_vqvae_training_matches_cpu(dev, report, image_dir, tmp_path):
    """vqvae/train.py's run (the daam variant: Mixture-of-DAAM blocks) on the device against the CPU, both float32."""
    cfg = VQVAEConfig(hidden_dims=[16, 32], latent_dim=16, num_embeddings=32, daam_heads=2, daam_gaussians=2,
                      norm_groups=4, dataset="image_dir", image_dir=str(image_dir), image_size=32, batch_size=16,
                      epochs=2, lr=3e-3)
    reference = train_run(cfg, "daam", 0, tmp_path / "cpu", device="cpu", threads=None, grid_images=4)
    with stage(dev) as numbers:
        metrics = train_run(cfg, "daam", 0, tmp_path / "dev", device=str(dev), threads=None, grid_images=4)
    loss, cpu_loss = metrics["final_train"]["train_loss"], reference["final_train"]["train_loss"]
    rel = abs(loss - cpu_loss) / cpu_loss
    numbers.update(train_loss=round(loss, 5), cpu_train_loss=round(cpu_loss, 5), loss_rel_err=round(rel, 5),
                   test_psnr=round(metrics["metrics"]["psnr"], 2), cpu_test_psnr=round(reference["metrics"]["psnr"], 2),
                   tolerance=f"last epoch's training loss rel <= {VQVAE_LOSS_REL_TOL}")
    history = pd.read_csv(tmp_path / "dev/history.csv")
    passed = rel <= VQVAE_LOSS_REL_TOL and history["train_loss"].iloc[-1] < history["train_loss"].iloc[1]
    report("VQ-VAE (daam variant)", passed, **numbers)
    assert metrics["device"] == str(dev) and math.isfinite(loss)
    assert passed, numbers


# ------------------------------------------------------------------------------------------------- DAAM throughput
def copy_bandwidth(dev: torch.device, repeats: int = 5) -> float:
    """Bytes per second of a 256 MiB float32 copy on the device (read + write), beyond any cache."""
    src = torch.ones(64 * 2**20, device=dev)
    dst = torch.empty_like(src)
    return 2 * src.numel() * src.element_size() / _fastest(lambda: dst.copy_(src), dev, repeats)


def _fastest(fn, dev: torch.device, repeats: int) -> float:
    """The shortest of ``repeats`` timed calls after one warm-up call, the device synchronised around each."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return min(times)


def test_daam_forward_backward_throughput(dev, report):
    """DAAMv1's fused forward + backward (8 heads, 24 layers x 1024, the shape of benchmarks/bench_daam.py; a batch
    of 2048 on a GPU, so that each tensor (201 MB) exceeds its L2 cache) as bytes moved per second, against the
    device's copy bandwidth. Bytes moved: 5 tensors of the input's size (forward reads x and writes y, backward
    reads x and dy and writes dx), as bench_daam's roofline. Correctness first: the device against float64 on the
    CPU on a small batch."""
    torch.manual_seed(0)
    module = DAAM(24, 1024, num_heads=8)
    with torch.no_grad():  # away from init so that every gradient term is exercised
        module.mean_offset.normal_(0, 0.05)
        module.scaled_variance.normal_(2, 0.05)
    x_small, dy_small = torch.randn(16, 24, 1024, dtype=torch.float64), torch.randn(16, 24, 1024, dtype=torch.float64)

    def forward_backward(m: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor) -> list[torch.Tensor]:
        x = x.detach().requires_grad_(True)
        y = m(x)
        dx, d_delta, d_xi = torch.autograd.grad(y, [x, m.mean_offset, m.scaled_variance], dy)
        return [y, dx, d_delta, d_xi]

    want = forward_backward(module.double(), x_small, dy_small)
    module = module.float().to(dev)
    got = forward_backward(module, x_small.float().to(dev), dy_small.float().to(dev))
    errors = [_relative(g.cpu().double(), w) for g, w in zip(got, want)]

    batch = 2048 if dev.type == "cuda" else 256
    x, dy = torch.randn(batch, 24, 1024, device=dev), torch.randn(batch, 24, 1024, device=dev)
    with stage(dev) as numbers:
        bandwidth = copy_bandwidth(dev)
        seconds = _fastest(lambda: forward_backward(module, x, dy), dev, repeats=10)
    throughput = 5 * x.numel() * x.element_size() / seconds
    numbers.update(shape=list(x.shape), fwd_bwd_ms=round(seconds * 1e3, 3), throughput_gbs=round(throughput / 1e9, 1),
                   copy_bandwidth_gbs=round(bandwidth / 1e9, 1), share_of_copy=round(throughput / bandwidth, 3),
                   max_rel_err=float(f"{max(errors):.2e}"), tolerance=f"rel <= {DAAM_REL_TOL} against float64")
    passed = max(errors) <= DAAM_REL_TOL and all(torch.isfinite(t).all() for t in got)
    report("DAAM fwd+bwd throughput", passed, **numbers)
    assert passed, numbers
