"""Benchmark DAAM forward+backward on CPU against the released code's per-head loop and a memory roofline.

    python benchmarks/bench_daam.py [--threads 1 2] [--repeats 5] [--compile] [--variants loop fast ...]

For each thread count and shape, float32, DAAMv1 (8 heads):
  * loop      - the released code's way (one DAAM module per head, Python loop, torch autograd), written out here;
  * autograd  - the same formula vectorised over heads, differentiated by plain autograd;
  * fused     - daamflow.models.daam.DAAM (one autograd.Function with an analytic backward);
  * fused-nodx - the same when the input needs no gradient (the training case: DAAM reads frozen features);
  * fast, fast-nodx - DAAM(kernel="fast"): the C++/OpenMP kernel (daamflow.models._kernels; skipped, with the
    reason, where it cannot be built);
  * compiled  - opt-in (--compile): torch.compile of the vectorised formula, with its compile cost.
``--variants`` times only the ones named (loop always: the ratios are to it), e.g. a short run on a shared machine.
The roofline is the unavoidable traffic (forward reads x and writes y; backward reads x and dy and writes dx:
5 tensors of B*N*d float32; 4 without dx) divided by the copy bandwidth measured here on a large tensor (same thread
count); "roofline/this" is the share of that bound a variant reaches.
Times are the minimum over ``--repeats`` runs (the machine may be shared; the minimum is the least disturbed run).
Besides wall time, the process CPU time is shown: on a shared machine with ``--threads 1`` it approximates the
uncontended single-core time, so the loop/this ratio is also given on CPU time.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from daamflow.models import _kernels
from daamflow.models.daam import DAAM

SHAPES = ((256, 24, 1024), (32, 40, 5120))
HEADS = 8
# Untimed calls first: the first-call dispatch, and the allocator: glibc serves blocks of this size (25 MB) with fresh
# mmaps, page-faulted in on every call (measured +12 ms a call here), until a few frees have raised its mmap threshold.
WARMUP = 5


def loop_daam(x: torch.Tensor, mean_offset: torch.Tensor, c: torch.Tensor, heads: int, eps: float = 1e-5):
    """The released classification code: per head, DAAM on its layer block, then concatenate (docs/paper-notes.md#15-heads)."""
    per = x.shape[1] // heads
    outputs = []
    for h in range(heads):
        y = x[:, h * per : (h + 1) * per]
        mean = y.mean(dim=1, keepdim=True)
        var = (y**2).mean(dim=1, keepdim=True) - mean**2
        var = torch.abs(var) + 1e-8
        adjusted_mean = mean + mean_offset[h]
        y_norm = (y - adjusted_mean) / torch.sqrt(var + eps)
        outputs.append(y * torch.exp(-(y_norm**2 / (2 * c[h]))))
    return torch.cat(outputs, dim=1)


def vectorised_daam(x: torch.Tensor, mean_offset: torch.Tensor, c: torch.Tensor, heads: int, eps: float = 1e-5):
    """The same formula on (B, H, N/H, d) at once, for plain autograd and torch.compile."""
    b, n, d = x.shape
    x4 = x.view(b, heads, n // heads, d)
    mean = x4.mean(2, keepdim=True)
    var = ((x4 * x4).mean(2, keepdim=True) - mean * mean).abs() + 1e-8
    z = (x4 - mean - mean_offset.unsqueeze(1)) * torch.rsqrt(var + eps)
    return (x4 * torch.exp(-z * z / (2 * c.unsqueeze(1)))).view(b, n, d)


def copy_bandwidth(repeats: int) -> float:
    """Bytes per second of a large tensor copy (read + write), well beyond the last-level cache."""
    src = torch.ones(64 * 2**20)  # 256 MiB
    dst = torch.empty_like(src)
    best = min(_time(lambda: dst.copy_(src))[0] for _ in range(repeats))
    return 2 * src.numel() * src.element_size() / best


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(step: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Minimum wall and minimum CPU time over ``repeats`` calls after WARMUP untimed ones."""
    for _ in range(WARMUP):
        step()
    runs = [_time(step) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()],
                        help="torch intra-op thread counts, each run in turn")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per variant (minimum is reported)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the vectorised formula")
    parser.add_argument("--variants", nargs="+", help="time only these variants (and loop)")
    args = parser.parse_args()
    if _kernels.unavailable_reason():
        print(f"fast kernel skipped: {_kernels.unavailable_reason()}")
    compiled = torch.compile(vectorised_daam) if args.compile else None
    for threads in args.threads:
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        bandwidth = copy_bandwidth(args.repeats)
        print(f"\ntorch {torch.__version__}, {threads} threads, copy bandwidth {bandwidth / 1e9:.1f} GB/s")
        for shape in SHAPES:
            run_shape(shape, bandwidth, args.repeats, compiled, args.variants)


def run_shape(shape: tuple[int, int, int], bandwidth: float, repeats: int, compiled, only: list[str] | None) -> None:
    """Time every variant on one shape and print its lines."""
    b, n, d = shape
    module = DAAM(n, d, num_heads=HEADS)
    with torch.no_grad():  # away from init so that every term of the gradient is exercised
        module.mean_offset.normal_(0, 0.05)
        module.scaled_variance.normal_(2, 0.05)
    fast = DAAM(n, d, num_heads=HEADS, kernel="fast")
    fast.load_state_dict(module.state_dict())
    delta, xi = module.mean_offset, module.scaled_variance
    x = torch.randn(shape, requires_grad=True)
    grad_out = torch.randn(shape)

    def step(fn):
        def run():
            x.grad = None
            module.zero_grad()
            fast.zero_grad()
            fn().backward(grad_out)

        return run

    variants = {
        "loop": step(lambda: loop_daam(x, delta, xi, HEADS)),
        "autograd": step(lambda: vectorised_daam(x, delta, xi, HEADS)),
        "fused": step(lambda: module(x)),
        "fused-nodx": step(lambda: module(x.detach())),
    }
    if _kernels.unavailable_reason() is None:
        variants.update({"fast": step(lambda: fast(x)), "fast-nodx": step(lambda: fast(x.detach()))})
    if only:
        variants = {name: fn for name, fn in variants.items() if name == "loop" or name in only}
    roofline = 5 * x.numel() * x.element_size() / bandwidth
    times = {name: bench(fn, repeats) for name, fn in variants.items()}
    if compiled is not None:
        first = _time(step(lambda: compiled(x, delta, xi, HEADS)))[0]
        times["compiled"] = bench(step(lambda: compiled(x, delta, xi, HEADS)), repeats)
    print(f"shape {shape}: roofline {roofline * 1e3:.2f} ms (5 x {x.numel() * 4 / 1e6:.1f} MB)")
    for name, (seconds, cpu) in times.items():
        bound = roofline * (4 / 5 if name.endswith("-nodx") else 1)  # no dx to write
        print(
            f"  {name:10s} {seconds * 1e3:8.2f} ms (cpu {cpu * 1e3:8.2f} ms)   "
            f"loop/this {times['loop'][0] / seconds:5.1f}x (cpu {times['loop'][1] / cpu:5.1f}x)   "
            f"roofline/this {100 * bound / seconds:5.1f} %"
        )
    if compiled is not None:
        print(f"  compiled: first call (compile + run) {first:.1f} s")


if __name__ == "__main__":
    main()
