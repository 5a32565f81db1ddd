"""The native training step and evaluation: ``coupling_step.c`` (and ``rq_spline.c``, the fused
spline of :mod:`flowsweep.native.spline`) compiled on first use into one library, called through ctypes.

One call runs the forward and backward pass of K coupling flows on a minibatch, each
model's samples in blocks of :func:`lanes` (one vector register per feature: 16 where
the compiler targets AVX-512, else 8) with every intermediate kept in cache; see the C
file for the shapes. :func:`native_log_prob` runs the same forward pass alone, for every
row of a split: the evaluation. Both compute the model of
:class:`flowsweep.model.CouplingFlows` for the variants :func:`covers` accepts, with the
parameter offsets of the spec's :class:`~flowsweep.model.ParamLayout`; the reference
model, differentiated by autograd, is what the tests hold it to and the fallback where
no C compiler is found or a variant is not covered.

The shared library is built with the system's C compiler (``$CC``, else ``cc``) into
``native/`` of the cache (``$FLOWSWEEP_CACHE_DIR``, else the OS cache), named by a hash of the sources
and ``vector_math.h``, the flags, the compiler and the CPU, so a changed file or another machine builds anew.
Building takes about a second; parallel processes each write a private file and rename
it into place.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from flowsweep.model.spec import ModelSpec

__all__ = ["NativeStep", "native_log_prob", "native_available", "load_library", "lanes", "NativeBuildError", "covers"]

_HERE = Path(__file__).parent
#: Compiled together into one library; the header is part of the build's key.
_SOURCES = [_HERE / "coupling_step.c", _HERE / "rq_spline.c"]
_HEADERS = [_HERE / "vector_math.h"]
_FLAGS = ["-O3", "-funroll-loops", "-march=native", "-fPIC", "-shared", "-fno-math-errno", "-std=gnu11"]


class NativeBuildError(RuntimeError):
    """The C kernel could not be compiled or loaded."""


def _cache_dir() -> Path:
    from flowsweep.data.sources import cache_dir  # the downloads' cache root

    return cache_dir() / "native"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def _compiler() -> Optional[str]:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


@lru_cache(maxsize=1)
def load_library() -> ctypes.CDLL:
    """Build (once per source, compiler and CPU) and load the kernel; raises :class:`NativeBuildError`."""
    compiler = _compiler()
    if compiler is None:
        raise NativeBuildError("no C compiler found (set $CC)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    texts = [path.read_text() for path in _SOURCES + _HEADERS]
    key = hashlib.sha256("\0".join([*texts, *_FLAGS, version, _cpu_signature(), platform.machine()])
                         .encode()).hexdigest()[:16]
    target = _cache_dir() / f"flowsweep-native-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        built = subprocess.run([compiler, *_FLAGS, "-o", partial, *map(str, _SOURCES)], capture_output=True, text=True)
        if built.returncode != 0:
            os.unlink(partial)
            raise NativeBuildError(f"{compiler} failed on {', '.join(map(str, _SOURCES))}:\n{built.stderr.strip()}")
        os.replace(partial, target)  # atomic: a parallel build of the same key writes the same bytes
    try:
        library = ctypes.CDLL(str(target))
    except OSError as error:
        raise NativeBuildError(f"cannot load {target}: {error}") from None
    library.coupling_step.restype = ctypes.c_int
    library.coupling_step.argtypes = [ctypes.c_int] * 12 + [ctypes.c_void_p] * 6
    library.coupling_logp.restype = ctypes.c_int
    library.coupling_logp.argtypes = [ctypes.c_int] * 12 + [ctypes.c_void_p] * 4
    library.coupling_lanes.restype = ctypes.c_int
    library.coupling_lanes.argtypes = []
    library.rq_spline_max_bins.restype = ctypes.c_int
    library.rq_spline_max_bins.argtypes = []
    for name, buffers in (("rq_spline_forward", 4), ("rq_spline_backward", 6)):
        function = getattr(library, name)
        function.restype = ctypes.c_int
        function.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p] + [ctypes.c_void_p] * buffers
    return library


def lanes() -> int:
    """Floats per vector in the kernel built here (16 with AVX-512, else 8), decided at build time."""
    return int(load_library().coupling_lanes())


@lru_cache(maxsize=1)
def native_available() -> bool:
    """Whether the kernel builds here; warns once with the reason when it does not."""
    try:
        load_library()
    except NativeBuildError as error:
        warnings.warn(f"flowsweep: native training step unavailable, using the PyTorch kernel ({error})",
                      RuntimeWarning, stacklevel=2)
        return False
    return True


@lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="flowsweep-native")


def _shape(spec: ModelSpec) -> list[int]:
    """The kernel's dimension arguments for ``spec``: d, m, L, P, the four block offsets, linear."""
    layout = spec.layout()
    return [spec.d, spec.m, spec.depth, layout.numel, *(layout.offset(b) for b in ("scale", "shift", "weight", "bias")),
            int(spec.constant == "linear")]


