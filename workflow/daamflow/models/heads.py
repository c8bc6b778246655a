"""The paper's conv decoder ("DAT" head), the model registry and parameter counting.

Every model maps pooled per-layer features x (B, N, d) to logits (B, num_classes) and keeps its final Linear as
``.classifier`` (the paper's parameter counts exclude it). Input of another float dtype (the float16 feature store)
is cast to the parameter dtype on entry.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from daamflow.models.attention import GQDAAM, LayerSelfAttention
from daamflow.models.daam import DAAM, KERNELS, MixtureDAAM
from daamflow.catalog import HEAD_METHODS

METHODS: tuple[str, ...] = HEAD_METHODS  # named in the torch-free catalog, which Snakemake imports

# option -> (default, accepted types). Options a method does not use are accepted and ignored, so one options dict
# from the config can be passed to every method.
_OPTIONS: dict[str, tuple[Any, tuple[type, ...]]] = {
    "conv_channels": (512, (int,)),
    "num_heads": (None, (int, type(None))),
    "squared_variance": (False, (bool,)),
    "mha_heads": (8, (int,)),
    "across_batch": (False, (bool,)),
    "gqa_dim": (512, (int,)),
    "query_heads": (8, (int,)),
    "kv_heads": (2, (int,)),
    "standard_gqa": (False, (bool,)),
    "layer": (None, (int, type(None))),
    "num_gaussians": (4, (int,)),
    "mixture_heads": (8, (int,)),
    "daam_kernel": ("eager", (str,)),
}
_DEFAULT_DAAM_HEADS = {"daam_v1": 8, "daam_v2": 1, "gqdaam": 8}
# The released IEMOCAP MHA.py reads x[:, 22] of WavLM-Large's 24 block outputs (the paper's "layer 23"); encoders of
# another depth have no such layer, and the released layer's role (a late one) goes to their last layer.
RELEASED_MHA_DEPTH, RELEASED_MHA_LAYER = 24, 22


def grid_shape(width: int) -> tuple[int, int]:
    """The 2-D grid (h, w) a feature vector of ``width`` is folded into for the convs.

    h = the largest divisor of ``width`` that is <= sqrt(width), w = width / h: 1024 -> 32x32, 5120 -> 64x80 (as the
    paper), 512 -> 16x32 (the paper's GQDAAM used 8x64 / 64x8; the parameter count is the same). Widths without such a
    divisor (primes, e.g. 7) fall back to a 1 x width grid, i.e. the 3x3 convs act as 1-D convs along the features.
    """
    if width < 1:
        raise ValueError(f"grid_shape: width must be >= 1, got {width}")
    h = max(k for k in range(1, math.isqrt(width) + 1) if width % k == 0)
    return h, width // h


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(k for k in range(1, min(n, limit) + 1) if n % k == 0)


class ConvDecoder(nn.Module):
    """The paper's decoder without its classifier: (B, N, w) -> N channels on a 2-D grid -> Conv3x3 N->C, ReLU ->
    Conv3x3 C->N, ReLU -> flatten (B, N*w). Conv weights Xavier-uniform, biases PyTorch default (docs/paper-notes.md
    §1.9)."""

    def __init__(self, num_layers: int, width: int, conv_channels: int = 512) -> None:
        super().__init__()
        self.grid = grid_shape(width)
        self.conv1 = nn.Conv2d(num_layers, conv_channels, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(conv_channels, num_layers, kernel_size=3, stride=1, padding=1)
        nn.init.xavier_uniform_(self.conv1.weight)
        nn.init.xavier_uniform_(self.conv2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        y = torch.relu(self.conv1(x.reshape(b, n, *self.grid)))
        return torch.relu(self.conv2(y)).flatten(1)


class WeightedLayerSum(nn.Module):
    """SUPERB-style learnable softmax-weighted sum over the N layers: (B, N, d) -> (B, d); weights start uniform."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bnd,n->bd", x, self.weights().to(x.dtype))


