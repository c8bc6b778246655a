"""DAAM(kernel="fast"), the C++ kernel of daamflow.models._kernels, against the eager reference path."""
from __future__ import annotations

import platform
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from daamflow.models import _kernels
from daamflow.models.daam import DAAM, _FastDAAMFunction
from daamflow.models.heads import build_model
from daamflow.run.train import train_all
from test_train import _settings, store  # noqa: F401  (the training tests' feature store fixture)

pytestmark = pytest.mark.skipif(_kernels.compiler() is None, reason="no C++ compiler: the fast kernel cannot be built")


@pytest.fixture(scope="module", autouse=True)
def kernel_cache(tmp_path_factory):
    """Build into a fresh cache folder (the build itself is under test), once for the module."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DAAMFLOW_KERNEL_CACHE", str(tmp_path_factory.mktemp("kernels")))
    _kernels.load.cache_clear()
    assert _kernels.unavailable_reason() is None  # a compiler is there: the build must work
    yield
    mp.undo()
    _kernels.load.cache_clear()


def _pair(n_layers, d, heads, squared, dtype, seed=0):
    """An eager and a fast DAAM with the same parameters, away from the init so that every gradient term is live."""
    torch.manual_seed(seed)
    eager = DAAM(n_layers, d, num_heads=heads, squared_variance=squared).to(dtype)
    with torch.no_grad():
        eager.mean_offset.normal_(0, 0.3)
        eager.scaled_variance.uniform_(0.5, 3.0)
    fast = DAAM(n_layers, d, num_heads=heads, squared_variance=squared, kernel="fast").to(dtype)
    fast.load_state_dict(eager.state_dict())
    return eager, fast


def _outputs(module, x, gy, dtype):
    """y, dx, g_delta, g_xi and the gate of ``module`` on x (cast to ``dtype``)."""
    module.zero_grad()
    xx = x.detach().to(dtype).requires_grad_()
    y = module(xx)
    y.backward(gy.to(dtype))
    return y.detach(), xx.grad, module.mean_offset.grad, module.scaled_variance.grad, module.density(xx.detach())


SHAPES = [  # (batch, layers, features, heads, squared): odd sizes, one head, one-layer heads, tiles of 256 + a tail
    (5, 24, 37, 8, False),
    (3, 7, 300, 1, True),
    (4, 6, 513, 6, False),
    (2, 8, 10, 4, True),
    (1, 5, 1, 1, False),
    (40, 24, 64, 8, False),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_fast_matches_eager_in_float64(shape):
    b, n, d, heads, squared = shape
    eager, fast = _pair(n, d, heads, squared, torch.float64)
    x, gy = torch.randn(b, n, d, dtype=torch.float64) * 2 + 1, torch.randn(b, n, d, dtype=torch.float64)
    for name, got, want in zip(("y", "dx", "g_delta", "g_xi", "gate"), _outputs(fast, x, gy, torch.float64),
                               _outputs(eager, x, gy, torch.float64)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


def _assert_float32_as_accurate_as_eager(shape):
    """Both float32 paths against the float64 result: the kernel's error is at most a little above eager's."""
    b, n, d, heads, squared = shape
    eager, fast = _pair(n, d, heads, squared, torch.float64)
    x, gy = torch.randn(b, n, d) * 2 + 1, torch.randn(b, n, d)
    truth = _outputs(eager, x, gy, torch.float64)
    errors = {}
    for label, module in (("eager", eager), ("fast", fast)):
        module.float()
        errors[label] = [
            ((got.double() - want).abs().max() / want.abs().max().clamp(min=1e-30)).item()
            for got, want in zip(_outputs(module, x, gy, torch.float32), truth)
        ]
    for name, e_fast, e_eager in zip(("y", "dx", "g_delta", "g_xi", "gate"), errors["fast"], errors["eager"]):
        assert e_fast <= 4 * e_eager + 1e-6, f"{name}: fast error {e_fast:.2e}, eager {e_eager:.2e}"


@pytest.mark.parametrize("shape", SHAPES)
def test_fast_float32_is_as_accurate_as_eager_float32(shape):
    _assert_float32_as_accurate_as_eager(shape)


@pytest.mark.parametrize("squared", [False, True])
def test_fast_gradcheck(squared):
    torch.manual_seed(1)
    x = (torch.randn(3, 2, 3, 5, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    delta = (0.3 * torch.randn(2, 5, dtype=torch.float64)).requires_grad_()
    xi = (torch.rand(2, 5, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: _FastDAAMFunction.apply(a, b, c, 1e-5, squared), (x, delta, xi))


def test_non_contiguous_input_and_no_input_gradient():
    eager, fast = _pair(12, 33, 4, False, torch.float64)
    base = torch.randn(33, 7, 12, dtype=torch.float64)
    x = base.permute(1, 2, 0)  # (7, 12, 33), not contiguous
    assert not x.is_contiguous()
    gy = torch.randn(7, 12, 33, dtype=torch.float64)
    y_fast, y_eager = fast(x), eager(x)  # x needs no gradient: the kernel skips dx
    y_fast.backward(gy)
    y_eager.backward(gy)
    torch.testing.assert_close(y_fast, y_eager, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.mean_offset.grad, eager.mean_offset.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(fast.scaled_variance.grad, eager.scaled_variance.grad, rtol=1e-10, atol=1e-12)


def test_result_does_not_depend_on_the_thread_count():
    _, fast = _pair(24, 300, 8, False, torch.float32)
    x, gy = torch.randn(70, 24, 300, requires_grad=True), torch.randn(70, 24, 300)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(_outputs(fast, x, gy, torch.float32))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for got, want in zip(other, results[0]):
            assert torch.equal(got, want)


def test_one_layer_heads_are_the_identity_at_init():
    """A head of one layer: s = 0 and x - mu = 0 exactly, so at delta = 0 the gate is 1 and g_delta is 0 (as eager)."""
    fast = DAAM(4, 9, num_heads=4, kernel="fast")
    x = torch.randn(6, 4, 9, requires_grad=True)
    y = fast(x)
    assert torch.equal(y, x)
    assert torch.equal(fast.density(x), torch.ones_like(x))
    y.backward(torch.randn_like(y))
    assert torch.equal(fast.mean_offset.grad, torch.zeros_like(fast.mean_offset))


def test_nan_propagates_as_in_eager():
    eager, fast = _pair(8, 6, 2, False, torch.float32)
    x = torch.randn(3, 8, 6)
    x[1, 2, 3] = float("nan")
    assert torch.equal(torch.isnan(fast(x)), torch.isnan(eager(x)))


def test_half_input_returns_half():
    _, fast = _pair(8, 16, 2, False, torch.float32)
    x = torch.randn(4, 8, 16, dtype=torch.bfloat16)
    y = fast(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, fast.float()(x.float()).to(torch.bfloat16))


def test_without_a_compiler_the_eager_path_runs_with_a_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("DAAMFLOW_KERNEL_CACHE", str(tmp_path / "cache"))
    _kernels.load.cache_clear()
    try:
        assert "no C++ compiler" in _kernels.unavailable_reason()
        eager, fast = _pair(8, 5, 2, False, torch.float32)
        x = torch.randn(3, 8, 5)
        with pytest.warns(RuntimeWarning, match="running the eager path: no C\\+\\+ compiler"):
            y = fast(x)
        assert torch.equal(y, eager(x))  # the eager path itself, bit for bit
    finally:
        _kernels.load.cache_clear()


def test_a_failing_build_names_the_source(monkeypatch, tmp_path):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(_kernels, "SOURCE", broken)
    monkeypatch.setenv("DAAMFLOW_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(RuntimeError, match="broken.cpp"):
        _kernels.build()
    assert not list((tmp_path / "cache").iterdir())  # no half-written library left behind


def test_build_is_cached():
    path = _kernels.build()
    stamp = path.stat().st_mtime_ns
    assert _kernels.build() == path and path.stat().st_mtime_ns == stamp


def test_kernel_option_errors_and_registry():
    with pytest.raises(ValueError, match="kernel must be one of"):
        DAAM(8, 4, num_heads=2, kernel="triton")
    with pytest.raises(ValueError, match="daam_kernel='cuda'"):
        build_model("daam_v1", 8, 16, 3, daam_kernel="cuda")
    assert build_model("daam_v2", 8, 16, 3, daam_kernel="fast").attention.kernel == "fast"
    assert build_model("gqdaam", 8, 16, 3, gqa_dim=8, daam_kernel="fast").attention.daam.kernel == "fast"
    assert build_model("daam_v1", 8, 16, 3).attention.kernel == "eager"  # the default stays the reference


def test_gate_of_the_fast_path_has_no_history():
    _, fast = _pair(8, 5, 2, False, torch.float32)
    gate = fast.density(torch.randn(3, 8, 5, requires_grad=True))
    assert not gate.requires_grad


def test_warning_is_not_raised_when_the_kernel_runs():
    _, fast = _pair(8, 5, 2, False, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast(torch.randn(3, 8, 5))


def test_float32_gate_is_exp2_to_a_few_ulp():
    """Heads of one layer make the score exact to rounding, u'^2 = t: the float32 gate against 2^-t in float64 over
    the whole range the kernel computes (t up to 124), in units of log2: the kernel's own 2^x, not only the formula."""
    d = 4096
    fast = DAAM(4, d, num_heads=4, kernel="fast")
    t = torch.cat([torch.linspace(0, 2, d), torch.linspace(0, 124, d), torch.rand(d) * 40, torch.rand(d)]).view(4, d)
    r2 = 1.0 / (1e-8 + fast.eps)
    with torch.no_grad():
        fast.scaled_variance.fill_(1.0)  # kappa' = log2(e) / 2: t = delta^2 r^2 log2(e) / 2
        fast.mean_offset.copy_((t.double() / (r2 * 0.5 / torch.log(torch.tensor(2.0, dtype=torch.float64)))).sqrt())
    t_true = fast.mean_offset.double() ** 2 * r2 * 0.5 / torch.log(torch.tensor(2.0, dtype=torch.float64))
    gate = fast.density(torch.randn(3, 4, d))
    err = (torch.log2(gate.double()) + t_true.unsqueeze(0)).abs()
    assert (err <= 5e-7 + 5e-7 * t_true.unsqueeze(0)).all(), f"max log2 error {err.max().item():.2e}"


