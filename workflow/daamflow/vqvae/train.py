"""Train and evaluate one VQ-VAE run (one variant, one seed), resumable from its per-epoch checkpoint.

The checkpoint is read with the runs' shared ``read_checkpoint`` (a damaged one is set aside and the run starts over)
and written with the one atomic writer. A checkpoint of another config, variant or seed is refused, not overwritten.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from daamflow.atomic import atomic_write, save_torch, write_csv, write_json
from daamflow.run.fit import read_checkpoint
from daamflow.vqvae.config import VQVAEConfig, check_variant
from daamflow.vqvae.data import load_datasets, loader
from daamflow.vqvae.metrics import codebook_perplexity, psnr, ssim
from daamflow.vqvae.model import VQVAE, parameter_counts
from daamflow.vqvae.plots import plot_grid, plot_history

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(model: VQVAE, batches: DataLoader, device: torch.device | str = "cpu", keep: int = 0) -> dict[str, Any]:
    """Held-out metrics; reconstructions clamped to [0, 1]. ``keep`` first images are returned under "samples".

    mse is the mean over all pixels; psnr and ssim are means of per-image values; perplexity and usage are over the
    whole split's code assignments.
    """
    model.eval()
    k = model.quantizer.num_embeddings
    counts = torch.zeros(k, dtype=torch.long)
    sq_err = psnr_sum = ssim_sum = 0.0
    n_img = n_px = 0
    originals, recons = [], []
    for (x,) in batches:
        x = x.to(device)
        out = model(x)
        r = out.reconstruction.clamp(0.0, 1.0)
        sq_err += (r - x).square().sum().item()
        psnr_sum += psnr(r, x).sum().item()
        ssim_sum += ssim(r, x).sum().item()
        n_img, n_px = n_img + x.shape[0], n_px + x.numel()
        counts += torch.bincount(out.indices.flatten().cpu(), minlength=k)
        if sum(len(o) for o in originals) < keep:
            originals.append(x.cpu())
            recons.append(r.cpu())
    used = int((counts > 0).sum())
    result = {
        "mse": sq_err / n_px, "psnr": psnr_sum / n_img, "ssim": ssim_sum / n_img,
        "perplexity": float(codebook_perplexity(counts)), "codes_used": used, "codebook_usage": used / k,
        "n_images": n_img,
    }
    if keep:
        result["samples"] = (torch.cat(originals)[:keep].numpy(), torch.cat(recons)[:keep].numpy())
    return result


def _train_epoch(model: VQVAE, batches: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device | str,
                 desc: str) -> dict[str, float]:
    model.train()
    totals = {"train_loss": 0.0, "train_recon_mse": 0.0, "train_vq_loss": 0.0, "train_perplexity": 0.0}
    n = 0
    for (x,) in tqdm(batches, desc=desc, leave=False, disable=None):
        x = x.to(device)
        out = model(x)
        recon = F.mse_loss(out.reconstruction, x)
        loss = recon + out.vq_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in zip(totals, (loss, recon, out.vq_loss, out.perplexity)):
            totals[key] += value.item() * x.shape[0]
        n += x.shape[0]
    return {key: value / n for key, value in totals.items()}


def train_run(cfg: VQVAEConfig, variant: str, seed: int, out_dir: Path | str, *, device: str = "cpu",
              threads: int | None = 1, workers: int = 0, stop_after_epochs: int | None = None,
              grid_images: int = 8) -> dict[str, Any] | None:
    """Train one variant with one seed, checkpointing every epoch to ``out_dir/checkpoint.pt``, then evaluate.

    An existing checkpoint in ``out_dir`` with the same config, variant and seed is resumed from its next epoch
    (on CPU the final numbers equal those of an uninterrupted run: the shuffling of epoch e is seeded by (seed, e)).
    ``stop_after_epochs`` ends this call after that many epochs (e.g. a job's time slice) and returns None.
    Returns the metrics written to ``out_dir/metrics.json``.
    """
    cfg.validate()
    check_variant(variant)
    if threads:
        torch.set_num_threads(threads)
    train_set, test_set, channels = load_datasets(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = VQVAE(cfg, variant, channels).to(device)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    test_loader = loader(test_set, cfg, None, workers)
    identity = {"config": dataclasses.asdict(cfg), "variant": variant, "seed": seed}

    ckpt_path = out / "checkpoint.pt"
    state = _resume(ckpt_path, identity, model, optimizer)
    if state is not None:
        history, wall, start_epoch = state["history"], state["wall_time_s"], state["epoch"] + 1
        log.info("resuming %s from epoch %d (%s)", variant, start_epoch, ckpt_path)
    else:
        t0 = time.perf_counter()
        history = [{"epoch": 0, **_epoch_eval(model, test_loader, device)}]  # the untrained model, for the curve
        start_epoch, wall = 1, time.perf_counter() - t0

    done_now = 0
    for epoch in range(start_epoch, cfg.epochs + 1):
        if stop_after_epochs is not None and done_now >= stop_after_epochs:
            log.info("stopping after %d epoch(s) as asked; rerun to resume at epoch %d", done_now, epoch)
            return None
        t0 = time.perf_counter()
        batches = loader(train_set, cfg, seed * 100_003 + epoch, workers)
        row = {"epoch": epoch, **_train_epoch(model, batches, optimizer, device, f"{variant} s{seed} e{epoch}")}
        row.update(_epoch_eval(model, test_loader, device))
        wall += time.perf_counter() - t0
        history.append(row)
        log.info("%s seed %d epoch %d/%d: train loss %.5f, recon %.5f, perplexity %.1f; test mse %.5f, psnr %.2f",
                 variant, seed, epoch, cfg.epochs, row["train_loss"], row["train_recon_mse"],
                 row["train_perplexity"], row["test_mse"], row["test_psnr"])
        state = {"identity": identity, "epoch": epoch, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "history": history, "wall_time_s": wall}
        save_torch(ckpt_path, state)
        done_now += 1

    t0 = time.perf_counter()
    final = evaluate(model, test_loader, device, keep=grid_images)
    originals, recons = final.pop("samples")
    wall += time.perf_counter() - t0
    metrics = {
        **identity,
        "metrics": final,
        "final_train": {k: v for k, v in history[-1].items() if k.startswith("train_")},
        "parameters": parameter_counts(model),
        "n_train": len(train_set), "n_test": len(test_set), "image_channels": channels,
        "epochs_run": len(history) - 1, "wall_time_s": wall, "device": str(device),
        "torch_version": torch.__version__, "python_version": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    save_torch(out / "model.pt", {"identity": identity, "model": model.state_dict()})
    atomic_write(out / "samples.npz", functools.partial(_savez, originals=originals, reconstructions=recons))
    write_csv(out / "history.csv", pd.DataFrame(history))
    plot_history(out / "loss_curves.png", history, f"VQ-VAE {variant}, seed {seed}")
    plot_grid(out / "reconstructions.png", originals, [(f"{variant} reconstructions", recons)])
    write_json(out / "metrics.json", metrics)
    log.info("%s seed %d: test mse %.5f, psnr %.2f dB, ssim %.4f, perplexity %.1f, usage %.2f (%s)", variant, seed,
             final["mse"], final["psnr"], final["ssim"], final["perplexity"], final["codebook_usage"], out)
    return metrics


def _resume(ckpt_path: Path, identity: dict[str, Any], model: VQVAE, optimizer: torch.optim.Optimizer
            ) -> dict[str, Any] | None:
    """The checkpoint's state, its weights and optimiser state loaded, or None (no loadable checkpoint).

    One of another config, variant or seed is an error rather than a fresh start: ``--out`` names one run's folder.
    """
    state = read_checkpoint(ckpt_path, identity["variant"])
    if state is None:
        return None
    mismatched = [k for k in identity if state["identity"][k] != identity[k]]
    if mismatched:
        raise ValueError(
            f"{ckpt_path} belongs to a run with a different {', '.join(mismatched)}; delete it or choose another --out"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state


def _epoch_eval(model: VQVAE, batches: DataLoader, device: torch.device | str) -> dict[str, float]:
    m = evaluate(model, batches, device)
    return {f"test_{k}": m[k] for k in ("mse", "psnr", "ssim", "perplexity", "codebook_usage")}


def _savez(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as fh:  # a file object: given a path without ".npz" (the temp file), numpy appends one
        np.savez_compressed(fh, **arrays)
