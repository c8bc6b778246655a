"""Tests of daamflow.models.heads: registry, conv decoder, grid rule, helpers for the training loop."""
from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from daamflow.models.heads import (
    METHODS,
    build_model,
    count_parameters,
    density_map,
    gaussian_parameters,
    grid_shape,
    layer_weights,
)


def test_methods_tuple():
    assert METHODS == (
        "linear", "weighted_sum", "identity", "mha", "mha_bn", "gqa", "gqdaam", "daam_v2", "daam_v1", "mixture",
        "mha@released", "mha@across_batch",
    )


@pytest.mark.parametrize("shape", [(3, 6, 384), (2, 4, 7), (2, 1, 16)], ids=["N6d384", "N4d7-fallback", "N1"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_forward_backward(method, shape):
    torch.manual_seed(0)
    b, n, d = shape
    if method == "mha@released" and d < 16:
        pytest.skip("the released 1-channel conv head ends in one ReLU map: over 7 features it is often dead at init")
    model = build_model(method, n, d, 5)
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 5
    x = torch.randn(*shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (b, 5) and logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    logits.square().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", ["daam_v1", "mixture", "gqdaam", "identity"])
def test_half_precision_features(method, dtype):
    torch.manual_seed(0)
    model = build_model(method, 6, 16, 3)
    x = torch.randn(2, 6, 16)
    logits = model(x.to(dtype))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, model(x.to(dtype).float()))
    dens = density_map(model, x.to(dtype))
    assert dens is None if method == "identity" else dens.dtype == torch.float32


def test_grid_rule():
    assert grid_shape(1024) == (32, 32)
    assert grid_shape(5120) == (64, 80)
    assert grid_shape(512) == (16, 32)
    assert grid_shape(384) == (16, 24)
    assert grid_shape(7) == (1, 7)  # prime: documented 1 x d fallback
    assert grid_shape(1) == (1, 1)
    with pytest.raises(ValueError, match="width"):
        grid_shape(0)


def test_conv_decoder_matches_explicit_ops():
    torch.manual_seed(0)
    model = build_model("identity", 4, 12, 3, conv_channels=6)
    x = torch.randn(2, 4, 12)
    grid = x.view(2, 4, 3, 4)  # N layers = channels, 12 features -> 3 x 4
    dec = model.decoder
    y = F.relu(F.conv2d(grid, dec.conv1.weight, dec.conv1.bias, padding=1))
    y = F.relu(F.conv2d(y, dec.conv2.weight, dec.conv2.bias, padding=1))
    expected = y.reshape(2, -1) @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(model(x), expected)
    assert dec.conv1.weight.shape == (6, 4, 3, 3) and dec.conv2.weight.shape == (4, 6, 3, 3)
    assert model.classifier.in_features == 4 * 12


def test_xavier_uniform_init():
    torch.manual_seed(0)
    model = build_model("daam_v1", 8, 64, 10, conv_channels=32)
    for weight in (model.decoder.conv1.weight, model.decoder.conv2.weight, model.classifier.weight):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        assert weight.abs().max() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)


@pytest.mark.parametrize(
    "method,n,expected",
    [("daam_v1", 24, 8), ("daam_v1", 6, 3), ("daam_v1", 4, 2), ("daam_v1", 2, 1), ("daam_v1", 1, 1),
     ("daam_v1", 12, 6), ("daam_v2", 6, 1), ("gqdaam", 40, 8), ("gqdaam", 6, 3)],
)
def test_daam_head_defaults(method, n, expected):
    model = build_model(method, n, 8, 2)
    assert model.resolved["num_heads"] == expected
    assert model.attention.num_heads == expected if method != "gqdaam" else model.attention.daam.num_heads == expected


def test_explicit_heads_and_fallbacks():
    assert build_model("daam_v1", 6, 8, 2, num_heads=3).resolved["num_heads"] == 3
    with pytest.raises(ValueError, match="num_heads=4 does not divide num_layers=6"):
        build_model("daam_v1", 6, 8, 2, num_heads=4)
    assert build_model("mha", 4, 7, 2).resolved["mha_heads"] == 7
    assert build_model("mha", 4, 384, 2).resolved["mha_heads"] == 8
    assert build_model("mha", 4, 12, 2, mha_heads=5).resolved["mha_heads"] == 4
    assert build_model("mixture", 6, 8, 2).resolved["mixture_heads"] == 3  # at most N/2: chunks of >= 2 layers
    assert build_model("mixture", 24, 8, 2).resolved["mixture_heads"] == 8
    with pytest.raises(ValueError, match="smaller than num_heads=8"):
        build_model("mixture", 6, 8, 2, mixture_heads=8)(torch.randn(2, 6, 8))


def test_option_validation():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\].*conv_channels"):
        build_model("daam_v1", 6, 8, 2, colour=1)
    with pytest.raises(ValueError, match="squared_variance=1 must be bool"):
        build_model("daam_v1", 6, 8, 2, squared_variance=1)
    with pytest.raises(ValueError, match="conv_channels=True must be int"):
        build_model("daam_v1", 6, 8, 2, conv_channels=True)
    with pytest.raises(ValueError, match="conv_channels=0 must be >= 1"):
        build_model("daam_v1", 6, 8, 2, conv_channels=0)
    with pytest.raises(ValueError, match="unknown method 'daam'"):
        build_model("daam", 6, 8, 2)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("daam_v1", 6, 8, 0)
    with pytest.raises(ValueError, match="layer=6 is out of range"):
        build_model("linear", 6, 8, 2, layer=6)
    with pytest.raises(ValueError, match=r"expected features of shape \(batch, 6, 8\)"):
        build_model("daam_v1", 6, 8, 2)(torch.randn(2, 5, 8))


