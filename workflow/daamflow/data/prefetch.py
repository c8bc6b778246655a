"""Batches of the feature store read ahead of the model, in a background thread.

At the paper's scale a store is tens of GB, memory-mapped (docs/architecture.md#2-feature-store), and every epoch of
every head reads all of it. Read in the training thread, a batch's disk time and the model's time add up; here a
thread reads the next ``depth`` batches while the model runs on the current one. numpy's copy out of the memory map
(page faults included) and its float16 -> float32 cast release the GIL, as torch's kernels do, so the two overlap.

The tensors are exactly those a read in the training thread gives (the cast is exact; a batch's rows are read in
ascending order, the more sequential access, and land at their places in the batch), and no random generator is
touched, so training results are bit-identical with or without the thread.
"""
from __future__ import annotations

import queue
import threading
from typing import Sequence

import numpy as np
import torch

# batches read ahead of the model: one to overlap the current step, one more to absorb a slow read
DEPTH = 2
_POLL_S = 0.05  # how often a reader blocked on a full queue looks whether it was stopped


def read_rows(features: np.ndarray, rows: np.ndarray, layers: list[int] | None, pin: bool = False) -> torch.Tensor:
    """float32 ``features[rows]`` (only ``layers`` when given), in the order of ``rows``.

    Rows are copied one by one in ascending row order straight into the float32 tensor (one pass, no float16
    intermediate of the batch). ``pin``: the tensor is allocated in page-locked memory (for an asynchronous copy to
    a GPU).
    """
    rows = np.asarray(rows)
    width = features.shape[1] if layers is None else len(layers)
    out = torch.empty((len(rows), width, features.shape[2]), dtype=torch.float32, pin_memory=pin)
    dst = out.numpy()
    for i in np.argsort(rows, kind="stable"):
        row = features[rows[i]]
        np.copyto(dst[i], row if layers is None else row[layers])
    return out


class _Failed:
    """A reading error, carried through the queue to be raised in the consuming thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch:
    """The float32 tensors of ``batches`` (arrays of rows of ``features``), in order, on ``dev``.

    ``depth`` > 0: a daemon thread reads up to ``depth`` batches ahead; ``depth`` = 0: each batch is read when it is
    taken, in the caller's thread. ``take(rows)`` returns the next batch's tensor and checks that ``rows`` are that
    batch's rows. A reading error is raised by the ``take`` of its batch, in the caller's thread. ``close`` (or
    leaving the ``with`` block) stops the thread and waits for it, also when batches remain untaken.
    """

    def __init__(self, features: np.ndarray, batches: Sequence[np.ndarray], layers: list[int] | None,
                 dev: torch.device, depth: int = DEPTH) -> None:
        if depth < 0:
            raise ValueError(f"Prefetch: depth must be >= 0, got {depth}")
        self.features, self.batches, self.layers, self.dev = features, batches, layers, dev
        self.pin = dev.type == "cuda"
        self.taken, self.error = 0, None
        self.thread: threading.Thread | None = None
        if depth:
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._read_ahead, name="daamflow-prefetch", daemon=True)
            self.thread.start()

    def _read_ahead(self) -> None:
        try:
            for rows in self.batches:
                if not self._put(read_rows(self.features, rows, self.layers, self.pin)):
                    return
        except BaseException as err:  # noqa: BLE001 - any failure is the consumer's to raise
            self._put(_Failed(err))

    def _put(self, item) -> bool:
        """Queue ``item``, waiting for room; False when the reader was stopped meanwhile."""
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def take(self, rows: np.ndarray) -> torch.Tensor:
        if self.error is not None:  # the reader stopped at this batch: every later take fails alike
            raise self.error
        if self.taken >= len(self.batches) or not np.array_equal(rows, self.batches[self.taken]):
            raise RuntimeError(f"Prefetch.take: asked for rows {np.asarray(rows)[:8]}… but the next batch read "
                               f"ahead is batch {self.taken} of {len(self.batches)}; batches must be taken in the "
                               f"order they were given")
        if self.thread is None:
            x = read_rows(self.features, rows, self.layers, self.pin)
        else:
            x = self.queue.get()
            if isinstance(x, _Failed):
                self.error = x.error
                raise self.error
        self.taken += 1
        return x.to(self.dev, non_blocking=self.pin)

    def close(self) -> None:
        if self.thread is not None:
            self.stop.set()
            self.thread.join()

    def __enter__(self) -> "Prefetch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
