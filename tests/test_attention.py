"""Tests of daamflow.models.attention against independent hand computations (explicit loops, float64)."""
from __future__ import annotations

import math

import pytest
import torch

from daamflow.models.attention import GQDAAM, GroupedQueryAttention, LayerSelfAttention
from daamflow.models.daam import DAAM, MixtureDAAM, _DAAMFunction


# ------------------------------------------------------------------------------------------------------------ DAAM
def _daam_by_hand(x, delta, xi, num_heads, eps=1e-5, squared=False):
    """Algorithm 1 per head, feature and sample with Python scalars; returns (output, gate)."""
    b_size, n_layers, d = x.shape
    per = n_layers // num_heads
    gate = torch.zeros_like(x)
    for b in range(b_size):
        for h in range(num_heads):
            for j in range(d):
                vals = [x[b, h * per + l, j].item() for l in range(per)]
                mu = sum(vals) / per
                var = abs(sum(v * v for v in vals) / per - mu * mu) + 1e-8
                spread = xi[h, j].item() ** 2 if squared else xi[h, j].item()
                for l, v in enumerate(vals):
                    z = (v - mu - delta[h, j].item()) / math.sqrt(var + eps)
                    gate[b, h * per + l, j] = math.exp(-(z * z) / (2 * spread))
    return x * gate, gate


