"""Density Adaptive Attention over the layer axis: the fused multi-head DAAM and the appendix's Mixture of Densities.

Section numbers (§) refer to docs/paper-notes.md.

* :class:`DAAM` - multi-head Density Adaptive Attention over the layer axis (§1.2-1.5), one fused autograd function
  for all heads (the released code loops over heads).
* :class:`MixtureDAAM` - the appendix's "Mixture of Densities" with its Density-Block residual (§1.7).

Half-precision inputs are accepted: statistics are computed in float32 and the result is returned in the input dtype.

``DAAM(kernel="fast")`` runs the C++/OpenMP kernel of ``_kernels`` (csrc/daam_cpu.cpp) on CPU float32/float64
inputs: the same formulas in one pass over x forward and one over (x, dy) backward, equal to the eager path to
rounding but not bit for bit; the eager path (the default) stays the reference.
"""
from __future__ import annotations

import math
import warnings

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from daamflow.models import _kernels

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_LN2 = math.log(2.0)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 for half inputs (their range/precision is too small for the statistics), else the input dtype."""
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


# CPU: process the batch in slices of about this many elements (1 MiB of float32) so that the ~15 elementwise passes
# run on cache-resident data, with temporaries in buffers reused across slices (fresh allocations of this size cost
# page faults). Measured 2-4x faster than whole-tensor passes on a 2-core EPYC (benchmarks/bench_daam.py). Other
# devices run in one slice.
_CPU_CHUNK_ELEMENTS = 2**18


def _batch_step(x: torch.Tensor) -> int:
    if x.device.type != "cpu" or x.shape[0] == 0:
        return max(1, x.shape[0])
    return max(1, min(x.shape[0], _CPU_CHUNK_ELEMENTS // max(1, x[0].numel())))


def _batch_slices(x: torch.Tensor) -> list[slice]:
    step = _batch_step(x)
    return [slice(a, a + step) for a in range(0, x.shape[0], step)]


def _workspace(x4: torch.Tensor, full: int, stats: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Scratch buffers for one batch slice: ``full`` of the slice's shape and ``stats`` of its (b, H, 1, d) shape."""
    step, heads, _, d = _batch_step(x4), x4.shape[1], x4.shape[2], x4.shape[3]
    return (
        list(x4.new_empty((full, step) + tuple(x4.shape[1:])).unbind(0)),
        list(x4.new_empty((stats, step, heads, 1, d)).unbind(0)),
    )


def _gate_forward(x4, delta, neg_sqrt_kappa, eps, outs, work) -> None:
    """Forward of one batch slice: fills ``outs`` = (y, gate, u', s_n, r, neg_rk); ``work`` = scratch views."""
    y, gate, u, s_n, r, neg_rk = outs
    (sq,), (s1, tmp) = work
    n = x4.shape[2]
    torch.sum(x4, 2, keepdim=True, out=s1)
    # n * s; the subtraction gives exactly 0 for n = 1 (alpha = 1/n = 1: no rounding of x^2 is left over)
    torch.sum(torch.mul(x4, x4, out=sq), 2, keepdim=True, out=s_n).sub_(torch.mul(s1, s1, out=tmp), alpha=1.0 / n)
    torch.add(x4.new_tensor(1e-8 + eps), torch.abs(s_n, out=tmp), alpha=1.0 / n, out=r).rsqrt_()
    torch.mul(r, neg_sqrt_kappa, out=neg_rk)
    bias = torch.mul(delta, neg_rk, out=tmp).addcmul_(s1, neg_rk, value=1.0 / n)  # -(mu + delta) r sqrt(kappa')
    if n == 1:  # x - mu is exactly 0: FMA rounding of the two products must not leak a gradient into delta
        u.copy_(torch.mul(delta, neg_rk, out=tmp).expand_as(u))
    else:
        torch.addcmul(bias, x4, neg_rk, value=-1.0, out=u)
    torch.addcmul(x4.new_zeros(()), u, u, value=-1.0, out=gate).exp2_()  # exp2 is ~2.5x cheaper than exp on CPU
    torch.mul(x4, gate, out=y)


