"""Batches of the feature store read ahead of the model, in a background thread.

At the paper's scale a store is tens of GB, memory-mapped (docs/architecture.md#2-feature-store), and every epoch of
every head reads all of it. Read in the training thread, a batch's disk time and the model's time add up; here a
thread reads the next ``depth`` batches while the model runs on the current one. torch's gathers out of the memory
map (page faults included) and its float16 -> float32 casts release the GIL, as the model's kernels do, so the two
overlap when a second core is free.

A memory map alone reads a cold row in small synchronous page faults; the reader therefore tells the kernel which
rows the next batch needs (``posix_fadvise(WILLNEED)``: read-ahead in the background) before it copies the current
one. docs/architecture.md#2-feature-store has the measurements.

The tensors are exactly those a read in the training thread gives (the cast is exact) and no random generator is
touched, so training results are bit-identical with or without the thread.
"""
from __future__ import annotations

import os
import queue
import threading
import warnings
from typing import Sequence

import numpy as np
import torch

# batches read ahead of the model: one to overlap the current step, one more to absorb a slow read
DEPTH = 2
# a store whose float32 copy is at most this big is read into memory once per fold instead (``resident``)
RESIDENT_BYTES = 256 * 2**20
# float16 gathered per call before the cast: 1-4 MiB cost the same, a whole batch's stage (13 MB at the paper's
# width) 40% more, one call per row 20x more on small rows (docs/architecture.md#2-feature-store)
STAGE_BYTES = 2 * 2**20
_POLL_S = 0.05  # how often a reader blocked on a full queue looks whether it was stopped


def resident(features: np.ndarray) -> tuple[np.ndarray, int]:
    """The features to train on and how many batches to read ahead: a small store (the demo's hold ~2 MB) as one
    float32 array in memory, read once, with no reader thread (a batch is then a gather of microseconds, less than
    handing it over from a thread costs, and the second core stays with the other job); a large one memory-mapped,
    read ahead by ``DEPTH`` batches. The values are the same either way (float16 -> float32 is exact)."""
    if features.size * 4 <= RESIDENT_BYTES:
        return np.ascontiguousarray(features, dtype=np.float32), 0
    return features, DEPTH


def _holders(t: torch.Tensor) -> int:
    """References to ``t``'s memory (the tensor, its views, autograd's saved inputs)."""
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


