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


def native_bf16(dev: torch.device) -> bool:
    """Whether ``dev`` computes bfloat16 in hardware: a GPU of Ampere or newer, or a CPU with AVX-512 BF16 or AMX
    (oneDNN's bfloat16 matmuls there run ~2.4x float32's; docs/architecture.md#9-timings). Elsewhere bfloat16 is
    emulated, slower than float32."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type == "cpu":
        probes = (getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
        return any(probe() for probe in probes if probe is not None)
    return False


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