def test_options_reach_modules():
    model = build_model("gqdaam", 4, 16, 2, gqa_dim=32, query_heads=4, kv_heads=1, standard_gqa=True,
                        squared_variance=True, conv_channels=5)
    assert model.attention.gqa.standard and model.attention.gqa.kv_heads == 1
    assert model.attention.daam.squared_variance
    assert model.decoder.conv1.out_channels == 5 and model.classifier.in_features == 4 * 32
    assert build_model("gqa", 4, 16, 2).attention.daam is None
    assert build_model("mha", 4, 16, 2, across_batch=True).attention.across_batch


def test_parameter_counts_paper_shapes():
    with torch.device("meta"):
        counts = {m: count_parameters(build_model(m, 24, 1024, 4), include_classifier=False)
                  for m in ("daam_v1", "daam_v2", "mixture", "gqdaam", "gqa", "mha", "mha_bn")}
        v1_5120 = build_model("daam_v1", 40, 5120, 4)
    assert counts["daam_v1"] == 238_104 and counts["daam_v2"] == 223_768
    assert counts["gqdaam"] == 1_223_192 and counts["gqa"] == 1_206_808
    assert counts["mixture"] == 221_720 + 64
    assert counts["mha_bn"] == 4_420_168  # the code comment in IEMOCAP/MHA_BN.py
    assert count_parameters(v1_5120, include_classifier=False) == 451_112
    with torch.device("meta"):
        assert count_parameters(build_model("daam_v1", 24, 1024, 4)) == 336_412  # IEMOCAP/DAAMv1.py comment
    with pytest.raises(ValueError, match="classifier"):
        count_parameters(nn.Linear(2, 2), include_classifier=False)


def test_linear_probe_and_weighted_sum():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 4)
    probe = build_model("linear", 5, 4, 2, layer=2)
    x2 = x.clone()
    x2[:, [0, 1, 3, 4]] = torch.randn(3, 4, 4)
    torch.testing.assert_close(probe(x), probe(x2))
    torch.testing.assert_close(probe(x), probe.classifier(x[:, 2]))
    mean_probe = build_model("linear", 5, 4, 2)
    torch.testing.assert_close(mean_probe(x), mean_probe.classifier(x.mean(1)))
    ws = build_model("weighted_sum", 5, 4, 2)
    torch.testing.assert_close(layer_weights(ws), torch.full((5,), 0.2))
    with torch.no_grad():
        ws.attention.logits.copy_(torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5]))
    w = torch.softmax(torch.tensor([0.0, 1.0, 2.0, -1.0, 0.5]), 0)
    by_hand = sum(w[i] * x[:, i] for i in range(5))
    torch.testing.assert_close(ws(x), ws.classifier(by_hand))
    assert layer_weights(build_model("daam_v1", 5, 4, 2)) is None


def test_density_map_and_gaussian_parameters():
    torch.manual_seed(0)
    x = torch.randn(3, 6, 8)
    for method in ("daam_v1", "daam_v2", "gqdaam"):
        model = build_model(method, 6, 8, 2)
        dens = density_map(model, x)
        assert dens.shape == (3, 6, 8) and not dens.requires_grad
        params = gaussian_parameters(model)
        heads = model.resolved["num_heads"]
        assert set(params) == {"mean_offset", "scaled_variance"}
        assert len(params["mean_offset"]) == heads and len(params["scaled_variance"][0]) == 8
        assert params["scaled_variance"][0][0] == 2.0
        json.dumps(params)
    mix = build_model("mixture", 6, 8, 2)
    dens = density_map(mix, x)
    torch.testing.assert_close(dens.sum(1), torch.full((3, 8), 3.0))  # 3 heads of two layers, each sums to 1
    params = gaussian_parameters(mix)
    assert set(params) == {"mean_offsets", "c"} and len(params["c"]) == 3 and len(params["c"][0]) == 4
    json.dumps(params)
    for method in ("gqa", "mha", "mha_bn", "identity", "weighted_sum", "linear"):
        model = build_model(method, 6, 8, 2)
        assert density_map(model, x) is None and gaussian_parameters(model) is None


