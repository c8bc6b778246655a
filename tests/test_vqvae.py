"""VQ-VAE stage: model pieces, metrics, training with resume, data loaders, CLI and the combined table."""
from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from daamflow.models.daam import MixtureDAAM
from daamflow.vqvae import cli
from daamflow.vqvae.config import VARIANTS, VQVAEConfig
from daamflow.vqvae.data import load_datasets
from daamflow.vqvae.metrics import codebook_perplexity, psnr, ssim
from daamflow.vqvae.model import VQVAE, VectorQuantizer, parameter_counts
from daamflow.vqvae.train import train_run

MICRO = VQVAEConfig(
    hidden_dims=[8, 8], latent_dim=8, num_embeddings=16, daam_heads=2, daam_gaussians=2, norm_groups=2,
    dataset="fashion_mnist", image_size=16, train_images=64, test_images=16, batch_size=16, epochs=2, lr=3e-3,
)


def _model(variant: str, cfg: VQVAEConfig = MICRO, seed: int = 0, channels: int = 1) -> VQVAE:
    torch.manual_seed(seed)
    return VQVAE(cfg, variant, channels)


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_through_encoder_quantiser_decoder(variant):
    model = _model(variant)
    x = torch.rand(3, 1, 16, 16)
    z = model.encoder(x)
    assert z.shape == (3, MICRO.latent_dim, 4, 4)  # 16 / 2**len(hidden_dims)
    q = model.quantizer(z)
    assert q.quantized.shape == z.shape and q.indices.shape == (3, 4, 4) and q.indices.dtype == torch.int64
    assert model.decoder(q.quantized).shape == x.shape
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.vq_loss.ndim == 0


def test_straight_through_gradient_reaches_the_encoder():
    model = _model("daam")
    x = torch.rand(2, 1, 16, 16)
    F.mse_loss(model(x).reconstruction, x).backward()  # reconstruction only: no commitment term to help
    grad = model.encoder.stem.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # The estimator itself: forward = codebook vectors, d(quantized)/dz = identity.
    vq = VectorQuantizer(4, 3)
    z = torch.randn(1, 3, 2, 2, requires_grad=True)
    out = vq(z)
    assert torch.allclose(out.quantized, vq.codebook[out.indices].permute(0, 3, 1, 2))
    out.quantized.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_quantiser_picks_nearest_code_and_its_perplexity():
    vq = VectorQuantizer(4, 4)
    with torch.no_grad():
        vq.codebook.copy_(torch.eye(4) * 2)
    z = (torch.eye(4) * 2 + 0.1).repeat(2, 1).T.reshape(1, 4, 2, 4)  # columns: codes 0..3, twice each
    out = vq(z)
    assert out.indices.flatten().tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert out.perplexity.item() == pytest.approx(4.0)
    assert vq(torch.full((1, 4, 2, 2), 0.0) + vq.codebook[2].view(1, 4, 1, 1)).perplexity.item() == pytest.approx(1.0)


@pytest.mark.parametrize("counts, expected", [
    ([5, 5, 5, 0, 0], 3.0), ([7, 0, 0, 0], 1.0), ([1] * 64, 64.0),
    ([3, 1], math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))),
])
def test_codebook_perplexity(counts, expected):
    assert codebook_perplexity(torch.tensor(counts)).item() == pytest.approx(expected, rel=1e-6)


def test_ema_codebook_moves_only_in_training_and_has_no_gradient():
    vq = VectorQuantizer(2, 2, ema=True, decay=0.5)
    assert not vq.codebook.requires_grad
    z = torch.full((1, 2, 1, 1), 3.0)
    before = vq.codebook.clone()
    vq.eval()
    vq(z)
    assert torch.equal(vq.codebook, before)
    vq.train()
    for _ in range(30):
        vq(z)
    assert vq.codebook.detach().sub(3.0).abs().min(dim=1).values.min() < 1e-3  # the used code converged to z


def test_variants_differ_exactly_by_the_mixture_daam_parameters():
    cfg = VQVAEConfig.from_dict({"hidden_dims": [8, 16, 16], "daam_heads": 4, "daam_gaussians": 3}, MICRO)
    plain, daam = _model("plain", cfg), _model("daam", cfg)
    n_blocks = 2 * len(cfg.hidden_dims)  # one residual block per level, encoder and decoder
    daam_modules = [m for m in daam.modules() if isinstance(m, MixtureDAAM)]
    assert len(daam_modules) == n_blocks and not any(isinstance(m, MixtureDAAM) for m in plain.modules())
    assert all(m.norm_axis == 1 and m.num_heads == 4 and m.num_gaussians == 3 for m in daam_modules)
    p, d = parameter_counts(plain), parameter_counts(daam)
    assert d["total"] - p["total"] == d["daam"] == n_blocks * 4 * 3 * 2
    shapes = lambda m: {k: v.shape for k, v in m.named_parameters() if ".attention." not in k}
    assert shapes(plain) == shapes(daam)


