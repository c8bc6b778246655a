"""VQ-VAE hyper-parameters: ``VQVAEConfig``, its checks, and the presets (the DAAM blog's setup; a CPU demo)."""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

VARIANTS = ("plain", "daam")
DATASETS = ("fashion_mnist", "image_dir")


@dataclass
class VQVAEConfig:
    """Everything that determines a run's numbers except the seed and the variant. Defaults = the DAAM blog."""

    hidden_dims: list[int] = field(default_factory=lambda: [128, 256, 512])
    latent_dim: int = 256  # encoder output channels = codebook embedding dim
    num_embeddings: int = 1024
    commitment_cost: float = 0.25  # β: not stated in the blog; the VQ-VAE paper's value
    ema: bool = False  # EMA codebook updates instead of the codebook loss
    ema_decay: float = 0.99
    daam_heads: int = 4
    daam_gaussians: int = 3
    norm_groups: int = 8  # GroupNorm groups; must divide every hidden dim
    dataset: str = "image_dir"  # "image_dir" (COCO-2017 layout by default) or "fashion_mnist"
    image_dir: str | None = None
    train_subdir: str = "train2017"
    test_subdir: str = "val2017"
    image_size: int = 256
    train_images: int | None = None  # first N images of the training split (None: all)
    test_images: int | None = None  # first N images of the held-out split (None: all)
    lr: float = 3e-4
    batch_size: int = 32
    epochs: int = 176

    def validate(self) -> None:
        """Raise ValueError naming the first bad field (whether image_dir exists is checked when loading)."""
        if not self.hidden_dims or any(int(h) < 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must be a non-empty list of positive ints, got {self.hidden_dims!r}")
        for h in self.hidden_dims:
            if h % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} must divide every hidden dim, got {self.hidden_dims}")
            if h < self.daam_heads:
                raise ValueError(f"daam_heads={self.daam_heads} exceeds the hidden dim {h}: every head needs a channel")
        for name in ("latent_dim", "num_embeddings", "daam_heads", "daam_gaussians", "norm_groups", "image_size",
                     "batch_size", "epochs"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        for name in ("train_images", "test_images"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive int or null (all images), got {getattr(self, name)!r}")
        if self.image_size % 2 ** len(self.hidden_dims):
            raise ValueError(
                f"image_size={self.image_size} must be divisible by 2**len(hidden_dims)={2 ** len(self.hidden_dims)}"
            )
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.lr <= 0 or self.commitment_cost < 0:
            raise ValueError(f"lr must be > 0 and commitment_cost >= 0, got {self.lr}, {self.commitment_cost}")
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: VQVAEConfig | None = None) -> VQVAEConfig:
        """``base`` (default: the blog config) updated with ``values``; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown VQ-VAE hyper-parameter(s) {unknown}; known: {sorted(known)}")
        hints = typing.get_type_hints(cls)
        return dataclasses.replace(base or cls(), **{k: _checked(k, hints[k], v) for k, v in values.items()})


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def _checked(name: str, hint: Any, value: Any) -> Any:
    """``value`` if it fits the field's type hint (ints are accepted for floats), else a ValueError naming the field."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if typing.get_origin(option) is list:
            if isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return list(value)
        elif option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        elif option in (int, str, bool) and isinstance(value, option):
            if option is bool or not isinstance(value, bool):  # bool is an int subclass: reject True for an int
                return value
    expected = hint.__name__ if isinstance(hint, type) else str(hint)
    raise ValueError(f"hyper-parameter {name} must be {expected}, got {value!r}")


PRESETS: dict[str, VQVAEConfig] = {
    "blog": VQVAEConfig(),
    # One run: 5–12 s of training + evaluation on one CPU core (11–20 s per process with imports, shared 2-core box).
    "demo": VQVAEConfig(
        hidden_dims=[16, 32], latent_dim=16, num_embeddings=64, dataset="fashion_mnist", image_size=32,
        train_images=512, test_images=128, batch_size=32, epochs=3,
    ),
}
