"""Builds valid results documents from synthetic rows, through the same assembly code the bench uses."""

from __future__ import annotations

from typing import Any

import numpy as np

from dit_repro.bench.hardware import cpu_key, gpu_key
from dit_repro.bench.matrices import Matrix, MatrixRow, RowRatio
from dit_repro.bench.results import device_block, results_document
from dit_repro.bench.runner import RowJob
from dit_repro.bench.schema import validate_results

GPU_NAME = "NVIDIA H100 80GB HBM3"


def hardware_key(device_type: str) -> dict[str, Any]:
    """A fixed hardware key: a 2-core AVX-512 test CPU, or one H100 80GB under CUDA 12.8 and torch 2.14."""
    if device_type == "cuda":
        return gpu_key(GPU_NAME, 1, 80 * 2**30, "12.8", "2.14.1")
    return cpu_key(cpuinfo="model name\t: Test CPU\nflags\t\t: fpu avx2 avx512f\n", cores=2, machine="x86_64")


def noisy_times(median_s: float, n: int, rng: np.random.Generator, spread: float = 0.02) -> list[float]:
    """Step times around ``median_s`` with log-normal noise of relative size ``spread``."""
    return list(median_s * np.exp(rng.normal(0.0, spread, n)))


def make_job(name: str, *, times: list[float] | None, device_type: str, status: str = "ok",
             saved_bytes: int | None = 1000, gmacs: float | None = 1.5, allocated: list[int] | None = None,
             error: str | None = None) -> RowJob:
    """A finished RowJob as the runner would leave it."""
    job = RowJob(name, {"checkpointing": "none"}, {"kind": "test"})
    job.status = status
    job.info = {"switches": {"checkpointing": "none"}, "config": None, "attention": {"backend": "math"},
                "forward_gmacs_per_image": gmacs, "train_flops_per_image": None if gmacs is None else 6e9 * gmacs,
                "images_per_step": 8, "clock": "cuda-events" if device_type == "cuda" else "perf_counter"}
    if error is not None:
        job.error = {"type": "RuntimeError", "message": error, "traceback": None, "stderr_tail": None, "phase": "time"}
    if status == "ok":
        job.times = list(times or [])
        # On a CPU the worker also records CPU time per step; here it equals the wall time.
        job.cpu_times = None if device_type == "cuda" else list(job.times)
        job.warmup = {"steps": 10, "steady": True, "step_times_s": list(job.times[:10]),
                      "cpu_times_s": None if device_type == "cuda" else list(job.times[:10])}
        job.saved_activations = None if saved_bytes is None else {
            "bytes": saved_bytes, "storages": 3, "tensors": 5, "method": "test"}
        if device_type == "cuda":
            steps = allocated or [2**30] * len(job.times)
            job.memory = {"kind": "cuda", "max_allocated_bytes": max(steps), "max_reserved_bytes": max(steps) * 2,
                          "per_step_max_allocated_bytes": steps, "per_step_max_reserved_bytes": [s * 2 for s in steps],
                          "num_alloc_retries": 0, "num_ooms": 0}
        else:
            job.memory = {"kind": "cpu", "peak_rss_bytes": 2**30, "peak_rss_method": "test"}
    return job


def make_results(jobs: list[RowJob], device_type: str = "cpu", ratios: tuple[RowRatio, ...] = (),
                 matrix_name: str = "table4") -> dict[str, Any]:
    """A validated results document holding ``jobs``."""
    matrix = Matrix(matrix_name, tuple(MatrixRow(job.name, {"checkpointing": "none"}) for job in jobs), ratios)
    scale = {"model": "DiT-S/2", "global_batch_size": 8, "image_size": 32, "smoke": device_type == "cpu",
             "timed_steps": 40, "schedule": "interleaved", "block_steps": 5,
             "warmup": {"window": 5, "rel_tol": 0.05, "min_steps": 10, "max_steps": 60},
             "data": "synthetic", "vae": "tiny-random", "notes": []}
    document = results_document(command=["test"], matrix=matrix, scale=scale,
                                device=device_block(hardware_key(device_type), None),
                                environment={"torch": "test"}, jobs=jobs)
    return validate_results(document)
