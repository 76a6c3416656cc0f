"""Where measured baselines live, and recording a new one.

``baselines/<device slug>/<model>-b<batch>-<image>px-<matrix>.json``, for example
``baselines/NVIDIA-H100-80GB-HBM3/dit-xl2-b128-256px-table4.json``. A baseline is a results file
(same schema). Every CPU shares ``baselines/cpu/``: the CPU gate uses only figures that do not
depend on the machine. ``dit-repro bench --record`` writes the file; a person reviews and commits it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .schema import ResultsError, write_results

FAILED_STATUSES = ("error", "crashed", "timeout", "not_run")
"""Row statuses a baseline may not contain: faults, or a row the bench never finished (oom and
unavailable are results)."""


def failure_summary(row: dict[str, Any]) -> str:
    """``<status>: <first line of the error message>`` of a failed row."""
    message = ((row["error"] or {}).get("message") or "").splitlines()
    return f"{row['status']}: {message[0] if message else 'no message'}"


def model_slug(model: str) -> str:
    """``DiT-XL/2`` -> ``dit-xl2``."""
    return re.sub(r"[^a-z0-9-]+", "", model.lower())


def baseline_name(results: dict[str, Any]) -> str:
    """File name of the baseline a results document is compared with."""
    scale = results["scale"]
    return f"{model_slug(scale['model'])}-b{scale['global_batch_size']}-{scale['image_size']}px-{results['matrix']['name']}.json"


def baseline_path(root: str | Path, results: dict[str, Any]) -> Path:
    """The baseline file for ``results`` under the baselines root."""
    return Path(root) / results["device"]["slug"] / baseline_name(results)


def check_same_setup(baseline: dict[str, Any], results: dict[str, Any], baseline_source: str) -> None:
    """Refuse to compare runs of different model, batch, image size, matrix or device."""
    fields = (
        ("model", baseline["scale"]["model"], results["scale"]["model"]),
        ("global_batch_size", baseline["scale"]["global_batch_size"], results["scale"]["global_batch_size"]),
        ("image_size", baseline["scale"]["image_size"], results["scale"]["image_size"]),
        ("matrix", baseline["matrix"]["name"], results["matrix"]["name"]),
        ("device", baseline["device"]["slug"], results["device"]["slug"]),
    )
    mismatched = [f"{name}: baseline {b!r}, results {r!r}" for name, b, r in fields if b != r]
    if mismatched:
        raise ResultsError(f"{baseline_source} was measured on a different setup ({'; '.join(mismatched)})")


def record_baseline(results: dict[str, Any], root: str | Path) -> Path:
    """Write ``results`` as the baseline of its device and setup; refuses rows that failed."""
    failed = [f"{row['name']} ({row['status']})" for row in results["rows"] if row["status"] in FAILED_STATUSES]
    if failed:
        raise ResultsError(f"not recording a baseline with failed rows: {', '.join(failed)}; fix or drop them first")
    injected = [row["name"] for row in results["rows"] if row["injected_slowdown"] is not None]
    if injected:
        raise ResultsError(f"not recording a baseline with injected slowdowns (rows {', '.join(injected)})")
    return write_results(baseline_path(root, results), results)
