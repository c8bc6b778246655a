"""Where a job computes: the one place that turns ``--device`` (and embed's ``--dtype``) into torch objects."""
from __future__ import annotations

import torch

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA if torch sees a GPU), ``cpu``, ``cuda``, ``cuda:1``, ...; ValueError for a GPU torch does not
    see."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but torch sees no GPU; use --device cpu or auto")
    return dev


def resolve_dtype(dev: torch.device, dtype: str = "auto") -> torch.dtype:
    """The dtype a frozen encoder computes in: ``auto`` is bfloat16 on a GPU (float16 where bfloat16 is unsupported)
    and float32 on a CPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if dev.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