@pytest.mark.parametrize("d", [1024, 1001])
def test_large_calls_write_the_same_values_as_small_ones(d):
    """A call whose tensors exceed the kernel's cache-size threshold (32 MiB) writes y and dx with non-temporal stores
    where every row is vector-aligned (d = 1024) and with plain stores otherwise (d = 1001): the same values, bit for
    bit, as the same blocks in small calls."""
    _, fast = _pair(24, d, 8, False, torch.float32)
    x, gy = torch.randn(180, 24, d), torch.randn(180, 24, d)  # x + y: 35 MB

    def y_dx(xs, gys):
        xs = xs.clone().requires_grad_()
        y = fast(xs)
        y.backward(gys)
        return y.detach(), xs.grad

    whole = y_dx(x, gy)
    parts = [y_dx(x[i : i + 20], gy[i : i + 20]) for i in range(0, 180, 20)]
    for k, name in enumerate(("y", "dx")):
        assert torch.equal(whole[k], torch.cat([p[k] for p in parts])), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gate_underflows_to_zero_without_nan(dtype):
    """Scores whose 2^(-u'^2) is subnormal or below (u'^2 from 130 to past the float32 range, and an infinite offset):
    the gate is that small, never NaN, and y is x times about 0 as on the eager path (heads of one layer:
    u' = -delta r sqrt(kappa'))."""
    eager, fast = _pair(4, 6, 4, False, dtype)
    r2 = 1.0 / (1e-8 + fast.eps)
    t = torch.tensor([130.0, 149.0, 200.0, 1e6, 1e39, float("inf")], dtype=torch.float64)
    with torch.no_grad():
        for module in (eager, fast):
            module.scaled_variance.fill_(1.0)
            module.mean_offset.copy_((t / (r2 * 0.5 / np.log(2.0))).sqrt().expand(4, 6))
    x = torch.randn(3, 4, 6, dtype=dtype)
    gate = fast.density(x)
    assert not gate.isnan().any() and (gate >= 0).all() and (gate <= 2.0**-125).all()
    torch.testing.assert_close(fast(x), eager(x), rtol=0, atol=1e-37)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="targets of x86-64 only")