def _gate_backward(gy, saved, delta, alpha_scale, gx, work) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward of one batch slice (base-2 score, see _DAAMFunction): writes dx into ``gx`` (skipped when None:
    the input needs no gradient), returns the slice's sums over the batch of g_delta / n and of P2'."""
    y, gate, u, s_n, r, neg_rk = saved
    (qu, quu), (p1, p2, sr, g_delta_n, beta) = work
    n = u.shape[2]
    torch.mul(gy, y, out=qu).mul_(u)
    torch.sum(qu, 2, keepdim=True, out=p1)
    torch.sum(torch.mul(qu, u, out=quu), 2, keepdim=True, out=p2)
    torch.mul(neg_rk, -2.0 * _LN2 / n, out=g_delta_n).mul_(p1)  # g_delta / n
    if gx is None:
        return g_delta_n.sum(0), p2.sum(0)
    torch.sign(s_n, out=sr).mul_(r)  # sign(s) r
    torch.addcmul(g_delta_n, torch.mul(sr, r, out=beta).mul_(delta), p2, value=2.0 * _LN2 / n, out=beta)
    alpha = sr.mul_(alpha_scale).mul_(p2)  # coefficient of u' in dx
    torch.addcmul(beta, u, alpha, out=gx).addcmul_(qu, neg_rk, value=2.0 * _LN2).addcmul_(gy, gate)
    return g_delta_n.sum(0), p2.sum(0)


class _DAAMFunction(torch.autograd.Function):
    """Fused DAAM gate on x of shape (B, H, n, d) with an analytic backward.

    With S1 = sum_l x, S2 = sum_l x^2 over the head's n layers, s = S2/n - (S1/n)^2 (= mean(x^2) - mu^2),
    r = (|s| + 1e-8 + eps)^(-1/2), kappa = 1/(2 xi) (or 1/(2 xi^2)) and the scaled score
    u = (x - mu - delta) r sqrt(kappa), the gate is G = exp(-u^2) and y = x G. Writing q = gy x G = gy y,
    P1 = sum_l q u and P2 = sum_l q u^2:

        g_delta = 2 r sqrt(kappa) P1 (summed over the batch),  g_xi = P2 / xi (2 P2 / xi for xi^2)
        g_s = sign(s) r^2 P2,  g_mu = g_delta - 2 mu g_s
        dx = gy G - 2 r sqrt(kappa) q u + (2 g_s / n) x + g_mu / n
           = gy G - 2 r sqrt(kappa) q u + alpha u + beta,  alpha = 2 g_s / (n r sqrt(kappa)),
             beta = (2 g_s delta + g_delta) / n        (using x = u / (r sqrt(kappa)) + mu + delta)

    The code works with the base-2 score u' = u sqrt(log2 e), G = 2^(-u'^2) (exp2 is cheaper than exp), so the
    sums over u' carry factors ln 2: P1 = sqrt(ln 2) P1', P2 = ln 2 P2'. Every full-size step is one broadcasting
    kernel: 7 passes forward, 8 backward (plain autograd: ~40), run over cache-sized batch slices on CPU.
    Saved: y, G, u' and per-(b, h, feature) statistics (x itself is not needed).
    """

    @staticmethod
    def forward(ctx, x4, delta, xi, eps, squared):  # type: ignore[override]
        sqrt_kappa = ((0.5 / _LN2) / (xi * xi if squared else xi)).sqrt()  # kappa' = log2(e) / (2 xi)
        y, gate, u = torch.empty_like(x4), torch.empty_like(x4), torch.empty_like(x4)
        stats_shape = (x4.shape[0], x4.shape[1], 1, x4.shape[3])
        s_n, r, neg_rk = (x4.new_empty(stats_shape) for _ in range(3))
        full, stats = _workspace(x4, 1, 2)
        for sl in _batch_slices(x4):
            b = min(sl.stop, x4.shape[0]) - sl.start
            work = ([t[:b] for t in full], [t[:b] for t in stats])
            outs = (y[sl], gate[sl], u[sl], s_n[sl], r[sl], neg_rk[sl])
            _gate_forward(x4[sl], delta, -sqrt_kappa, eps, outs, work)
        ctx.save_for_backward(y, gate, u, s_n, r, neg_rk, delta, sqrt_kappa, xi)
        ctx.squared = squared
        ctx.mark_non_differentiable(gate)  # the density map is for inspection; gradients flow through y only
        return y, gate

    @staticmethod
    @once_differentiable  # intermediates are saved without history: refuse double backward rather than be wrong
    def backward(ctx, gy, _ggate):  # type: ignore[override]
        y, gate, u, s_n, r, neg_rk, delta, sqrt_kappa, xi = ctx.saved_tensors
        gy = gy.contiguous()
        gx = torch.empty_like(u) if ctx.needs_input_grad[0] else None  # features usually need no gradient
        alpha_scale = (2.0 * _LN2 / u.shape[2]) / sqrt_kappa
        g_delta_n = torch.zeros_like(delta)
        p2 = torch.zeros_like(delta)
        full, stats = _workspace(u, 2, 5)
        for sl in _batch_slices(u):
            b = min(sl.stop, u.shape[0]) - sl.start
            work = ([t[:b] for t in full], [t[:b] for t in stats])
            saved = (y[sl], gate[sl], u[sl], s_n[sl], r[sl], neg_rk[sl])
            gd, pp = _gate_backward(gy[sl], saved, delta, alpha_scale, None if gx is None else gx[sl], work)
            g_delta_n += gd
            p2 += pp
        g_xi = p2 * ((2.0 if ctx.squared else 1.0) * _LN2) / xi
        return gx, g_delta_n * u.shape[2], g_xi, None, None


class _FastDAAMFunction(torch.autograd.Function):
    """The DAAM gate through the C++ kernel (see _DAAMFunction for the formulas); saves only x."""

    @staticmethod
    def forward(ctx, x4, delta, xi, eps, squared):  # type: ignore[override]
        ctx.save_for_backward(x4, delta, xi)
        ctx.eps, ctx.squared = eps, squared
        return _kernels.forward(x4, delta, xi, eps, squared, with_gate=False)[0]

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):  # type: ignore[override]
        x4, delta, xi = ctx.saved_tensors
        gx, g_delta, g_xi = _kernels.backward(x4, gy, delta, xi, ctx.eps, ctx.squared, ctx.needs_input_grad[0])
        return gx, g_delta, g_xi, None, None


KERNELS = ("eager", "fast")


class DAAM(nn.Module):
    """Multi-head Density Adaptive Attention over the layer axis of ``x`` (B, N, d) (§1.2-1.5).

    Head h takes the contiguous layers [h N/H, (h+1) N/H) and, for each feature j, across its layers:

        mu = mean(x), v = |mean(x^2) - mu^2| + 1e-8, z = (x - mu - delta_hj) / sqrt(v + eps)
        G = exp(-z^2 / (2 xi_hj))        (``squared_variance=True``: exp(-z^2 / (2 xi_hj^2)), the prose formula)
        output = x * G                   (no residual, as the released classification code)

    ``mean_offset`` (delta) and ``scaled_variance`` (xi) have shape (num_heads, feature_dim), initialised to 0 and
    ``init_scaled_variance``. DAAMv1 = 8 heads, DAAMv2 = 1 head. All heads run at once through a fused autograd
    function. A head of one layer has v = 1e-8, hence G = exp(-delta^2 / (2 xi (1e-8 + eps))): finite, 1 at init.

    ``kernel``: ``eager`` (the reference, torch ops) or ``fast`` (the C++ kernel on CPU float32/float64; elsewhere, or
    where no compiler builds it, the eager path, with a warning naming the reason).
    """

    def __init__(
        self,
        num_layers: int,
        feature_dim: int,
        num_heads: int = 8,
        init_scaled_variance: float = 2.0,
        eps: float = 1e-5,
        squared_variance: bool = False,
        kernel: str = "eager",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"DAAM: kernel must be one of {list(KERNELS)}, got {kernel!r}")
        for name, value in (("num_layers", num_layers), ("feature_dim", feature_dim), ("num_heads", num_heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"DAAM: {name} must be a positive int, got {value!r}")
        if num_layers % num_heads:
            raise ValueError(
                f"DAAM: num_layers={num_layers} is not divisible by num_heads={num_heads}; each head takes a "
                f"contiguous block of num_layers/num_heads layers (divisors of {num_layers}: "
                f"{[h for h in range(1, num_layers + 1) if num_layers % h == 0]})"
            )
        if eps < 0:
            raise ValueError(f"DAAM: eps must be >= 0, got {eps!r}")
        self.num_layers = num_layers
        self.feature_dim = feature_dim
        self.num_heads = num_heads
        self.eps = float(eps)
        self.squared_variance = bool(squared_variance)
        self.kernel = kernel
        self.mean_offset = nn.Parameter(torch.zeros(num_heads, feature_dim))
        self.scaled_variance = nn.Parameter(torch.full((num_heads, feature_dim), float(init_scaled_variance)))

    def extra_repr(self) -> str:
        return (
            f"num_layers={self.num_layers}, feature_dim={self.feature_dim}, num_heads={self.num_heads}, "
            f"eps={self.eps}, squared_variance={self.squared_variance}"
        )

    def _fast(self, x4: torch.Tensor) -> bool:
        if self.kernel != "fast":
            return False
        if _kernels.supports(x4):
            return True
        reason = _kernels.unavailable_reason() or f"it takes CPU float32/float64, got {x4.device.type} {x4.dtype}"
        warnings.warn(f"DAAM(kernel='fast'): running the eager path: {reason}", RuntimeWarning, stacklevel=3)
        return False

    def _run(self, x: torch.Tensor, gate: bool) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_layers or x.shape[2] != self.feature_dim:
            raise ValueError(
                f"DAAM expects input of shape (batch, num_layers={self.num_layers}, feature_dim={self.feature_dim}), "
                f"got {tuple(x.shape)}"
            )
        dtype = _compute_dtype(x)
        b, n_layers, d = x.shape
        x4 = x.to(dtype).reshape(b, self.num_heads, n_layers // self.num_heads, d)
        delta = self.mean_offset.to(dtype).unsqueeze(1)  # (H, 1, d) broadcasts over (B, H, n, d)
        xi = self.scaled_variance.to(dtype).unsqueeze(1)
        if self._fast(x4):
            delta, xi = delta.squeeze(1), xi.squeeze(1)
            if gate:  # the density map is for inspection: no gradient flows through it (as on the eager path)
                with torch.no_grad():
                    return _kernels.forward(x4, delta, xi, self.eps, self.squared_variance, with_gate=True)[1].reshape(
                        b, n_layers, d
                    )
            y = _FastDAAMFunction.apply(x4, delta, xi, self.eps, self.squared_variance)
        else:
            y, g = _DAAMFunction.apply(x4, delta, xi, self.eps, self.squared_variance)
            if gate:
                return g.reshape(b, n_layers, d)
        return y.reshape(b, n_layers, d).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, gate=False)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """The gate G, shape (B, N, d), in the compute dtype (float32 for half inputs)."""
        return self._run(x, gate=True)


class MixtureDAAM(nn.Module):
    """Multi-head Mixture of Densities Adaptive Attention with the Density-Block residual: ``x + x * mixture``.

    The input is split into ``num_heads`` contiguous chunks along ``norm_axis`` (chunk size ``L // num_heads``; the
    last chunk takes the remainder), as in the authors' ``MultiHeadDensityAdaptiveAttention``. Within each chunk, for
    every position of the other axes:

        mu = mean, sigma2 = unbiased variance + eps                        (along ``norm_axis``, within the chunk)
        mixture = prod_i exp(-(x - mu - m_i)^2 / (2 c_i^2 sigma2)) / sqrt(2 pi c_i^2)
        mixture = mixture / clamp(sum(mixture along norm_axis within the chunk), min=eps)

    ``m`` (``mean_offsets``) and ``c`` are learnable scalars of shape (num_heads, num_gaussians). The product is
    evaluated as exp(sum of logs), equal to the authors' running product but free of intermediate over/underflow.

    Degenerate chunks: a chunk (or, with padding, a slice of valid values) with fewer than two values has no unbiased
    variance; it is taken as 0, so sigma2 = eps. Values with ``x - mu - m_i != 0`` then get a vanishing density and
    the chunk's mixture is finite (all zeros, or 1 on the values that match ``mu + m``); never NaN.

    Padding: values equal to ``padding_value`` are left out of mean, variance and normalisation and are returned
    unchanged (the authors' code instead zeroes them and still counts them in the statistics).
    """

    def __init__(
        self,
        num_heads: int = 8,
        num_gaussians: int = 4,
        norm_axis: int = 1,
        eps: float = 1e-8,
        c_init: str | float = "lognormal",
        padding_value: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        if not isinstance(num_gaussians, int) or num_gaussians < 1:
            raise ValueError(f"num_gaussians must be a positive int, got {num_gaussians!r}")
        if not isinstance(norm_axis, int):
            raise ValueError(f"norm_axis must be an int, got {norm_axis!r}")
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")
        self.num_heads = num_heads
        self.num_gaussians = num_gaussians
        self.norm_axis = norm_axis
        self.eps = float(eps)
        self.padding_value = padding_value
        self.mean_offsets = nn.Parameter(torch.zeros(num_heads, num_gaussians))
        if c_init == "lognormal":  # the authors' current init: c = exp(N(0, 1))
            c = torch.exp(torch.randn(num_heads, num_gaussians))
        elif isinstance(c_init, (int, float)) and not isinstance(c_init, bool) and c_init != 0:
            c = torch.full((num_heads, num_gaussians), float(c_init))
        else:
            raise ValueError(f"c_init must be 'lognormal' or a non-zero number, got {c_init!r}")
        self.c = nn.Parameter(c)

    def extra_repr(self) -> str:
        return (
            f"num_heads={self.num_heads}, num_gaussians={self.num_gaussians}, norm_axis={self.norm_axis}, "
            f"eps={self.eps}, padding_value={self.padding_value}"
        )

    def _axis(self, x: torch.Tensor) -> int:
        if x.dim() == 0:
            raise ValueError("MixtureDAAM needs an input with at least one dimension, got a scalar")
        if not -x.dim() <= self.norm_axis < x.dim():
            raise ValueError(
                f"norm_axis={self.norm_axis} is out of range for an input of shape {tuple(x.shape)} "
                f"(valid: {-x.dim()}..{x.dim() - 1})"
            )
        axis = self.norm_axis % x.dim()
        if x.shape[axis] < self.num_heads:
            raise ValueError(
                f"MixtureDAAM: the size {x.shape[axis]} of norm_axis={self.norm_axis} (input shape {tuple(x.shape)}) "
                f"is smaller than num_heads={self.num_heads}; every head needs at least one element"
            )
        return axis

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised mixture (same shape as ``x``, float32 for half inputs; 0 at padding positions)."""
        return self._mixture(x)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixture, xc, mask = self._mixture(x)
        out = xc + xc * mixture
        if mask is not None:
            out = torch.where(mask, out, xc)
        return out.to(x.dtype)

    def _mixture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        axis = self._axis(x)
        xc = x.to(_compute_dtype(x))
        length = x.shape[axis]
        chunk = length // self.num_heads
        head_of = torch.clamp(torch.arange(length, device=x.device) // chunk, max=self.num_heads - 1)
        onehot = nn.functional.one_hot(head_of, self.num_heads).to(xc.dtype)  # (L, H): position -> its head
        # Work with the normalised axis last, so per-head sums are a matmul with the one-hot assignment.
        xl = xc.movedim(axis, -1)
        mask = None if self.padding_value is None else xl != self.padding_value
        xv = xl if mask is None else torch.where(mask, xl, torch.zeros_like(xl))
        counts = onehot.sum(0) if mask is None else mask.to(xc.dtype) @ onehot  # (H,) or (..., H)
        mean = ((xv @ onehot) / counts.clamp(min=1.0)) @ onehot.T  # back to (..., L)
        dev = xl - mean
        sq = dev.square() if mask is None else torch.where(mask, dev.square(), torch.zeros_like(dev))
        # Unbiased variance; slices with < 2 values have none: use 0 (documented above) instead of 0/0.
        var = ((sq @ onehot) / (counts - 1.0).clamp(min=1.0)) @ onehot.T
        sigma2 = var + self.eps
        offsets = self.mean_offsets.to(xc.dtype)[head_of]  # (L, G)
        c2 = self.c.to(xc.dtype).square()[head_of]  # (L, G)
        log_mix = torch.zeros_like(xl)
        for i in range(self.num_gaussians):  # G is tiny (4); each step is one vectorised pass
            log_mix = log_mix - (dev - offsets[:, i]).square() / (2.0 * c2[:, i] * sigma2)
            log_mix = log_mix - 0.5 * torch.log(2.0 * math.pi * c2[:, i])
        mixture = torch.exp(log_mix)
        if mask is not None:
            mixture = torch.where(mask, mixture, torch.zeros_like(mixture))
        total = (mixture @ onehot) @ onehot.T
        mixture = mixture / total.clamp(min=self.eps)
        mixture = mixture.movedim(-1, axis)
        return mixture, xc, None if mask is None else mask.movedim(-1, axis)
