"""BEiT's masked image modelling on Fashion-MNIST training images that no evaluation sample holds."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from daamflow.data.manifest import read_prepared, sha256_file
from daamflow.data.pretrain import kmeans, nearest, train_loop

log = logging.getLogger(__name__)


def excluded_indices(exclude: list[Path], source: str) -> tuple[set[int], list[dict], str | None]:
    """Training-split image indices of the prepared ``fashion_mnist`` folders in ``exclude`` (their ids are
    ``fmnist-<split>-<index>``), a record of each folder (source, counts, manifest sha256), and the first one's root."""
    indices, record, root = set(), [], None
    for folder in exclude:
        df, meta = read_prepared(folder)
        if meta["source"] != source:
            raise ValueError(f"pretrain: {folder} is a {meta['source']} dataset; a {source} pretraining can only "
                             f"exclude {source} samples")
        train = df["id"][df["id"].str.startswith("fmnist-train-")]
        indices |= {int(i.rsplit("-", 1)[1]) for i in train}
        root = root or meta.get("options", {}).get("root")
        record.append({"data": str(folder), "source": meta["source"], "samples": len(df),
                       "excluded_train_images": len(train), "manifest_sha256": sha256_file(folder / "manifest.csv")})
    return indices, record, root


def pooled_decoder(width: int, pixels: int):
    """Pooled block output -> the whole image: each feature standardised over the batch (as a probe's scaler does;
    MIM keeps the residual stream around 0.01), then one linear map, so the pooled features become *linearly*
    informative, as a probe reads them (docs/architecture.md §10)."""
    import torch

    return torch.nn.Sequential(torch.nn.BatchNorm1d(width, affine=False), torch.nn.Linear(width, pixels))


