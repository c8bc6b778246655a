"""Does head training overlap reading the feature store with computing? Figures per head on a synthetic store.

The store has the paper's largest shape (AG News x Llama-2-13B: 40 layers x 5,120, float16) with fewer rows, random
values, memory-mapped as the trainer reads it. Per head, on the same batches of one epoch (fit's shuffled order):

  (a) read    the batches through the trainer's reader (data/prefetch.py) in its thread, no model: cold (the file
              dropped from the page cache with posix_fadvise(DONTNEED), no root needed) and warm (cached), each
              through a new memory map, as (c) reads
  (b) compute the training steps (forward, loss, backward, AdamW) and the selection pass on batches already in
              memory as float32 tensors, no reading
  (c) epoch   run/fit.fit, one epoch, through HeadLearner (the trainer's code path: selection pass and checkpoint
              included), cold cache, reading ahead (prefetch on) and in the training thread (prefetch off)

and the ratio c / max(a cold, b): 1.0 is perfect overlap. (a) and (b) split (c)'s work between its two threads: (a)
is all the reading thread does (kernel hints, the new map's page faults, the float16 -> float32 cast), so (b) starts
from float32 tensors; what (c) does besides is fit's bookkeeping (labels, loss.item, the checkpoint), which "c off"
against a + b shows. Wall and process CPU seconds are printed: on a shared machine the wall times depend on the other
jobs, and "cores used" (CPU / wall of c) says how much of the machine the epoch got; c near max(a, b) needs a second
core free for the reading thread. Prefetch on and off must end with identical weights (checked).

The 512-channel conv heads (daam_v1, gqdaam) cost ~11 GFLOP per sample per step at d = 5,120: on a CPU they run on a
subset of the epoch's batches (--batches-subset; the same batches for a, b and c). Example (3.3 GB store in /tmp):

    python benchmarks/bench_prefetch.py --rows 8000 --store /tmp/daamflow-bench/features.npy
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from daamflow.data.folds import Split
from daamflow.data.prefetch import DEPTH, BatchReader, Prefetch
from daamflow.models import heads
from daamflow.run.fit import fit
from daamflow.run.metrics import loss_of
from daamflow.run.train import HeadLearner

LAYERS, WIDTH, CLASSES = 40, 5120, 4  # AG News (4 classes) x Llama-2-13B (40 blocks, d = 5,120)
CPU = torch.device("cpu")


def build_store(path: Path, rows: int) -> None:
    """Random float16 (rows, 40, 5120), written in chunks to ``path`` (reused when it has that shape)."""
    if path.exists():
        found = np.load(path, mmap_mode="r")
        if found.shape == (rows, LAYERS, WIDTH) and found.dtype == np.float16:
            return
        raise SystemExit(f"{path} holds {found.dtype} {found.shape}, not float16 ({rows}, {LAYERS}, {WIDTH}): "
                         f"remove it or give another --store")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(rows, LAYERS, WIDTH))
    rng = np.random.default_rng(0)
    for start in range(0, rows, 100):
        out[start:start + 100] = rng.standard_normal((min(100, rows - start), LAYERS, WIDTH), dtype=np.float32)
    out.flush()
    del out
    os.replace(partial, path)


def dropped(path: Path) -> np.ndarray:
    """The store memory-mapped afresh after dropping its pages from the page cache. Pages mapped by a live map stay
    cached, so every earlier map must be gone (the callers delete theirs)."""
    gc.collect()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return np.load(path, mmap_mode="r")


def settings(method: str, batch_size: int, conv_channels: int) -> dict:
    return {
        "dataset": "bench", "encoder": "synthetic", "method": method, "protocol": "clean", "seed": 0,
        "hyper": {"epochs": 1, "batch_size": batch_size, "lr": 5e-5, "weight_decay": 0.01, "loss": "cross_entropy",
                  "scheduler_factor": 0.1, "scheduler_patience": 2, "grad_clip": None, "amp": "auto"},
        "model_options": {"conv_channels": conv_channels},
    }


def build(cfg: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    return heads.build_model(cfg["method"], LAYERS, WIDTH, CLASSES, **cfg["model_options"])


class Recording(HeadLearner):
    """HeadLearner that keeps the batches fit asked for (to check they are the ones timed in (a) and (b))."""

    def batches(self, order, batch_size, seed):
        self.asked = super().batches(order, batch_size, seed)
        return self.asked


def clock(fn, *args) -> tuple[float, float, object]:
    """Wall and process CPU seconds of ``fn(*args)``, and its value."""
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, value


def epoch(path: Path, cfg: dict, split: Split, labels: np.ndarray, prefetch: int) -> tuple[float, float, list, dict]:
    """(c): one epoch of fit from a cold cache; wall and CPU seconds, fit's training batches and the final weights."""
    model = build(cfg)
    features = dropped(path)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg["hyper"]["lr"], weight_decay=cfg["hyper"]["weight_decay"])
    with tempfile.TemporaryDirectory() as out, \
            Recording(model, features, None, cfg["hyper"]["batch_size"], CPU, prefetch=prefetch) as learner:
        wall, cpu, _ = clock(lambda: fit(learner, optimiser, split, labels, cfg, Path(out), CPU, inputs={},
                                         progress=False))
    asked = learner.asked
    del features, learner
    return wall, cpu, asked, {k: v.clone() for k, v in model.state_dict().items()}


