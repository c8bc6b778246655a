"""Tests of daamflow.attention against independent hand computations (explicit loops, float64)."""
from __future__ import annotations

import math

import pytest
import torch

from daamflow.attention import MixtureDAAM


# ----------------------------------------------------------------------------------------------------- MixtureDAAM
def _mixture_by_hand(x, m, c, num_heads, eps=1e-8, padding_value=None):
    """Loop-by-loop Mixture of Densities on a (B, L) tensor along axis 1, as in the appendix + the authors' code."""
    b_size, length = x.shape
    chunk = length // num_heads
    dens = torch.zeros(b_size, length, dtype=torch.float64)
    for b in range(b_size):
        for h in range(num_heads):
            end = length if h == num_heads - 1 else (h + 1) * chunk
            idx = [i for i in range(h * chunk, end) if padding_value is None or x[b, i].item() != padding_value]
            vals = [x[b, i].item() for i in idx]
            mu = sum(vals) / len(vals)
            var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
            sigma2 = var + eps
            prods = []
            for v in vals:
                p = 1.0
                for g in range(m.shape[1]):
                    ci, mi = c[h, g].item(), m[h, g].item()
                    p *= math.exp(-((v - mu - mi) ** 2) / (2 * ci**2 * sigma2)) / math.sqrt(2 * math.pi * ci**2)
                prods.append(p)
            total = max(sum(prods), eps)
            for i, p in zip(idx, prods):
                dens[b, i] = p / total
    return dens


def _set_params(mod, gen):
    with torch.no_grad():
        mod.mean_offsets.copy_(0.3 * torch.randn(mod.mean_offsets.shape, generator=gen))
        mod.c.copy_(torch.exp(0.3 * torch.randn(mod.c.shape, generator=gen)))


@pytest.mark.parametrize("length,heads", [(8, 2), (7, 3), (5, 1)])
def test_mixture_matches_hand_computation(length, heads):
    gen = torch.Generator().manual_seed(0)
    mod = MixtureDAAM(num_heads=heads, num_gaussians=3, norm_axis=1).double()
    _set_params(mod, gen)
    x = torch.randn(3, length, generator=gen, dtype=torch.float64)
    expected = _mixture_by_hand(x, mod.mean_offsets, mod.c, heads)
    torch.testing.assert_close(mod.density(x), expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(mod(x), x + x * expected, rtol=1e-9, atol=1e-12)


def test_mixture_sums_to_one_per_head_and_any_axis():
    gen = torch.Generator().manual_seed(1)
    mod = MixtureDAAM(num_heads=4, num_gaussians=4, norm_axis=1)
    x = torch.randn(2, 10, 3, 5, generator=gen)  # (B, C, H, W): chunks 2, 2, 2, 4 channels
    dens = mod.density(x)
    assert dens.shape == x.shape
    bounds = [(0, 2), (2, 4), (4, 6), (6, 10)]
    for start, end in bounds:
        torch.testing.assert_close(dens[:, start:end].sum(1), torch.ones(2, 3, 5))
    # The same module on the last axis of a permuted copy gives the permuted result.
    mod_last = MixtureDAAM(num_heads=4, num_gaussians=4, norm_axis=-1)
    mod_last.load_state_dict(mod.state_dict())
    torch.testing.assert_close(mod_last(x.movedim(1, -1)), mod(x).movedim(1, -1))


def test_mixture_rank4_channels_matches_hand_computation():
    gen = torch.Generator().manual_seed(2)
    mod = MixtureDAAM(num_heads=2, num_gaussians=2, norm_axis=1).double()
    _set_params(mod, gen)
    x = torch.randn(2, 5, 2, 3, generator=gen, dtype=torch.float64)
    got = mod.density(x)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(got[:, :, i, j], _mixture_by_hand(x[:, :, i, j], mod.mean_offsets, mod.c, 2))


def test_mixture_padding_left_out_and_passed_through():
    gen = torch.Generator().manual_seed(3)
    mod = MixtureDAAM(num_heads=2, num_gaussians=2, norm_axis=1, padding_value=0.0).double()
    _set_params(mod, gen)
    x = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    x[0, 1] = x[0, 6] = x[1, 3] = 0.0
    expected = _mixture_by_hand(x, mod.mean_offsets, mod.c, 2, padding_value=0.0)
    torch.testing.assert_close(mod.density(x), expected)
    out = mod(x)
    torch.testing.assert_close(out, x + x * expected)
    assert out[0, 1] == 0.0 and out[1, 3] == 0.0


def test_mixture_chunk_of_one_is_finite():
    mod = MixtureDAAM(num_heads=3, num_gaussians=4, norm_axis=1, c_init=2.0)
    x = torch.randn(4, 3, 6, requires_grad=True)  # every head sees exactly one channel
    out = mod(x)
    assert torch.isfinite(out).all()
    # At init (m = 0) the single value equals its own mean: density 1, output 2x.
    torch.testing.assert_close(out, 2 * x)
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(mod.c.grad).all()
    with torch.no_grad():
        mod.mean_offsets.fill_(0.5)  # the single value is now far (in eps units) from mu + m: density underflows
    assert torch.isfinite(mod(x)).all()


def test_mixture_gradients_reach_parameters():
    torch.manual_seed(0)
    mod = MixtureDAAM(num_heads=2, num_gaussians=4, norm_axis=1)
    x = torch.randn(3, 6, 4)
    (mod(x) ** 2).sum().backward()
    assert mod.mean_offsets.grad.abs().min() > 0
    assert mod.c.grad.abs().min() > 0


def test_mixture_gradcheck():
    gen = torch.Generator().manual_seed(4)
    mod = MixtureDAAM(num_heads=2, num_gaussians=2, norm_axis=1).double()
    _set_params(mod, gen)
    x = torch.randn(2, 5, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, m, c: _with_params(mod, m, c)(t), (x, mod.mean_offsets, mod.c))


def _with_params(mod, m, c):
    def run(t):
        return torch.func.functional_call(mod, {"mean_offsets": m, "c": c}, (t,))

    return run


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mixture_half_precision(dtype):
    torch.manual_seed(0)
    mod = MixtureDAAM(num_heads=2, num_gaussians=4, norm_axis=1)
    x = torch.randn(2, 6, 4)
    out = mod(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), mod(x.to(dtype).float()), rtol=1e-2, atol=1e-2)


def test_mixture_init_and_determinism():
    torch.manual_seed(7)
    a = MixtureDAAM()
    torch.manual_seed(7)
    b = MixtureDAAM()
    assert a.mean_offsets.shape == a.c.shape == (8, 4)
    assert sum(p.numel() for p in a.parameters()) == 64
    assert (a.mean_offsets == 0).all() and (a.c > 0).all()
    torch.testing.assert_close(a.c, b.c)
    assert (MixtureDAAM(c_init=2.0).c == 2.0).all()


def test_mixture_errors():
    with pytest.raises(ValueError, match="num_heads"):
        MixtureDAAM(num_heads=0)
    with pytest.raises(ValueError, match="c_init"):
        MixtureDAAM(c_init="uniform")
    with pytest.raises(ValueError, match="norm_axis=3 is out of range"):
        MixtureDAAM(num_heads=2, norm_axis=3)(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="smaller than num_heads=8"):
        MixtureDAAM(num_heads=8, norm_axis=1)(torch.randn(2, 4, 4))