class LayerSelect(nn.Module):
    """One layer (0-based index into the N layers, negative counts from the end) or, with ``layer=None``, the mean:
    (B, N, d) -> (B, d), or (B, 1, d) with ``keepdim``."""

    def __init__(self, layer: int | None, keepdim: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return x.mean(1, keepdim=self.keepdim)
        return x[:, [self.layer]] if self.keepdim else x[:, self.layer]


class LayerHeadModel(nn.Module):
    """``classifier(decoder(attention(x)))``; ``method`` and ``resolved`` (the options actually used) are recorded."""

    def __init__(
        self,
        method: str,
        attention: nn.Module,
        decoder: nn.Module,
        classifier: nn.Linear,
        resolved: dict[str, Any],
    ) -> None:
        super().__init__()
        self.method = method
        self.resolved = resolved
        self.attention = attention
        self.decoder = decoder
        self.classifier = classifier
        self._shape = (resolved["num_layers"], resolved["feature_dim"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or tuple(x.shape[1:]) != self._shape:
            raise ValueError(
                f"{self.method}: expected features of shape (batch, {self._shape[0]}, {self._shape[1]}), "
                f"got {tuple(x.shape)}"
            )
        x = x.to(self.classifier.weight.dtype)
        return self.classifier(self.decoder(self.attention(x)))


def _validate_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ValueError(f"build_model: unknown option(s) {unknown}; accepted options: {sorted(_OPTIONS)}")
    resolved = {}
    for name, (default, types) in _OPTIONS.items():
        value = options.get(name, default)
        bad_bool = isinstance(value, bool) and bool not in types
        if not isinstance(value, types) or bad_bool:
            expected = " or ".join("None" if t is type(None) else t.__name__ for t in types)
            raise ValueError(f"build_model: option {name}={value!r} must be {expected}")
        if name == "daam_kernel" and value not in KERNELS:
            raise ValueError(f"build_model: option daam_kernel={value!r} must be one of {list(KERNELS)}")
        if name in ("conv_channels", "mha_heads", "gqa_dim", "query_heads", "kv_heads", "num_gaussians",
                    "mixture_heads", "num_heads") and value is not None and value < 1:
            raise ValueError(f"build_model: option {name}={value!r} must be >= 1")
        resolved[name] = value
    return resolved


def build_model(method: str, num_layers: int, feature_dim: int, num_classes: int, **options: Any) -> LayerHeadModel:
    """Build the head ``method`` (one of :data:`METHODS`) for features (B, num_layers, feature_dim).

    Options (keyword; all accepted by every method, used where they apply):
      conv_channels (512): width C of the conv decoder.  num_heads: DAAM heads for daam_v1/daam_v2/gqdaam
      (defaults 8/1/8, at most N/2 so that every head spans >= 2 layers; when N is not divisible, the largest divisor of
      N below that is used, recorded in
      ``model.resolved["num_heads"]``; an explicit value must divide N).  squared_variance (False): the prose 2 xi^2.
      mha_heads (8; if d is not divisible, the largest divisor of d <= the value).  across_batch (False): the released
      MHA's attention across the mini-batch.  gqa_dim (512), query_heads (8), kv_heads (2), standard_gqa (False).
      layer (None): 0-based layer of the ``linear`` probe, None = mean of layers; for ``mha@released`` the one layer
      it reads (default: 22 of 24 as the released code, else the last).  num_gaussians (4), mixture_heads (8;
      at most N/2 by default).  daam_kernel ("eager"): "fast" runs DAAM (v1, v2, GQDAAM) through the C++ kernel.

    ``mha@released`` is the released IEMOCAP MHA.py: one layer, attention across the mini-batch, a 1-channel conv
    head (Conv 1->C, Conv C->1, Linear(d -> classes)).
    """
    if method not in METHODS:
        raise ValueError(f"build_model: unknown method {method!r}; choose one of {list(METHODS)}")
    for name, value in (("num_layers", num_layers), ("feature_dim", feature_dim), ("num_classes", num_classes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"build_model: {name} must be a positive int, got {value!r}")
    opt = _validate_options(options)
    n, d = num_layers, feature_dim
    resolved: dict[str, Any] = {"method": method, "num_layers": n, "feature_dim": d, "num_classes": num_classes}

    def daam_heads() -> int:
        if opt["num_heads"] is not None:
            if n % opt["num_heads"]:
                raise ValueError(
                    f"build_model({method}): num_heads={opt['num_heads']} does not divide num_layers={n}"
                )
            return opt["num_heads"]
        # a head needs >= 2 layers: over one layer the variance is 0 and DAAM is the identity (see analysis.py)
        return _largest_divisor_at_most(n, min(_DEFAULT_DAAM_HEADS[method], max(1, n // 2)))

    width, channels = d, n  # feature width and number of layer channels entering the conv decoder
    if method in ("daam_v1", "daam_v2"):
        resolved["num_heads"] = daam_heads()
        resolved["squared_variance"] = opt["squared_variance"]
        attention: nn.Module = DAAM(
            n, d, num_heads=resolved["num_heads"], squared_variance=opt["squared_variance"], kernel=opt["daam_kernel"]
        )
    elif method == "mixture":
        # default: at most N/2 chunks, so that every chunk has the >= 2 layers an unbiased variance needs
        heads = min(opt["mixture_heads"], max(1, n // 2)) if "mixture_heads" not in options else opt["mixture_heads"]
        resolved.update(mixture_heads=heads, num_gaussians=opt["num_gaussians"])
        attention = MixtureDAAM(num_heads=heads, num_gaussians=opt["num_gaussians"], norm_axis=1)
    elif method in ("gqdaam", "gqa"):
        heads = daam_heads() if method == "gqdaam" else None
        resolved.update(
            num_heads=heads, gqa_dim=opt["gqa_dim"], query_heads=opt["query_heads"], kv_heads=opt["kv_heads"],
            standard_gqa=opt["standard_gqa"], squared_variance=opt["squared_variance"],
        )
        attention = GQDAAM(
            n, d, daam_heads=heads, gqa_dim=opt["gqa_dim"], query_heads=opt["query_heads"],
            kv_heads=opt["kv_heads"], standard_gqa=opt["standard_gqa"], squared_variance=opt["squared_variance"],
            daam_kernel=opt["daam_kernel"],
        )
        width = opt["gqa_dim"]
    elif method in ("mha", "mha_bn", "mha@across_batch"):
        heads = _largest_divisor_at_most(d, opt["mha_heads"])
        across_batch = opt["across_batch"] or method == "mha@across_batch"
        resolved.update(mha_heads=heads, across_batch=across_batch)
        attention = LayerSelfAttention(d, heads, num_layers=n, batch_norm=method == "mha_bn", across_batch=across_batch)
    elif method == "mha@released":
        layer = opt["layer"] if opt["layer"] is not None else (
            RELEASED_MHA_LAYER if n == RELEASED_MHA_DEPTH else n - 1
        )
        _check_layer(method, layer, n)
        heads = _largest_divisor_at_most(d, opt["mha_heads"])
        resolved.update(layer=layer, mha_heads=heads, across_batch=True)
        attention = nn.Sequential(
            LayerSelect(layer, keepdim=True), LayerSelfAttention(d, heads, num_layers=1, across_batch=True)
        )
        channels = 1
    else:
        attention = nn.Identity()

    if method == "weighted_sum":
        attention = WeightedLayerSum(n)
        decoder: nn.Module = nn.Identity()
        classifier = nn.Linear(d, num_classes)
    elif method == "linear":
        if opt["layer"] is not None:
            _check_layer(method, opt["layer"], n)
        resolved["layer"] = opt["layer"]
        attention = LayerSelect(opt["layer"])
        decoder = nn.Identity()
        classifier = nn.Linear(d, num_classes)
    else:
        decoder = ConvDecoder(channels, width, opt["conv_channels"])
        resolved.update(conv_channels=opt["conv_channels"], grid=decoder.grid)
        classifier = nn.Linear(channels * width, num_classes)
    nn.init.xavier_uniform_(classifier.weight)
    return LayerHeadModel(method, attention, decoder, classifier, resolved)


def _check_layer(method: str, layer: int, n: int) -> None:
    if not -n <= layer < n:
        raise ValueError(f"build_model({method}): layer={layer} is out of range for {n} layers (0-based)")


def count_parameters(model: nn.Module, include_classifier: bool = True) -> int:
    """Number of parameters of ``model``; without the final ``.classifier`` when ``include_classifier=False``."""
    total = sum(p.numel() for p in model.parameters())
    if not include_classifier:
        classifier = getattr(model, "classifier", None)
        if classifier is None:
            raise ValueError("count_parameters: include_classifier=False needs a model with a .classifier attribute")
        total -= sum(p.numel() for p in classifier.parameters())
    return total


def _density_module(model: nn.Module) -> DAAM | MixtureDAAM | None:
    attention = getattr(model, "attention", None)
    if isinstance(attention, (DAAM, MixtureDAAM)):
        return attention
    if isinstance(attention, GQDAAM):
        return attention.daam
    return None


@torch.no_grad()
def density_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """The gate (DAAM) or mixture (Mixture) of ``model`` for features x, shape (B, N, d); None for other methods."""
    module = _density_module(model)
    if module is None:
        return None
    param = next(module.parameters())
    return module.density(x.to(param.dtype))


def gaussian_parameters(model: nn.Module) -> dict[str, list] | None:
    """The learned Gaussian parameters as plain lists (JSON-ready): DAAM {"mean_offset", "scaled_variance"} (H x d),
    Mixture {"mean_offsets", "c"} (heads x gaussians); None for methods without them."""
    module = _density_module(model)
    if isinstance(module, DAAM):
        return {
            "mean_offset": module.mean_offset.detach().cpu().tolist(),
            "scaled_variance": module.scaled_variance.detach().cpu().tolist(),
        }
    if isinstance(module, MixtureDAAM):
        return {"mean_offsets": module.mean_offsets.detach().cpu().tolist(), "c": module.c.detach().cpu().tolist()}
    return None


def layer_weights(model: nn.Module) -> torch.Tensor | None:
    """The softmax layer weights (N,) of a ``weighted_sum`` model, else None."""
    attention = getattr(model, "attention", None)
    if isinstance(attention, WeightedLayerSum):
        return attention.weights().detach()
    return None
