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

PEAK_OVERRIDE_SOURCE = "user override (--peak-flops): the peak of every row, whatever its precision"
"""``peak_source`` when ``--peak-flops`` replaced the datasheet peaks."""


def device_block(hardware_key: dict[str, Any], peak_override: float | None) -> dict[str, Any]:
    """The ``device`` block: name, count, hardware key, baseline folder and the peaks MFU is measured against.

    ``peak_flops_per_s`` is the one peak of every row under ``--peak-flops``; otherwise it is null
    and ``peak_flops_per_s_by_precision`` holds the device's dense datasheet peak for each precision
    (null on a CPU or an unknown GPU, with the reason in ``peak_source``).
    """
    device_type, device_name = hardware_key["type"], hardware_key["name"]
    peak, by_precision = None, None
    if peak_override is not None:
        if peak_override <= 0:
            raise ValueError(f"--peak-flops must be positive, got {peak_override}")
        peak, source = float(peak_override), PEAK_OVERRIDE_SOURCE
    elif device_type != "cuda":
        source = f"no MFU on {device_type}: no peak tensor throughput is defined"
    elif (peaks := flops.device_peaks(device_name)) is None:
        source = f"unknown peak for {device_name!r}; pass --peak-flops to report MFU"
    else:
        by_precision = peaks.by_precision()
        source = (f"dense datasheet peaks of the {peaks.part} ({peaks.source}, dit_repro.flops); "
                  "each row is divided by the peak of its own precision")
    return {"type": device_type, "name": device_name, "count": hardware_key.get("count", 1),
            "slug": key_slug(hardware_key), "hardware_key": dict(hardware_key),
            "peak_flops_per_s": peak, "peak_flops_per_s_by_precision": by_precision, "peak_source": source}


def row_peak(device: dict[str, Any], switches: dict[str, Any]) -> dict[str, Any]:
    """The peak a row's MFU is divided by: the row's precision, the FLOP/s (or null) and why.

    ``--peak-flops`` applies to every row; otherwise the device's peak at the precision the row's
    switches name. A row that names no precision gets no peak rather than a guessed one.
    """
    precision = switches.get("precision")
    if device["peak_flops_per_s"] is not None:
        return {"precision": precision, "flops_per_s": device["peak_flops_per_s"], "source": PEAK_OVERRIDE_SOURCE}
    table = device.get("peak_flops_per_s_by_precision")
    if table is None:
        return {"precision": precision, "flops_per_s": None, "source": device["peak_source"]}
    if precision not in table:
        missing = "the row names no precision" if precision is None else f"no peak for precision {precision!r}"
        return {"precision": precision, "flops_per_s": None, "source": f"{missing}; pass --peak-flops to report MFU"}
    return {"precision": precision, "flops_per_s": table[precision],
            "source": f"dense {precision} datasheet peak of the {device['name']}"}


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


def compute_block(info: dict[str, Any], median_s: float, peak: dict[str, Any]) -> dict[str, Any]:
    """Model FLOPs per step (3x forward, recompute excluded), TFLOP/s and MFU at the median step.

    ``peak`` is the row's :func:`row_peak`. A live-feature row's VAE encode runs inside the timed
    step but is not model work: its FLOPs are ``encode_flops_per_step``, outside model FLOPs and MFU.
    """
    encode_per_image = info.get("encode_flops_per_image")
    encode_per_step = None if encode_per_image is None else encode_per_image * info["images_per_step"]
    per_image = info.get("train_flops_per_image")
    if per_image is None:
        return {"forward_gmacs_per_image": None, "model_flops_per_step": None, "model_tflops_per_s": None,
                "mfu": None, "peak": peak, "encode_flops_per_step": encode_per_step,
                "note": "no FLOP model for this workload"}
    per_step = per_image * info["images_per_step"]
    note = "model FLOPs = 3 x forward (2 FLOPs per multiply-add); checkpoint recompute not counted"
    if encode_per_step is not None:
        note += "; the VAE encode (encode_flops_per_step) is in the step time but not in model FLOPs or MFU"
    return {
        "forward_gmacs_per_image": info["forward_gmacs_per_image"],
        "model_flops_per_step": per_step,
        "model_tflops_per_s": per_step / median_s / 1e12,
        "mfu": None if peak["flops_per_s"] is None else per_step / median_s / peak["flops_per_s"],
        "peak": peak,
        "encode_flops_per_step": encode_per_step,
        "note": note,
    }


NOT_RUN_ERROR = {"type": "NotRun", "message": "the bench stopped before this row finished (partial results)"}
"""The error of a row that had not finished when partial results were written."""


def row_record(job: RowJob, device: dict[str, Any]) -> dict[str, Any]:
    """One row of the results document; a row still running or waiting is ``not_run``."""
    status, error = ("not_run", dict(NOT_RUN_ERROR)) if job.active else (job.status, job.error)
    switches = job.info.get("switches") or job.switches
    timing = compute = None
    if status == "ok" and job.times:
        timing = timing_block(job.times, job.cpu_times, job.info["clock"], job.info["images_per_step"])
        compute = compute_block(job.info, timing["median_s"], row_peak(device, switches))
    return {
        "name": job.name,
        "status": status,
        "error": error,
        "switches": switches,
        "config": job.info.get("config"),
        "attention": job.info.get("attention"),
        "injected_slowdown": job.inject_slowdown,
        "fixed_cost": job.fixed_cost if "total_s" in job.fixed_cost else None,
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
        "rows": [row_record(job, device) for job in jobs],
    }
    if ab is not None:
        document["ab"] = dict(ab)
    return document
