"""How close the native kernel comes to the machine: its achieved GFLOP/s against a GEMM's.

The count is the kernel's multiply-adds (two flops each) per model-step, the linear
algebra only: per sample and layer the constant transform (``d``), the conditioner
(``2(d-m) m``), the coupling (``d-m``), and in the backward pass the conditioner's input
and weight gradients (``2 · 2(d-m) m``) and the constant transform's gradients (``2d``);
exp and tanh are not counted. The peak is ``torch.matmul`` of two 2048 × 2048 float32
matrices at the thread count the kernel ran with, measured in the same run.
"""

from __future__ import annotations

import time

import torch

from flowsweep.model import ModelSpec

__all__ = ["model_step_flops", "gemm_peak_gflops"]


def model_step_flops(spec: ModelSpec, batch: int) -> float:
    """Flops of one model-step of the affine coupling layer on ``batch`` samples (see the module)."""
    dm, m, d = spec.d - spec.m, spec.m, spec.d
    per_sample_layer = d + 2 * dm * m + dm + 2 * (2 * dm * m) + 2 * d
    return 2.0 * batch * spec.depth * per_sample_layer


def gemm_peak_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` GFLOP/s of ``torch.matmul`` on ``size`` × ``size`` float32 matrices."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
        torch.matmul(a, b)  # warm up: thread pool, allocations
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * size**3 / best / 1e9