def pretraining_pool(settings: dict, exclude: list[Path]) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images uint8 n×28×28, their training-split indices, a data record): ``steps × batch_size`` images drawn
    (seeded) from the official training split minus every excluded index; the test split is never used."""
    from daamflow.data.datasets.fashion_mnist import DEFAULT_ROOT, load_split

    excluded, record, eval_root = excluded_indices(exclude, "fashion_mnist")
    root = str(settings["root"] or eval_root or DEFAULT_ROOT)
    images, _ = load_split("train", root)
    pool = np.setdiff1d(np.arange(len(images)), np.fromiter(excluded, dtype=np.int64, count=len(excluded)))
    wanted = settings["steps"] * settings["batch_size"]
    rng = np.random.default_rng(settings["seed"])
    picked = np.sort(rng.choice(pool, size=min(wanted, len(pool)), replace=False))
    overlap = excluded.intersection(picked.tolist())
    if overlap:  # cannot happen; the check makes the guarantee explicit
        raise AssertionError(f"pretraining images overlap the evaluation sample: {sorted(overlap)[:5]}")
    return images[picked], picked, {
        "source": "fashion_mnist", "split": "train", "root": root, "images": int(len(picked)),
        "pool": int(len(pool)), "indices_sha256": _digest(picked), "excluded": record,
    }


def _digest(indices: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(indices, dtype="<i8").tobytes()).hexdigest()


def pretrain_mim(model_config, settings: dict, exclude: list[Path]):
    """Masked image modelling: returns (``BeitModel`` with the trained weights, record)."""
    import torch
    import transformers

    images, _, data = pretraining_pool(settings, exclude)
    cfg = model_config
    size, patch, channels = cfg.image_size, cfg.patch_size, cfg.num_channels
    if channels != 1 or size % patch:
        raise ValueError(f"pretrain (beit): Fashion-MNIST needs num_channels 1 and an image_size divisible by "
                         f"patch_size, got {channels}, {size}, {patch}")
    x = torch.tensor(images, dtype=torch.float32).div(255).sub(0.5).div(0.5).unsqueeze(1)  # the processor's scaling
    if size != 28:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    grid = size // patch
    patches = x.unfold(2, patch, patch).unfold(3, patch, patch).reshape(len(x), grid * grid, patch * patch)
    gen = torch.Generator().manual_seed(settings["seed"])
    flat = patches.reshape(-1, patch * patch)
    sample = flat[torch.randperm(len(flat), generator=gen)[:20_000]]
    codebook = kmeans(sample, settings["visual_tokens"], 15, gen)
    tokens = nearest(flat, codebook).reshape(len(x), grid * grid)
    log.info("pretrain (beit): %d images, %d visual tokens (%d used)", len(x), len(codebook), len(tokens.unique()))

    mim_config = transformers.BeitConfig(**{**cfg.to_dict(), "vocab_size": settings["visual_tokens"],
                                            "use_mask_token": True})
    mim = transformers.BeitForMaskedImageModeling(mim_config)
    mim.train()
    bs, n_patches = settings["batch_size"], grid * grid
    n_masked = max(1, int(round(settings["mask_ratio"] * n_patches)))

    def batch(step: int):
        rows = torch.arange(step * bs, (step + 1) * bs) % len(x)
        order = torch.rand(bs, n_patches, generator=gen).argsort(1)[:, :n_masked]
        mask = torch.zeros(bs, n_patches, dtype=torch.bool).scatter_(1, order, True)
        return x[rows], mask, tokens[rows][mask]

    weight = float(settings["pooled_reconstruction"])
    layers = range(cfg.num_hidden_layers) if settings["pooled_layers"] == "all" else [cfg.num_hidden_layers - 1]
    decoders = torch.nn.ModuleList(pooled_decoder(cfg.hidden_size, size * size) for _ in layers)
    recon = []  # the pooled reconstruction term of every step

    def loss(b):
        pixels, mask, labels = b
        if weight == 0:
            return mim(pixels, bool_masked_pos=mask, labels=labels).loss
        # from the MIM pass itself (masked input): decoding an extra unmasked quarter batch instead cost 25 % more
        # CPU for the same probe accuracy (docs/architecture.md §10)
        out = mim(pixels, bool_masked_pos=mask, labels=labels, output_hidden_states=True)
        # the embed step's image pooling: the mean over all tokens (CLS + patches) of a block's output; the target
        # is the whole image at the processor's scale
        target = pixels.flatten(1)
        term = torch.stack([torch.nn.functional.mse_loss(dec(out.hidden_states[1 + i].mean(1)), target)
                            for i, dec in zip(layers, decoders)]).mean()
        recon.append(term.item())
        return out.loss + weight * term

    curve = train_loop(list(mim.parameters()) + list(decoders.parameters()), settings, batch, loss,
                       "pretrain beit (MIM)")
    base = transformers.BeitModel(cfg)
    missing, unexpected = base.load_state_dict(mim.beit.state_dict(), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise RuntimeError(f"pretrain (beit): weights do not fit BeitModel: missing {missing}, unexpected {unexpected}")
    scale = rescale_residual_stream(base, x[:512])
    objective = "mim (BEiT: masked patches -> k-means visual tokens)"
    if weight > 0:
        objective += f" + {weight:g} x pooled reconstruction ({settings['pooled_layers']} block(s))"
    record = {"objective": objective, "data": data,
              "visual_tokens_used": int(len(tokens.unique())), "loss_curve": curve, "residual_scale": scale}
    if weight > 0:  # the term's own curve, on the steps of the total loss's
        ends = [end for end, _ in curve]
        record["pooled_reconstruction_curve"] = [[end, round(float(np.mean(recon[start:end])), 4)]
                                                 for start, end in zip([0] + ends[:-1], ends)]
    return base, record


# the parameters that make up BEiT's residual stream: the embeddings and every block's layer scale
_RESIDUAL = ("embeddings.cls_token", "embeddings.mask_token", "embeddings.position_embeddings",
             "embeddings.patch_embeddings.projection.weight", "embeddings.patch_embeddings.projection.bias",
             ".lambda_1", ".lambda_2")


def rescale_residual_stream(model, pixels) -> float:
    """Scale BEiT's residual stream so that its mean-pooled block outputs have a per-feature spread of about 1 over
    ``pixels``; returns the factor.

    In a pre-LN transformer every block reads its input through a layer norm, so multiplying the embeddings and the
    blocks' layer scales (lambda_1, lambda_2) by c multiplies every hidden state by c and changes nothing else: the
    same encoder, with features on a scale the heads' learning rates suit (MIM leaves them around 0.01, where a head
    trained for a few epochs hardly moves). Checked on the batch.
    """
    import torch

    names = [n for n, _ in model.named_parameters() if n.endswith(_RESIDUAL)]
    if not model.config.layer_scale_init_value > 0 or sum(n.endswith((".lambda_1", ".lambda_2")) for n in names) \
            != 2 * model.config.num_hidden_layers:
        raise ValueError("pretrain (beit): rescaling needs layer scale (layer_scale_init_value > 0)")
    model.eval()
    with torch.no_grad():
        before = torch.stack(model(pixels, output_hidden_states=True).hidden_states[1:])  # layers × n × tokens × d
        factor = float(1.0 / before.mean(2).std(1).mean())
        params = dict(model.named_parameters())
        for name in names:
            params[name].mul_(factor)
        after = torch.stack(model(pixels, output_hidden_states=True).hidden_states[1:])
    if not torch.allclose(after, before * factor, rtol=1e-3, atol=1e-4 * factor):
        raise RuntimeError("pretrain (beit): rescaling the residual stream changed more than its scale")
    log.info("pretrain (beit): residual stream scaled by %.2f (pooled features' spread -> 1)", factor)
    return round(factor, 6)