def test_single_layer_daam_is_identity_at_init():
    model = build_model("daam_v1", 1, 8, 2)
    x = torch.randn(4, 1, 8)
    torch.testing.assert_close(density_map(model, x), torch.ones(4, 1, 8))


def test_determinism_under_seed():
    for method in ("daam_v1", "mixture", "gqdaam", "mha_bn"):
        torch.manual_seed(3)
        a = build_model(method, 6, 16, 2)
        torch.manual_seed(3)
        b = build_model(method, 6, 16, 2)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
        x = torch.randn(2, 6, 16)
        torch.testing.assert_close(a(x), b(x))


def test_released_mha_reads_one_layer_attends_across_the_batch_and_has_a_one_channel_head():
    torch.manual_seed(0)
    model = build_model("mha@released", 24, 16, 4)
    assert model.resolved["layer"] == 22 and model.resolved["across_batch"]  # the released x[:, 22] of 24 layers
    assert model.decoder.conv1.in_channels == 1 and model.decoder.conv2.out_channels == 1
    assert model.classifier.in_features == 16
    model.eval()
    x = torch.randn(5, 24, 16)
    others = x.clone()
    others[:, [i for i in range(24) if i != 22]] = torch.randn(5, 23, 16)
    torch.testing.assert_close(model(x), model(others))  # no layer but 22 is read
    neighbour = x.clone()
    neighbour[1:, 22] += 1.0  # only the other samples of the batch change
    assert not torch.allclose(model(x)[0], model(neighbour)[0])  # sample 0's prediction depends on them
    assert torch.allclose(model(x[:1])[0], model(x[:1])[0])
    # other depths read their last layer; an explicit layer is honoured and checked
    assert build_model("mha@released", 6, 16, 4).resolved["layer"] == 5
    assert build_model("mha@released", 40, 16, 4).resolved["layer"] == 39
    assert build_model("mha@released", 6, 16, 4, layer=2).resolved["layer"] == 2
    with pytest.raises(ValueError, match=r"build_model\(mha@released\): layer=6 is out of range"):
        build_model("mha@released", 6, 16, 4, layer=6)


def test_released_mha_parameter_count():
    with torch.device("meta"):
        model = build_model("mha@released", 24, 1024, 4)
    # MHA(1024, 8) 4,198,400 + Conv2d(1->512) 5,120 + Conv2d(512->1) 4,609; fc Linear(1024 -> 4) 4,100
    assert count_parameters(model, include_classifier=False) == 4_198_400 + 5_120 + 4_609
    assert count_parameters(model) == 4_198_400 + 5_120 + 4_609 + 4_100


def test_gqdaam_released_cifar_daam_heads():
    """The released CIFAR-100 GQDAAM's DAAM has 1 head (its code comment: 1,208,856 parameters); ours defaults to 8."""
    with torch.device("meta"):
        one = build_model("gqdaam", 24, 1024, 100, num_heads=1)
        eight = build_model("gqdaam", 24, 1024, 100)
    assert count_parameters(one, include_classifier=False) == 1_208_856
    assert count_parameters(eight, include_classifier=False) == 1_223_192
    torch.manual_seed(0)
    one, eight = build_model("gqdaam", 24, 8, 3, num_heads=1), build_model("gqdaam", 24, 8, 3)
    x = torch.randn(2, 24, 8)
    x[:, 3:] *= 10.0  # layers beyond the first 8-head block change only the 1-head statistics of layers 0-2
    g1, g8 = density_map(one, x), density_map(eight, x)
    torch.testing.assert_close(g8[:, :3], density_map(eight, torch.cat([x[:, :3], torch.randn(2, 21, 8)], 1))[:, :3])
    assert not torch.allclose(g1[:, :3], density_map(one, torch.cat([x[:, :3], torch.randn(2, 21, 8)], 1))[:, :3])


def test_across_batch_mha_is_mha_with_only_that_quirk():
    torch.manual_seed(0)
    ours = build_model("mha", 6, 16, 4)
    torch.manual_seed(0)
    quirk = build_model("mha@across_batch", 6, 16, 4)
    assert quirk.resolved["across_batch"] and not ours.resolved["across_batch"]
    assert count_parameters(quirk, include_classifier=True) == count_parameters(ours, include_classifier=True)
    for (ka, va), (kb, vb) in zip(ours.state_dict().items(), quirk.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)  # the same weights: only the attention's sequence axis differs
    ours.eval(), quirk.eval()
    x = torch.randn(5, 6, 16)
    neighbour = x.clone()
    neighbour[1:] += 1.0  # only the other samples of the batch change
    torch.testing.assert_close(ours(x)[0], ours(neighbour)[0])
    assert not torch.allclose(quirk(x)[0], quirk(neighbour)[0])