def _random_daam(n_layers, d, heads, squared=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mod = DAAM(n_layers, d, num_heads=heads, squared_variance=squared).double()
    with torch.no_grad():
        mod.mean_offset.copy_(0.2 * torch.randn(heads, d, generator=gen, dtype=torch.float64))
        mod.scaled_variance.copy_(2 + 0.3 * torch.randn(heads, d, generator=gen, dtype=torch.float64))
    return mod, gen


@pytest.mark.parametrize("n_layers,heads,squared", [(6, 2, False), (6, 3, True), (4, 1, False), (5, 5, False)])
def test_daam_matches_hand_computation(n_layers, heads, squared):
    mod, gen = _random_daam(n_layers, 3, heads, squared)
    x = torch.randn(2, n_layers, 3, generator=gen, dtype=torch.float64)
    out, gate = _daam_by_hand(x, mod.mean_offset, mod.scaled_variance, heads, squared=squared)
    torch.testing.assert_close(mod(x), out)
    torch.testing.assert_close(mod.density(x), gate)


def test_daam_init_and_parameter_shapes():
    mod = DAAM(24, 1024, num_heads=8)
    assert mod.mean_offset.shape == mod.scaled_variance.shape == (8, 1024)
    assert (mod.mean_offset == 0).all() and (mod.scaled_variance == 2).all()
    assert sum(p.numel() for p in mod.parameters()) == 16_384
    assert sum(p.numel() for p in DAAM(40, 5120, num_heads=1).parameters()) == 10_240


def test_daam_gate_is_one_where_z_is_zero():
    mod = DAAM(4, 3, num_heads=2)
    x = torch.randn(2, 4, 3)
    x[:, 2:] = 5.0  # head 1: both layers equal their mean -> z = 0 (delta = 0)
    gate = mod.density(x)
    torch.testing.assert_close(gate[:, 2:], torch.ones(2, 2, 3))
    assert (gate[:, :2] < 1).all()


def test_daam_single_layer_heads_are_finite():
    mod = DAAM(3, 4, num_heads=3)
    x = torch.randn(2, 3, 4, requires_grad=True)
    torch.testing.assert_close(mod(x), x)  # v = 1e-8, z = -delta/sqrt(v + eps) = 0 at init
    with torch.no_grad():
        mod.mean_offset.fill_(1e-3)
    gate = mod.density(x)
    expected = math.exp(-(1e-3**2) / (2 * 2.0 * (1e-8 + 1e-5)))
    torch.testing.assert_close(gate, torch.full_like(gate, expected))
    mod(x).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(mod.mean_offset.grad).all()


def test_daam_heads_are_independent():
    mod, gen = _random_daam(6, 4, 3)
    x = torch.randn(2, 6, 4, generator=gen, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 2:4] = torch.randn(2, 2, 4, generator=gen, dtype=torch.float64)  # change head 1's block only
    y, y2 = mod(x), mod(x2)
    torch.testing.assert_close(y[:, :2], y2[:, :2])
    torch.testing.assert_close(y[:, 4:], y2[:, 4:])
    assert not torch.allclose(y[:, 2:4], y2[:, 2:4])


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("per_head", [1, 3])
def test_daam_function_gradcheck(per_head, squared):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, per_head, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    scale = 1e-3 if per_head == 1 else 0.3  # one layer: z = -delta / sqrt(1e-5), keep it in a non-flat region
    delta = (scale * torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    xi = (2 + 0.3 * torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    fn = lambda a, b, c: _DAAMFunction.apply(a, b, c, 1e-5, squared)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, delta, xi))


def test_daam_gradients_match_plain_autograd():
    mod, gen = _random_daam(6, 5, 2)
    x = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(3, 6, 5, generator=gen, dtype=torch.float64)
    mod(x).backward(gy)
    grads = [x.grad.clone(), mod.mean_offset.grad.clone(), mod.scaled_variance.grad.clone()]
    # Plain autograd on the algorithm, head loop as the released code.
    x_ref = x.detach().clone().requires_grad_()
    delta = mod.mean_offset.detach().clone().requires_grad_()
    xi = mod.scaled_variance.detach().clone().requires_grad_()
    outs = []
    for h in range(2):
        y = x_ref[:, 3 * h : 3 * h + 3]
        mean = y.mean(1, keepdim=True)
        var = ((y**2).mean(1, keepdim=True) - mean**2).abs() + 1e-8
        y_norm = (y - (mean + delta[h])) / torch.sqrt(var + 1e-5)
        outs.append(y * torch.exp(-(y_norm**2 / (2 * xi[h]))))
    torch.cat(outs, 1).backward(gy)
    for got, want in zip(grads, [x_ref.grad, delta.grad, xi.grad]):
        torch.testing.assert_close(got, want)
    assert (grads[1] != 0).all() and (grads[2] != 0).all()
    # Features without gradient (the training case): the parameter gradients are unchanged.
    mod.zero_grad()
    mod(x.detach()).backward(gy)
    torch.testing.assert_close(mod.mean_offset.grad, delta.grad)
    torch.testing.assert_close(mod.scaled_variance.grad, xi.grad)


def test_daam_cache_slices_match_one_pass(monkeypatch):
    """The CPU batch slicing (several slices here) gives the same values and gradients as a single slice."""
    from daamflow.models import daam

    mod, gen = _random_daam(6, 5, 2)
    x = torch.randn(7, 6, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(7, 6, 5, generator=gen, dtype=torch.float64)
    results = []
    for chunk in (10**9, 60):  # one slice; slices of 2 samples (6 x 5 = 30 elements each) with a remainder
        monkeypatch.setattr(daam, "_CPU_CHUNK_ELEMENTS", chunk)
        x.grad = mod.mean_offset.grad = mod.scaled_variance.grad = None
        out = mod(x)
        out.backward(gy)
        results.append([out.detach(), mod.density(x), x.grad, mod.mean_offset.grad, mod.scaled_variance.grad])
    assert len(daam._batch_slices(torch.zeros(7, 2, 3, 5))) == 4
    for one, sliced in zip(*results):
        torch.testing.assert_close(sliced, one)
    fn = lambda a, b, c: _DAAMFunction.apply(a, b, c, 1e-5, False)[0]  # noqa: E731
    x4 = torch.randn(5, 2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    params = (0.3 * torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    xi = (2 + 0.3 * torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(fn, (x4, params, xi))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_daam_half_precision(dtype):
    torch.manual_seed(0)
    mod = DAAM(6, 8, num_heads=2)
    x = torch.randn(2, 6, 8).to(dtype)
    out = mod(x)
    assert out.dtype == dtype and mod.density(x).dtype == torch.float32
    torch.testing.assert_close(out.float(), mod(x.float()), rtol=1e-2, atol=1e-2)
    x.requires_grad_()
    mod(x).float().sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(mod.scaled_variance.grad).all()


def test_daam_deterministic():
    x = torch.randn(2, 6, 8)
    a = DAAM(6, 8, num_heads=2)
    torch.testing.assert_close(a(x), a(x), rtol=0, atol=0)


def test_daam_errors():
    with pytest.raises(ValueError, match=r"num_layers=6 is not divisible by num_heads=4.*\[1, 2, 3, 6\]"):
        DAAM(6, 8, num_heads=4)
    with pytest.raises(ValueError, match="feature_dim must be a positive int"):
        DAAM(6, 0)
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, num_layers=6, feature_dim=8\)"):
        DAAM(6, 8, num_heads=2)(torch.randn(2, 6, 7))
    with pytest.raises(ValueError, match="got \\(6, 8\\)"):
        DAAM(6, 8, num_heads=2)(torch.randn(6, 8))


# ------------------------------------------------------------------------------------------------- GQA, GQDAAM, MHA
def _gqa_by_hand(mod, x, standard):
    b_size, t, _ = x.shape
    hq, hkv, hd = mod.query_heads, mod.kv_heads, mod.head_dim
    groups = hq // hkv
    q, k, v = mod.q_proj(x), mod.k_proj(x), mod.v_proj(x)
    heads_out = hq if standard else hkv
    out = torch.zeros(b_size, t, heads_out * hd, dtype=x.dtype)
    for b in range(b_size):
        for h in range(heads_out):
            kv = h // groups if standard else h
            kh, vh = k[b, :, kv * hd : (kv + 1) * hd], v[b, :, kv * hd : (kv + 1) * hd]
            if standard:
                qh, scale = q[b, :, h * hd : (h + 1) * hd], 1 / math.sqrt(hd)
            else:  # sum of the group's query heads, scaled by 1/sqrt(hd) twice
                qh = sum(q[b, :, (h * groups + g) * hd : (h * groups + g + 1) * hd] for g in range(groups))
                scale = 1 / hd
            for i in range(t):
                logits = torch.stack([(qh[i] * kh[j]).sum() * scale for j in range(t)])
                w = torch.softmax(logits, 0)
                out[b, i, h * hd : (h + 1) * hd] = sum(w[j] * vh[j] for j in range(t))
    return mod.out_proj(mod.norm(out))


@pytest.mark.parametrize("standard", [False, True])
def test_gqa_matches_hand_computation(standard):
    torch.manual_seed(0)
    mod = GroupedQueryAttention(embed_dim=8, query_heads=4, kv_heads=2, standard=standard).double()
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    torch.testing.assert_close(mod(x), _gqa_by_hand(mod, x, standard))


def test_gqa_and_gqdaam_parameter_counts():
    assert sum(p.numel() for p in GroupedQueryAttention(512, 8, 2).parameters()) == 460_288
    std = GroupedQueryAttention(512, 8, 2, standard=True)
    assert std.out_proj.in_features == 512 and std.k_proj.out_features == 128
    with torch.device("meta"):
        assert sum(p.numel() for p in GQDAAM(24, 1024).parameters()) == 1_001_472
        assert sum(p.numel() for p in GQDAAM(40, 5120).parameters()) == 3_164_160
        assert sum(p.numel() for p in GQDAAM(24, 1024, daam_heads=None).parameters()) == 985_088
    with pytest.raises(ValueError, match="query_heads % kv_heads"):
        GroupedQueryAttention(512, 8, 3)


def test_gqdaam_tokens_are_layers():
    torch.manual_seed(0)
    mod = GQDAAM(6, 8, daam_heads=2, gqa_dim=16, query_heads=4, kv_heads=2)
    out = mod(torch.randn(3, 6, 8))
    assert out.shape == (3, 6, 16)
    x = torch.randn(2, 6, 8)
    x2 = x.clone()
    x2[1] = torch.randn(6, 8)
    torch.testing.assert_close(mod(x)[0], mod(x2)[0])  # samples do not interact


def test_layer_self_attention_batch_first_vs_across_batch_quirk():
    torch.manual_seed(0)
    proper = LayerSelfAttention(8, 2).eval()
    quirk = LayerSelfAttention(8, 2, across_batch=True).eval()
    quirk.load_state_dict(proper.state_dict())
    x = torch.randn(3, 4, 8)
    x2 = x.clone()
    x2[1:] = torch.randn(2, 4, 8)
    torch.testing.assert_close(proper(x)[0], proper(x2)[0])
    assert not torch.allclose(quirk(x)[0], quirk(x2)[0])  # the released code's prediction depends on the batch
    # The quirk equals torch's default (sequence-first) MultiheadAttention applied to (B, N, d) as the released code.
    ref = torch.nn.MultiheadAttention(8, 2)
    ref.load_state_dict(proper.attn.state_dict())
    torch.testing.assert_close(quirk(x), ref(x, x, x)[0])


def test_layer_self_attention_batch_norm_over_layers():
    torch.manual_seed(0)
    mod = LayerSelfAttention(8, 2, num_layers=4, batch_norm=True).train()
    out = mod(torch.randn(5, 4, 8))
    torch.testing.assert_close(out.mean((0, 2)), torch.zeros(4), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in mod.norm.parameters()) == 8
    with pytest.raises(ValueError, match="num_layers"):
        LayerSelfAttention(8, 2, batch_norm=True)


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