@pytest.mark.parametrize("march", ["x86-64-v3", "x86-64"])
def test_builds_for_cpus_without_avx512(march, monkeypatch, tmp_path):
    """The kernel has AVX-512 code paths; its portable ones (AVX2, SSE2) are built here for an older x86 target and
    checked against eager as the native build is."""
    monkeypatch.setattr(_kernels, "FLAGS", tuple(f"-march={march}" if f == "-march=native" else f for f in _kernels.FLAGS))
    monkeypatch.setenv("DAAMFLOW_KERNEL_CACHE", str(tmp_path))
    _kernels.load.cache_clear()
    try:
        assert _kernels.unavailable_reason() is None
        shape = (7, 24, 300, 8, False)
        test_fast_matches_eager_in_float64(shape)
        _assert_float32_as_accurate_as_eager(shape)
    finally:
        _kernels.load.cache_clear()


def test_training_with_the_fast_kernel_follows_the_eager_run(store, tmp_path):  # noqa: F811
    """The train stage with model_options.daam_kernel = fast: the same folds learn the same to rounding."""
    runs = {}
    for kernel in ("eager", "fast"):
        settings = _settings(epochs=4)
        settings["model_options"]["daam_kernel"] = kernel
        runs[kernel] = train_all(store, settings, tmp_path / kernel)
        assert runs[kernel]["settings_hash"].nunique() == 1
    assert runs["eager"]["settings_hash"][0] != runs["fast"]["settings_hash"][0]  # the kernel is part of the identity
    history = {k: pd.read_csv(tmp_path / k / "fold1" / "history.csv") for k in runs}
    np.testing.assert_allclose(history["fast"]["train_loss"], history["eager"]["train_loss"], rtol=1e-4)
    assert runs["fast"]["accuracy"].tolist() == runs["eager"]["accuracy"].tolist()
