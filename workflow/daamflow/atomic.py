"""Atomic file outputs: write beside the target, then rename, so a reader never sees half a file."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import pandas as pd


def atomic_write(path: Path | str, writer: Callable[[Path], Any]) -> None:
    """Call ``writer(tmp)`` on a temp path in the same folder, then rename it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: Path | str, data: Any) -> None:
    atomic_write(path, lambda p: p.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n"))


def write_csv(path: Path | str, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda p: frame.to_csv(p, index=False))


def write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))