def _split(k: int, threads: int) -> list[tuple[int, int]]:
    """Model ranges ``[a, b)`` of ``k`` models for ``threads`` threads."""
    share = -(-k // max(1, threads))
    return [(a, min(k, a + share)) for a in range(0, k, share)]


def _in_threads(run, ranges: list[tuple[int, int]]) -> None:
    """``run(range)`` for every range, the first in this thread (one hand-over to a worker per
    call, not two), the others in the pool; raises :class:`MemoryError` where one ran out."""
    others = [_pool(len(ranges) - 1).submit(run, r) for r in ranges[1:]] if len(ranges) > 1 else []
    codes = [run(ranges[0])] + [future.result() for future in others]
    if any(codes):
        raise MemoryError("native kernel: out of memory")


def native_log_prob(spec: ModelSpec, data: Tensor, theta: Tensor, perm: Tensor, threads: int = 1) -> Tensor:
    """Log-density (nats, model space) of every row of ``data`` ``[n, d]`` float32 under each of
    the models ``theta`` ``[K, P]`` float32 with permutations ``perm`` ``[K, L, d]`` int64:
    ``[K, n]`` float32. Forward only, no graph; :func:`covers` must accept ``spec``. A row's
    value does not depend on the other rows, on K or on ``threads``."""
    if not covers(spec):
        raise ValueError(f"the native kernel does not cover {spec}")
    library = load_library()
    data, theta, perm = data.contiguous(), theta.detach().contiguous(), perm.contiguous()
    k, n = theta.shape[0], data.shape[0]
    logp = torch.empty(k, n, dtype=torch.float32)
    if k == 0 or n == 0:
        return logp
    shape = _shape(spec)
    pointers = [t.data_ptr() for t in (data, theta, perm, logp)]
    _in_threads(lambda bounds: library.coupling_logp(*bounds, n, *shape, *pointers), _split(k, threads))
    return logp


def covers(spec: ModelSpec) -> bool:
    """Whether the kernel computes ``spec``'s model: the paper's layer (the constant transform,
    then the affine coupling with the tanh conditioner), data to latent, either constant transform."""
    return (spec.order == "constant_first" and spec.direction == "normalizing" and spec.conditioner == "tanh"
            and spec.coupling == "affine")


class NativeStep:
    """The native step for one flow's spec and model count, with its output buffers made once.

    Arguments:
        spec: The models' spec (:func:`covers` must accept it).
        k: The number of models.
        threads: Model ranges run in this many threads (ctypes releases the GIL); the
            numbers do not depend on it.
    """

    def __init__(self, spec: ModelSpec, k: int, threads: int = 1):
        if not covers(spec):
            raise ValueError(f"the native kernel does not cover {spec}")
        self.library = load_library()
        self.spec, self.k, self.threads = spec, k, threads
        self.shape = _shape(spec)
        self.nll = torch.empty(k, dtype=torch.float32)
        self.grad = torch.empty(k, spec.layout().numel, dtype=torch.float32)
        self.ranges = _split(k, threads)

    def __call__(self, data: Tensor, rows: Tensor, theta: Tensor, perm: Tensor) -> tuple[Tensor, Tensor]:
        """Model ``k``'s minibatch is ``data[rows[k]]``: ``data`` ``[n, d]`` and ``theta`` ``[K, P]``
        float32, ``rows`` ``[K, N]`` and ``perm`` ``[K, L, d]`` int64 (rows must be valid: they
        are not checked). Returns ``(nll [K], grad [K, P])``, this object's buffers, overwritten
        by the next call."""
        data, rows = data.contiguous(), rows.contiguous()
        theta, perm = theta.detach().contiguous(), perm.contiguous()
        n = rows.shape[1]
        pointers = [t.data_ptr() for t in (data, rows, theta, perm, self.nll, self.grad)]

        def run(bounds: tuple[int, int]) -> int:
            return self.library.coupling_step(*bounds, n, *self.shape, *pointers)

        _in_threads(run, self.ranges)
        return self.nll, self.grad