def read_all(features: np.ndarray, batches: list[np.ndarray]) -> None:
    """(a): the batches through the trainer's reader, nothing done with them."""
    with Prefetch(features, batches, None, CPU) as stream:
        for rows in batches:
            stream.take(rows)


def compute(cfg: dict, features: np.ndarray, train: list[np.ndarray], select: list[np.ndarray],
            labels: np.ndarray, pool: int) -> tuple[float, float]:
    """(b): fit's steps on in-memory float32 batches; batch k is pool[k % pool] (same shape, same cost), so the
    memory held stays ``pool`` batches whatever the epoch's size. Wall and CPU seconds."""
    model, hp = build(cfg), cfg["hyper"]
    optimiser = torch.optim.AdamW(model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
    memory, reader = {}, BatchReader(features, None, max(map(len, train + select)), 1)
    for k, rows in enumerate(train + select):
        key = (k % pool, len(rows))
        if key not in memory:
            memory[key] = reader.read(rows).clone()

    def steps() -> None:
        model.train()
        for k, rows in enumerate(train):
            loss = loss_of(model(memory[(k % pool, len(rows))]), torch.from_numpy(labels[rows]), hp)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
        model.eval()
        with torch.no_grad():
            for k, rows in enumerate(select, start=len(train)):
                model(memory[(k % pool, len(rows))]).argmax(dim=1)

    wall, cpu, _ = clock(steps)
    return wall, cpu


def bench_head(args, method: str) -> dict:
    """Every figure of one head, each the median over ``args.repeats`` (the measurements take turns at going
    first)."""
    cfg = settings(method, args.batch_size, args.conv_channels)
    rng = np.random.default_rng(1)
    labels = rng.integers(0, CLASSES, size=args.rows)
    rows = rng.permutation(args.rows)
    n_select = args.batch_size  # one selection batch: fit scores it after the epoch, as it scores the dev part
    n_train = args.rows - n_select
    if method in args.subset_heads:
        n_train = min(n_train, args.batches_subset * args.batch_size)
    split = Split("bench", 0, np.sort(rows[:n_train]), np.sort(rows[-n_select:]), rows[:0], "benchmark")
    seed = split.seed * 100_003 + 1  # fit's first epoch (run/fit.py); checked against fit's own batches below
    order = split.train[torch.randperm(len(split.train), generator=torch.Generator().manual_seed(seed)).numpy()]
    batches = [order[s:s + args.batch_size] for s in range(0, len(order), args.batch_size)]
    select = [split.select[s:s + args.batch_size] for s in range(0, n_select, args.batch_size)]

    times: dict[str, list[float]] = {}
    weights = {}

    def record(name: str, wall: float, cpu: float) -> None:
        times.setdefault(f"{name}_s", []).append(wall)
        times.setdefault(f"{name}_cpu_s", []).append(cpu)

    def read() -> None:
        # (a) cold, then warm, each through a new map as (c) reads (a map's pages fault in once per map: a warm read
        # through the cold read's map would skip that); then (b) on the batches the warm read left in the page cache
        record("a_cold", *clock(read_all, dropped(args.store), batches + select)[:2])
        features = np.load(args.store, mmap_mode="r")
        record("a_warm", *clock(read_all, features, batches + select)[:2])
        record("b", *compute(cfg, features, batches, select, labels, args.pool))

    def run(prefetch: int) -> None:
        mode = "on" if prefetch else "off"
        wall, cpu, asked, weights[mode] = epoch(args.store, cfg, split, labels, prefetch)
        record(f"c_{mode}", wall, cpu)
        if len(batches) != len(asked) or not all(np.array_equal(a, b) for a, b in zip(batches, asked)):
            raise SystemExit("bench_prefetch: the batches timed in (a) and (b) are not those fit read in (c); "
                             "fit's epoch order changed (run/fit.py): update the order here")

    # the three cold reads take turns at going first: the first read of the file after a while is the slowest (a
    # virtual disk's host cache keeps what was read recently, whatever the guest's page cache holds)
    steps = [read, lambda: run(DEPTH), lambda: run(0)]
    for repeat in range(args.repeats):
        for step in steps[repeat % 3:] + steps[:repeat % 3]:
            step()
    t = {k: float(np.median(v)) for k, v in times.items()}
    n = n_train + n_select
    bound = max(t["a_cold_s"], t["b_s"])
    return {"head": method, "rows": n, "batches": len(batches) + len(select), **t,
            "c_on/max(a_cold,b)": t["c_on_s"] / bound, "c_off/max(a_cold,b)": t["c_off_s"] / bound,
            "rows/s a_cold": n / t["a_cold_s"], "rows/s b": n / t["b_s"], "rows/s c_on": n / t["c_on_s"],
            "rows/s c_off": n / t["c_off_s"], "cores used c_on": t["c_on_cpu_s"] / t["c_on_s"],
            "on==off": all(torch.equal(weights["on"][k], weights["off"][k]) for k in weights["on"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8000, help="rows of the synthetic store (8,000 = 3.3 GB)")
    parser.add_argument("--store", type=Path, default=Path("/tmp/daamflow-bench/features.npy"),
                        help="the store's .npy file: built if absent, reused if it has --rows rows")
    parser.add_argument("--heads", nargs="+", default=["linear", "daam_v1", "gqdaam"], choices=heads.METHODS,
                        metavar="HEAD", help="heads to time (models/heads.py names; default linear daam_v1 gqdaam)")
    parser.add_argument("--subset-heads", nargs="*", default=["daam_v1", "gqdaam"],
                        help="heads timed on --batches-subset batches of the epoch (compute-bound on a CPU)")
    parser.add_argument("--batches-subset", type=int, default=4, help="training batches of the subset heads")
    parser.add_argument("--batch-size", type=int, default=32, help="the text modality's batch size (config.py)")
    parser.add_argument("--conv-channels", type=int, default=512, help="the paper's conv decoder width")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a fold job's default is 1)")
    parser.add_argument("--pool", type=int, default=16, help="(b): distinct in-memory batches, reused cyclically")
    parser.add_argument("--repeats", type=int, default=1, help="measure everything this often; medians are printed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    build_store(args.store, args.rows)
    size = args.store.stat().st_size
    print(f"store {args.store}: {args.rows} x {LAYERS} x {WIDTH} float16, {size / 1e9:.2f} GB "
          f"(ready in {time.perf_counter() - t:.0f} s); torch threads {args.threads}, batch {args.batch_size}, "
          f"conv channels {args.conv_channels}, prefetch depth {DEPTH}", flush=True)
    # warm-up, untimed: torch's and the trainer's first calls (thread pools, allocator) would count in the first (c)
    warm_up = Split("warm-up", 0, np.arange(args.batch_size), np.arange(args.batch_size, 2 * args.batch_size),
                    np.arange(0), "warm-up")
    for prefetch in (DEPTH, 0):
        epoch(args.store, settings("linear", args.batch_size, args.conv_channels), warm_up,
              np.zeros(args.rows, dtype=np.int64), prefetch)
    results = []
    for method in args.heads:
        r = bench_head(args, method)
        results.append(r)
        print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()), flush=True)
    slow = [r["head"] for r in results if r["a_cold_s"] < 1.2 * r["a_warm_s"]]
    if slow:
        print(f"warning: the cold read was not clearly slower than the warm one for {slow}: the page cache may not "
              f"have been dropped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