def test_psnr_and_ssim_sanity():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 20)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    assert torch.equal(psnr(x, x), torch.full((2,), 100.0))  # documented cap: MSE floored at 1e-10
    assert psnr(torch.full((1, 1, 4, 4), 0.5), torch.full((1, 1, 4, 4), 0.6)).item() == pytest.approx(20.0)
    # Constant images: variances and covariance vanish, so SSIM reduces to the luminance term.
    a, b = 0.3, 0.7
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    assert ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b)).item() == pytest.approx(expected)
    noisy = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    s = ssim(noisy, x)
    assert (s < 0.9).all() and torch.allclose(s, ssim(x, noisy))
    assert ssim(torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6)).shape == (1,)  # smaller than the window


def _png(path) -> np.ndarray:
    """The image's RGB pixels; a drawn figure, not a blank canvas: dark and light pixels both present."""
    from PIL import Image

    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.min() < 64 and pixels.max() > 192
    return pixels


def _grid_pixels(rows: int, images: int = 8, dpi: int = 150) -> tuple[int, int]:
    """(height, width) of a reconstruction mosaic: 0.9 in per image across, 0.9 in per row down."""
    return round((0.9 * rows + 0.3) * dpi), round(max(4.0, 0.9 * images + 1.5) * dpi)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Micro runs: plain and daam uninterrupted, and daam interrupted after one epoch then resumed."""
    root = tmp_path_factory.mktemp("vqvae_runs")
    out = {v: root / v for v in VARIANTS}
    for v in VARIANTS:
        train_run(MICRO, v, 0, out[v], threads=None)
    out["resumed"] = root / "resumed"
    assert train_run(MICRO, "daam", 0, out["resumed"], threads=None, stop_after_epochs=1) is None
    assert not (out["resumed"] / "metrics.json").exists()
    train_run(MICRO, "daam", 0, out["resumed"], threads=None)
    return out


def test_training_improves_reconstruction_and_writes_outputs(runs):
    history = pd.read_csv(runs["daam"] / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]  # 0 = the untrained model
    assert history["test_mse"].iloc[-1] < 0.8 * history["test_mse"].iloc[0]
    assert history["train_recon_mse"].iloc[2] < history["train_recon_mse"].iloc[1]
    for name in ("metrics.json", "samples.npz", "model.pt", "checkpoint.pt"):
        assert (runs["daam"] / name).stat().st_size > 0
    assert _png(runs["daam"] / "loss_curves.png").shape == (432, 1200, 3)  # two panels: 10 × 3.6 in at 120 dpi
    assert _png(runs["daam"] / "reconstructions.png").shape[:2] == _grid_pixels(rows=2)
    m = json.loads((runs["daam"] / "metrics.json").read_text())
    assert m["variant"] == "daam" and m["seed"] == 0 and m["config"]["hidden_dims"] == [8, 8]
    assert m["parameters"]["daam"] == 4 * 2 * 2 * 2 and m["n_test"] == 16 and m["wall_time_s"] > 0
    assert m["torch_version"] == torch.__version__
    assert 1 <= m["metrics"]["perplexity"] <= m["metrics"]["codes_used"] <= 16
    with np.load(runs["daam"] / "samples.npz") as samples:
        assert samples["originals"].shape == samples["reconstructions"].shape == (8, 1, 16, 16)


def test_resume_gives_the_same_final_numbers(runs):
    full = json.loads((runs["daam"] / "metrics.json").read_text())
    resumed = json.loads((runs["resumed"] / "metrics.json").read_text())
    assert resumed["metrics"] == full["metrics"] and resumed["final_train"] == full["final_train"]
    history = [pd.read_csv(runs[k] / "history.csv") for k in ("daam", "resumed")]
    pd.testing.assert_frame_equal(*history)
    a = torch.load(runs["daam"] / "model.pt")["model"]
    b = torch.load(runs["resumed"] / "model.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_another_run_is_refused(runs):
    with pytest.raises(ValueError, match="seed"):
        train_run(MICRO, "daam", 1, runs["resumed"], threads=None)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.main(parser.parse_args(argv))


def test_cli_train_and_table(runs, tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps(vars(MICRO) | {"epochs": 5}))
    run1 = tmp_path / "plain_s1"
    assert _cli(["train", "--variant", "plain", "--seed", "1", "--out", str(run1), "--params-json", str(params),
                 "--epochs", "1", "--threads", "1"]) == 0  # the flag overrides the JSON
    m = json.loads((run1 / "metrics.json").read_text())
    assert m["epochs_run"] == 1 and m["config"]["latent_dim"] == 8 and m["seed"] == 1

    csv, md, grid = tmp_path / "t.csv", tmp_path / "t.md", tmp_path / "grid.png"
    with pytest.raises(ValueError, match="epochs"):  # runs trained differently are not averaged together
        _cli(["table", "--runs", str(runs["plain"]), str(run1), "--out-csv", str(csv), "--out-md", str(md)])
    assert _cli(["table", "--runs", str(runs["plain"]), str(runs["daam"]), str(runs["resumed"]), "--out-csv",
                 str(csv), "--out-md", str(md), "--grid-out", str(grid)]) == 0
    table = pd.read_csv(csv).set_index("variant")
    assert table.loc["daam", "n_runs"] == 2 and table.loc["plain", "n_runs"] == 1
    assert table.loc["daam", "mse_std"] == 0.0  # the resumed run is identical to the uninterrupted one
    assert table.loc["daam", "params_total"] - table.loc["plain", "params_total"] == table.loc["daam", "params_daam"]
    text = md.read_text()
    assert "±" in text and "| plain" in text and "| daam" in text
    assert _png(grid).shape[:2] == _grid_pixels(rows=3)  # originals, plain, daam


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown VQ-VAE hyper-parameter"):
        VQVAEConfig.from_dict({"hiden_dims": [8]})
    with pytest.raises(ValueError, match="hidden_dims must be list"):
        VQVAEConfig.from_dict({"hidden_dims": "16"})
    with pytest.raises(ValueError, match="epochs must be int, got 2.5"):
        VQVAEConfig.from_dict({"epochs": 2.5})
    cfg = VQVAEConfig.from_dict({"lr": 1, "train_images": None, "ema": True})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.train_images is None and cfg.ema
    with pytest.raises(ValueError, match="norm_groups"):
        VQVAEConfig.from_dict({"hidden_dims": [5]}, MICRO).validate()
    with pytest.raises(ValueError, match="image_size"):
        VQVAEConfig.from_dict({"image_size": 18}, MICRO).validate()


def test_image_dir_errors_explain_the_layout(tmp_path):
    cfg = VQVAEConfig.from_dict({"dataset": "image_dir", "image_dir": str(tmp_path / "missing")}, MICRO)
    with pytest.raises(FileNotFoundError, match="train2017.*val2017.*train2017.zip"):
        load_datasets(cfg)
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "coco" / "val2017").mkdir()
    with pytest.raises(FileNotFoundError, match="no .jpg/.png images in .*train2017"):
        load_datasets(VQVAEConfig.from_dict({"image_dir": str(tmp_path / "coco")}, cfg))
    with pytest.raises(ValueError, match="image_dir"):
        load_datasets(VQVAEConfig.from_dict({"image_dir": None}, cfg))


def test_image_dir_loader_resizes_crops_and_trains(tmp_path):
    from PIL import Image

    root = tmp_path / "coco"
    for sub, n in (("train2017", 4), ("val2017", 2)):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            arr = np.zeros((20, 40, 3), dtype=np.uint8)  # wide image: left half black, right half white
            arr[:, 20:] = 255
            Image.fromarray(arr if i % 2 else arr[..., 0]).save(root / sub / f"{i:03d}.{'png' if i % 2 else 'jpg'}")
        (root / sub / "notes.txt").write_text("ignored")
    cfg = VQVAEConfig.from_dict({"dataset": "image_dir", "image_dir": str(root), "epochs": 1, "batch_size": 2}, MICRO)
    train, test, channels = load_datasets(cfg)
    assert (len(train), len(test), channels) == (4, 2, 3)
    (img,) = test[1]
    assert img.shape == (3, 16, 16) and 0 <= img.min() and img.max() <= 1
    assert img[:, :, :6].max() < 0.1 and img[:, :, 10:].min() > 0.9  # centre crop of the 32×16 resize
    m = train_run(cfg, "daam", 0, tmp_path / "run", threads=None)
    assert m["image_channels"] == 3 and np.isfinite(m["metrics"]["mse"])
