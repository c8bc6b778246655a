"""The DAAM CPU kernel (``csrc/daam_cpu.cpp``): built once per machine with the system C++ compiler, called via ctypes.

``DAAM(kernel="fast")`` uses it (docs/architecture.md, models). The library has a plain C ABI, so it needs neither
torch's headers nor pybind11: one ``c++`` call of about two seconds, instead of the ~minute a torch extension takes
to compile. It is cached under ``$DAAMFLOW_KERNEL_CACHE`` (default ``~/.cache/daamflow/kernels``), keyed by the
source, the compiler, its flags and this CPU's feature flags (``-march=native``: a cache shared by cluster nodes with
different CPUs gets one build per CPU type, never a binary with instructions the node lacks). Concurrent jobs may both
build; the rename is atomic, so each loads a complete file. ``scripts/setup.sh`` builds it ahead of time.

Where no compiler works, :func:`load` returns None and :func:`unavailable_reason` says why; DAAM then runs the eager
path (with one warning).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().parent / "csrc" / "daam_cpu.cpp"
# -fno-math-errno: lets sqrt vectorise
FLAGS = ("-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fPIC", "-shared")
DTYPES = (torch.float32, torch.float64)
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_failure: list[str] = []  # why the last load() failed (one entry)


def cache_dir() -> Path:
    if os.environ.get("DAAMFLOW_KERNEL_CACHE"):
        return Path(os.environ["DAAMFLOW_KERNEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "daamflow" / "kernels"


def compiler() -> str | None:
    """``$CXX``, else ``c++``/``g++``/``clang++`` on PATH."""
    names = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    return next((path for name in names if (path := shutil.which(name))), None)


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def library_path(cxx: str) -> Path:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(
        b"\0".join(s.encode() for s in (SOURCE.read_text(), cxx, version, " ".join(FLAGS), _cpu_flags()))
    ).hexdigest()[:16]
    return cache_dir() / f"daam_cpu-{key}.so"


def build() -> Path:
    """The compiled library's path, compiling it first if it is not cached. Raises RuntimeError naming the cause."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX or install g++)")
    target = library_path(cxx)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([cxx, *FLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=600)
        if proc.returncode:
            raise RuntimeError(f"{cxx} failed on {SOURCE} (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


@functools.cache
def load() -> ctypes.CDLL | None:
    """The loaded library, or None (see :func:`unavailable_reason`). Built on first use, once per process."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        _failure[:] = [str(err)]
        return None
    i64, f64, i32, ptr = ctypes.c_int64, ctypes.c_double, ctypes.c_int, ctypes.c_void_p
    for suffix in _SUFFIX.values():
        getattr(lib, f"daam_forward_{suffix}").argtypes = [ptr] * 5 + [i64] * 4 + [f64, i32, i32]
        getattr(lib, f"daam_backward_{suffix}").argtypes = [ptr] * 7 + [i64] * 4 + [f64, i32, i32]
    return lib


def unavailable_reason() -> str | None:
    return None if load() is not None else _failure[0]


def supports(x: torch.Tensor) -> bool:
    """Whether the kernel can take ``x``: a CPU tensor of float32/float64, and the library builds here."""
    return x.device.type == "cpu" and x.dtype in DTYPES and load() is not None


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def forward(x4, delta, xi, eps: float, squared: bool, with_gate: bool):
    """y (and the gate G when ``with_gate``, else None) for x4 (B, H, n, d), delta and xi (H, d); all one dtype."""
    lib = load()
    x4, delta, xi = x4.contiguous(), delta.contiguous(), xi.contiguous()
    y = torch.empty_like(x4)
    gate = torch.empty_like(x4) if with_gate else None
    getattr(lib, f"daam_forward_{_SUFFIX[x4.dtype]}")(
        _ptr(x4), _ptr(delta), _ptr(xi), _ptr(y), _ptr(gate), *x4.shape, eps, int(squared), torch.get_num_threads()
    )
    return y, gate


def backward(x4, gy, delta, xi, eps: float, squared: bool, with_dx: bool):
    """(dx or None, g_delta, g_xi) of the loss whose gradient on y is ``gy``; g_delta and g_xi summed over the batch."""
    lib = load()
    x4, gy, delta, xi = x4.contiguous(), gy.contiguous(), delta.contiguous(), xi.contiguous()
    gx = torch.empty_like(x4) if with_dx else None
    g_delta, g_xi = torch.empty_like(delta), torch.empty_like(xi)
    getattr(lib, f"daam_backward_{_SUFFIX[x4.dtype]}")(
        _ptr(x4), _ptr(gy), _ptr(delta), _ptr(xi), _ptr(gx), _ptr(g_delta), _ptr(g_xi), *x4.shape, eps, int(squared),
        torch.get_num_threads(),
    )
    return gx, g_delta, g_xi
