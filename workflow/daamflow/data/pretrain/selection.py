"""A validation probe for choosing the tiny BEiT's pretraining recipe without looking at the evaluation sample.

Validation images: the Fashion-MNIST *test* split minus every test image of the evaluation samples (``exclude``).
Pretraining reads only the training split, so they are disjoint from both the pretraining images and the sample.
``draws`` disjoint draws (one seed, the same images for every recipe), each of ``per_class_train`` +
``per_class_test`` images per class, the demo sample's sizes; labels serve this selection only.

Per draw and block the probe is the demo's (``daamflow.analysis.layers.probe_accuracy``) on the embed step's image
pooling (mean over all tokens of a block's output), fit on the fit part, scored on the other. The selection criterion is the best block's
mean accuracy over the draws (docs/architecture.md §10).

    python -m daamflow.data.pretrain.selection ENCODER_DIR [ENCODER_DIR ...] --exclude-data results/data/fashion
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from daamflow.data.manifest import read_prepared

DRAWS, PER_CLASS_TRAIN, PER_CLASS_TEST, SEED = 10, 40, 20, 12345


def validation_draws(exclude: list[Path], root: str | None = None, draws: int = DRAWS,
                     per_class_train: int = PER_CLASS_TRAIN, per_class_test: int = PER_CLASS_TEST, seed: int = SEED):
    """(test-split images uint8, labels, [(fit indices, scored indices)] × draws): disjoint draws, balanced per class,
    from the test split minus the test images of the prepared ``fashion_mnist`` folders in ``exclude``."""
    from daamflow.data.datasets.fashion_mnist import DEFAULT_ROOT, load_split

    excluded = set()
    for folder in exclude:
        df, meta = read_prepared(folder)
        if meta["source"] != "fashion_mnist":
            raise ValueError(f"validation: {folder} is a {meta['source']} dataset, not fashion_mnist")
        excluded |= {int(i.rsplit("-", 1)[1]) for i in df["id"] if i.startswith("fmnist-test-")}
        root = root or meta.get("options", {}).get("root")
    images, labels = load_split("test", str(root or DEFAULT_ROOT))
    rng = np.random.default_rng(seed)
    per_draw = per_class_train + per_class_test
    parts = [[[], []] for _ in range(draws)]
    for c in np.unique(labels):
        members = rng.permutation(np.setdiff1d(np.flatnonzero(labels == c), list(excluded)))
        if len(members) < draws * per_draw:
            raise ValueError(f"validation: class {c} has {len(members)} free test images, {draws * per_draw} needed")
        for d in range(draws):
            block = members[d * per_draw:(d + 1) * per_draw]
            parts[d][0].append(block[:per_class_train])
            parts[d][1].append(block[per_class_train:])
    splits = [(np.sort(np.concatenate(fit)), np.sort(np.concatenate(scored))) for fit, scored in parts]
    used = np.concatenate([np.concatenate(s) for s in splits])
    if excluded & set(used.tolist()) or len(set(used.tolist())) != len(used):  # the guarantee, made explicit
        raise AssertionError("validation images overlap the evaluation sample or each other")
    return images, labels, splits


def pooled_features(encoder_dir: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Mean-pooled block outputs (n × blocks × width) of uint8 images through the encoder's own processor."""
    import torch
    from transformers import AutoModel

    from daamflow.data.encoders import load_processor

    processor, model = load_processor(encoder_dir, "image"), AutoModel.from_pretrained(encoder_dir).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = [img[:, :, None] for img in images[start:start + batch_size]]
            pixels = processor(images=chunk, return_tensors="pt", input_data_format="channels_last")["pixel_values"]
            hidden = model(pixels, output_hidden_states=True).hidden_states[1:]
            out.append(torch.stack([h.mean(1) for h in hidden], 1).numpy())
    return np.concatenate(out).astype(np.float64)


def validation_probe(encoder_dir: Path, exclude: list[Path], **draw_options) -> dict:
    """Accuracy of the demo's probe per block and draw on the validation images; ``best``: the best block's mean."""
    from daamflow.analysis.layers import probe_accuracy

    images, labels, splits = validation_draws(exclude, **draw_options)
    rows = np.unique(np.concatenate([np.concatenate(s) for s in splits]))
    features = dict(zip(rows.tolist(), pooled_features(Path(encoder_dir), images[rows])))
    acc = np.zeros((len(splits), next(iter(features.values())).shape[0]))
    for d, (fit, scored) in enumerate(splits):
        x_fit, x_scored = np.stack([features[i] for i in fit]), np.stack([features[i] for i in scored])
        for layer in range(acc.shape[1]):
            acc[d, layer] = probe_accuracy(x_fit[:, layer], labels[fit], x_scored[:, layer], labels[scored])
    by_layer = acc.mean(0)
    return {"encoder": str(encoder_dir), "by_layer": [round(float(a), 4) for a in by_layer],
            "best": round(float(by_layer.max()), 4), "best_layer": int(by_layer.argmax()) + 1,
            "draw_std_of_best": round(float(acc[:, by_layer.argmax()].std(ddof=1)), 4), "draws": len(splits),
            "scored_per_draw": len(splits[0][1])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoders", nargs="+", type=Path, help="materialised tiny-beit folders to compare")
    parser.add_argument("--exclude-data", nargs="+", type=Path, required=True,
                        help="prepared fashion_mnist folders of the evaluation (their test images are left out)")
    args = parser.parse_args(argv)
    for folder in args.encoders:
        print(json.dumps(validation_probe(folder, args.exclude_data)), flush=True)


if __name__ == "__main__":
    main()
