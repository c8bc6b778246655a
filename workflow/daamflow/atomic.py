"""Atomic file outputs: write beside the target, then rename, so a reader never sees half a file."""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pandas as pd


def atomic_write(path: Path | str, writer: Callable[[Path], Any]) -> None:
    """Call ``writer(tmp)`` on a temp path in the same folder, then rename it to ``path``.

    A full disk (ENOSPC, EDQUOT) becomes an OSError that names ``path`` and the space left, not the temp file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        free = shutil.disk_usage(path.parent).free
        raise OSError(err.errno, f"no space left on device: {path} ({free / 2**20:.1f} MiB free in {path.parent}; "
                                 f"free some space and rerun: finished outputs are kept)") from err
    finally:
        tmp.unlink(missing_ok=True)


def save_torch(path: Path | str, obj: Any) -> None:
    """``torch.save`` atomically, through a Python file object: a failed write then raises the OSError with its
    errno (torch writing to a path reports a full disk only as "unexpected pos … iostream error")."""
    import torch  # here: the stages that never save tensors do not import torch

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            try:
                torch.save(obj, fh)
            except RuntimeError as err:
                # torch's zip writer, finishing the file after a failed write, raises its own error over that OSError
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise

    atomic_write(path, write)


def save_npy(path: Path | str, array: Any) -> None:
    """``np.save`` atomically, through a file object (given a bare temp path, np.save would append ".npy")."""
    import numpy as np

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.save(fh, array)

    atomic_write(path, write)


def write_json(path: Path | str, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))


def write_csv(path: Path | str, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda p: frame.to_csv(p, index=False))


def write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))
