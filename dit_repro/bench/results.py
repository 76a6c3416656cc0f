"""Assembles the results document (results.schema.json) from the rows a runner measured."""

from __future__ import annotations

import datetime as dt
from typing import Any

from dit_repro import flops

from .hardware import key_slug
from .matrices import Matrix
from .runner import RowJob
from .schema import SCHEMA_ID, SCHEMA_VERSION
from .stats import summarize


def device_block(hardware_key: dict[str, Any], peak_override: float | None) -> dict[str, Any]:
    """The ``device`` block: name, count, hardware key, baseline folder and the peak MFU is measured against."""
    device_type, device_name = hardware_key["type"], hardware_key["name"]
    if peak_override is not None:
        if peak_override <= 0:
            raise ValueError(f"--peak-flops must be positive, got {peak_override}")
        peak, source = float(peak_override), "user override (--peak-flops)"
    elif device_type != "cuda":
        peak, source = None, f"no MFU on {device_type}: no peak tensor throughput is defined"
    else:
        peak = flops.peak_flops(device_name)
        source = "dense bf16 datasheet peak (dit_repro.flops)" if peak else (
            f"unknown peak for {device_name!r}; pass --peak-flops to report MFU")
    return {"type": device_type, "name": device_name, "count": hardware_key.get("count", 1),
            "slug": key_slug(hardware_key), "hardware_key": dict(hardware_key),
            "peak_flops_per_s": peak, "peak_source": source}


def timing_block(times: list[float], cpu_times: list[float] | None, clock: str,
                 images_per_step: int) -> dict[str, Any]:
    """Every step time and its summary, with throughput at the median step time; CPU times on a CPU."""
    summary = summarize(times)
    return {
        "clock": clock,
        "step_times_s": list(times),
        "cpu_times_s": None if cpu_times is None else list(cpu_times),
        "median_s": summary.median_s,
        "q1_s": summary.q1_s,
        "q3_s": summary.q3_s,
        "iqr_s": summary.iqr_s,
        "mean_s": summary.mean_s,
        "images_per_s": images_per_step / summary.median_s,
        "steps_per_s": 1.0 / summary.median_s,
    }


def compute_block(info: dict[str, Any], median_s: float, peak_flops_per_s: float | None) -> dict[str, Any]:
    """Model FLOPs per step (3x forward, recompute excluded), TFLOP/s and MFU at the median step."""
    per_image = info.get("train_flops_per_image")
    if per_image is None:
        return {"forward_gmacs_per_image": None, "model_flops_per_step": None, "model_tflops_per_s": None,
                "mfu": None, "note": "no FLOP model for this workload"}
    per_step = per_image * info["images_per_step"]
    return {
        "forward_gmacs_per_image": info["forward_gmacs_per_image"],
        "model_flops_per_step": per_step,
        "model_tflops_per_s": per_step / median_s / 1e12,
        "mfu": None if peak_flops_per_s is None else per_step / median_s / peak_flops_per_s,
        "note": "model FLOPs = 3 x forward (2 FLOPs per multiply-add); checkpoint recompute not counted",
    }


NOT_RUN_ERROR = {"type": "NotRun", "message": "the bench stopped before this row finished (partial results)"}
"""The error of a row that had not finished when partial results were written."""


def row_record(job: RowJob, peak_flops_per_s: float | None) -> dict[str, Any]:
    """One row of the results document; a row still running or waiting is ``not_run``."""
    status, error = ("not_run", dict(NOT_RUN_ERROR)) if job.active else (job.status, job.error)
    timing = compute = None
    if status == "ok" and job.times:
        timing = timing_block(job.times, job.cpu_times, job.info["clock"], job.info["images_per_step"])
        compute = compute_block(job.info, timing["median_s"], peak_flops_per_s)
    return {
        "name": job.name,
        "status": status,
        "error": error,
        "switches": job.info.get("switches") or job.switches,
        "config": job.info.get("config"),
        "attention": job.info.get("attention"),
        "injected_slowdown": job.inject_slowdown,
        "warmup": job.warmup,
        "timing": timing,
        "compute": compute,
        "memory": job.memory,
        "saved_activations": job.saved_activations,
        "notes": list(job.notes),
    }


def results_document(*, command: list[str], matrix: Matrix, scale: dict[str, Any], device: dict[str, Any],
                     environment: dict[str, Any], jobs: list[RowJob], ab: dict[str, Any] | None = None) -> dict[str, Any]:
    """The whole results document; validate it with :func:`dit_repro.bench.schema.validate_results`.

    ``ab`` is the ``ab`` block of one side of a same-run A/B (``bench --against``).
    """
    document = {
        "schema": SCHEMA_ID,
        "schema_version": SCHEMA_VERSION,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": list(command),
        "matrix": matrix.to_dict(),
        "scale": scale,
        "device": device,
        "environment": environment,
        "rows": [row_record(job, device["peak_flops_per_s"]) for job in jobs],
    }
    if ab is not None:
        document["ab"] = dict(ab)
    return document