class BatchReader:
    """float32 ``features[rows]`` (only ``layers`` when given, in their order), for batches of up to ``batch_rows``
    rows, in ``slots`` reused buffers.

    A batch is gathered by ``torch.index_select`` (whole rows, or (row, layer) pieces with ``layers``) in chunks of
    ``STAGE_BYTES`` into a small float16 stage, each cast into the batch's float32 buffer; a float32 store (``resident``)
    is gathered into the buffer directly. No allocation per batch (a new tensor per batch, allocated in the reading
    thread, page-faulted its memory anew: an epoch with the thread took 4-7x the minor faults of one without), a few
    calls per batch whatever the rows' size, each releasing the GIL. docs/architecture.md#2-feature-store has the
    measurements against the alternatives.

    A buffer is reused only when nothing else holds its memory (``_holders``), so a batch still in use (kept by its
    caller, saved by autograd) is never overwritten: its slot gets a new buffer. With ``pin`` (for an asynchronous
    copy to a GPU) every batch gets a page-locked tensor from torch's pinned-memory cache instead, which reuses a
    block only once its copies are done.
    """

    def __init__(self, features: np.ndarray, layers: list[int] | None, batch_rows: int, slots: int,
                 pin: bool = False) -> None:
        n, n_layers, d = features.shape
        if layers is not None and not all(0 <= k < n_layers for k in layers):
            raise IndexError(f"BatchReader: layers {layers} outside the store's {n_layers} layers")
        with warnings.catch_warnings():  # a read-only memory map: the tensor is only ever read
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            store = torch.from_numpy(np.asarray(features))
        self.rows, self.n_layers = n, n_layers
        self.layers = None if layers is None else torch.tensor(layers, dtype=torch.int64)
        # the units gathered: whole rows, or one layer of one row each
        self.units = store.view(n, n_layers * d) if layers is None else store.view(n * n_layers, d)
        per_batch = batch_rows * (1 if layers is None else len(layers))
        self.chunk = max(1, min(per_batch, STAGE_BYTES // max(1, self.units[0].nbytes)))
        self.stage = None if store.dtype == torch.float32 else \
            torch.empty((self.chunk, self.units.shape[1]), dtype=store.dtype)
        self.shape = (batch_rows, n_layers if layers is None else len(layers), d)
        self.pin = pin
        self.slots: list[tuple[torch.Tensor, int] | None] = [None] * slots
        self.next = 0

    def _buffer(self, n: int) -> torch.Tensor:
        if self.pin:
            return torch.empty((n, *self.shape[1:]), dtype=torch.float32, pin_memory=True)
        k, self.next = self.next, (self.next + 1) % len(self.slots)
        slot = self.slots[k]
        if slot is None or _holders(slot[0]) > slot[1]:
            buffer = torch.empty(self.shape, dtype=torch.float32)
            slot = self.slots[k] = (buffer, _holders(buffer))
        return slot[0][:n]

    def read(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        out = self._buffer(len(rows))
        index = torch.from_numpy(rows)
        if self.layers is not None:
            index = (index[:, None] * self.n_layers + self.layers).reshape(-1)
        units = out.view(len(index), -1)
        try:
            for start in range(0, len(index), self.chunk):  # (Tensor.split costs 4x these slices)
                part, into = index[start:start + self.chunk], units[start:start + self.chunk]
                if self.stage is None:
                    torch.index_select(self.units, 0, part, out=into)
                else:
                    into.copy_(torch.index_select(self.units, 0, part, out=self.stage[:len(part)]))
        except IndexError as err:  # torch names no index: name the rows
            bad = rows[(rows < 0) | (rows >= self.rows)]
            raise IndexError(f"rows {bad[:8].tolist()} are outside the feature store's {self.rows} rows") from err
        return out


class _ReadAhead:
    """Asks the kernel to start reading rows of a memory-mapped store file (``posix_fadvise(WILLNEED)``), so the
    copy that follows finds them in the page cache or in flight. A no-op for an in-memory array or on systems without
    ``posix_fadvise``."""

    def __init__(self, features: np.ndarray, layers: list[int] | None) -> None:
        self.fd = None
        if isinstance(features, np.memmap) and features.filename and features.flags.c_contiguous \
                and hasattr(os, "posix_fadvise"):
            self.fd = os.open(features.filename, os.O_RDONLY)
            self.offset, self.row = features.offset, features[0].nbytes
            # whole rows, or the spans of the layers read (each layer's d values are contiguous)
            span = self.row // features.shape[1]
            self.spans = [(0, self.row)] if layers is None else [(k * span, span) for k in layers]

    def rows(self, rows: np.ndarray) -> None:
        if self.fd is None:
            return
        for r in np.sort(rows):
            for start, length in self.spans:
                os.posix_fadvise(self.fd, self.offset + int(r) * self.row + start, length, os.POSIX_FADV_WILLNEED)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Failed:
    """A reading error, carried through the queue to be raised in the consuming thread."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Prefetch:
    """The float32 tensors of ``batches`` (arrays of rows of ``features``), in order, on ``dev``.

    ``depth`` > 0: a daemon thread reads up to ``depth`` batches ahead; ``depth`` = 0: each batch is read when it is
    taken, in the caller's thread. ``take(rows)`` returns the next batch's tensor and checks that ``rows`` are that
    batch's rows. A reading error is raised by the ``take`` of its batch, in the caller's thread. ``close`` (or
    leaving the ``with`` block) stops the thread and waits for it, also when batches remain untaken. On the CPU a
    batch's tensor is a ``BatchReader`` buffer: it holds its values as long as anything holds it.
    """

    def __init__(self, features: np.ndarray, batches: Sequence[np.ndarray], layers: list[int] | None,
                 dev: torch.device, depth: int = DEPTH) -> None:
        if depth < 0:
            raise ValueError(f"Prefetch: depth must be >= 0, got {depth}")
        self.features, self.batches, self.layers, self.dev = features, batches, layers, dev
        self.pin = dev.type == "cuda"
        # buffers in use: up to ``depth`` queued, one being read, the batch taken last and the one before it (still
        # held by the caller while it takes the next)
        self.reader = BatchReader(features, layers, max(map(len, batches), default=0), depth + 3, self.pin)
        self.taken, self.error = 0, None
        self.thread: threading.Thread | None = None
        if depth:
            self.queue: queue.Queue = queue.Queue(maxsize=depth)
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self._read_ahead, name="daamflow-prefetch", daemon=True)
            self.thread.start()

    def _read_ahead(self) -> None:
        advice = None
        try:
            advice = _ReadAhead(self.features, self.layers)
            for k, rows in enumerate(self.batches):
                if k == 0:
                    advice.rows(rows)
                if k + 1 < len(self.batches):  # the disk reads batch k + 1 while batch k is copied
                    advice.rows(self.batches[k + 1])
                if not self._put(self.reader.read(rows)):
                    return
        except BaseException as err:  # any failure, raised again by the consumer's take
            self._put(_Failed(err))
        finally:
            if advice is not None:
                advice.close()

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
            x = self.reader.read(rows)
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
