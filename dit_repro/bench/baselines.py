"""Where measured baselines live, finding the one for this hardware, and recording a new one.

``baselines/<hardware slug>/<model>-b<batch>-<image>px-<matrix>.json``, for example
``baselines/nvidia-h100-80gb-hbm3-x1-cuda12.8-3f9a1c/dit-xl2-b128-256px-table4.json``. A baseline
is a results file (same schema) and carries the hardware key it was recorded on
(:mod:`dit_repro.bench.hardware`). It is used only on hardware with exactly that key: a timing
from another CPU model, instruction set, core count, GPU or CUDA release is never compared. Figures
that do not depend on the machine (multiply-adds, saved-activation bytes and their ratios) may be
checked against a baseline of any hardware (``dit-repro gate --portable``).
``dit-repro bench --record`` writes the file; a person reviews and commits it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .hardware import describe_key
from .schema import ResultsError, load_results, write_results

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


class MissingBaseline(ResultsError):
    """No baseline of this setup was recorded on hardware with this key."""


def check_same_setup(baseline: dict[str, Any], results: dict[str, Any], baseline_source: str) -> None:
    """Refuse to compare runs of different model, batch, image size or matrix."""
    fields = (
        ("model", baseline["scale"]["model"], results["scale"]["model"]),
        ("global_batch_size", baseline["scale"]["global_batch_size"], results["scale"]["global_batch_size"]),
        ("image_size", baseline["scale"]["image_size"], results["scale"]["image_size"]),
        ("matrix", baseline["matrix"]["name"], results["matrix"]["name"]),
    )
    mismatched = [f"{name}: baseline {b!r}, results {r!r}" for name, b, r in fields if b != r]
    if mismatched:
        raise ResultsError(f"{baseline_source} was measured on a different setup ({'; '.join(mismatched)})")


def _key_line(device: dict[str, Any]) -> str:
    return f"{device['slug']} ({describe_key(device['hardware_key'])})"


def stored_baselines(root: Path, results: dict[str, Any]) -> list[tuple[Path, dict[str, Any] | None]]:
    """Every baseline of ``results``' setup under ``root``, with its device block (None if unreadable)."""
    found = []
    for path in sorted(root.glob(f"*/{baseline_name(results)}")):
        try:
            found.append((path, load_results(path)["device"]))
        except ResultsError:
            found.append((path, None))
    return found


def find_baseline(results: dict[str, Any], baselines: Path) -> Path:
    """The baseline recorded on hardware with exactly ``results``' key: ``baselines`` itself if it is a file,
    else the file of the key's folder under it. Raises MissingBaseline naming the key looked for and those stored."""
    wanted = results["device"]
    if baselines.is_file():
        stored = load_results(baselines)["device"]
        if stored["hardware_key"] != wanted["hardware_key"]:
            raise MissingBaseline(
                f"{baselines} was recorded on other hardware, so its timings do not apply here: this run's key is "
                f"{_key_line(wanted)}, the file's is {_key_line(stored)}. Use a baseline of this hardware, compare "
                "against a commit in the same run (`dit-repro bench --against REF`), or check only the "
                "machine-independent figures (`dit-repro gate --portable`).")
        return baselines
    path = baseline_path(baselines, results)
    stored = stored_baselines(baselines, results)
    match = [p for p, device in stored if device is not None and device["hardware_key"] == wanted["hardware_key"]]
    if path in match:
        return path
    listing = "; ".join(f"{p.parent.name}: " + (describe_key(d["hardware_key"]) if d else "unreadable")
                        for p, d in stored) or "none"
    raise MissingBaseline(
        f"no baseline of this setup ({baseline_name(results)}) for this hardware under {baselines}: looked for key "
        f"{_key_line(wanted)} in {path.parent}; stored for this setup: {listing}. Record one with "
        "`dit-repro bench --record` on this hardware (review it, commit it), or measure against a commit in the "
        "same run with `dit-repro bench --against auto`.")


def find_portable_baseline(results: dict[str, Any], baselines: Path) -> Path:
    """A baseline of ``results``' setup from any hardware (this hardware's first), for machine-independent figures."""
    if baselines.is_file():
        return baselines
    stored = [p for p, device in stored_baselines(baselines, results) if device is not None]
    if not stored:
        raise MissingBaseline(f"no readable baseline of this setup ({baseline_name(results)}) under {baselines}, "
                              "on any hardware")
    own = baseline_path(baselines, results)
    return own if own in stored else stored[0]


def record_baseline(results: dict[str, Any], root: str | Path) -> Path:
    """Write ``results`` as the baseline of its device and setup; refuses rows that failed."""
    failed = [f"{row['name']} ({row['status']})" for row in results["rows"] if row["status"] in FAILED_STATUSES]
    if failed:
        raise ResultsError(f"not recording a baseline with failed rows: {', '.join(failed)}; fix or drop them first")
    injected = [row["name"] for row in results["rows"] if row["injected_slowdown"] is not None]
    if injected:
        raise ResultsError(f"not recording a baseline with injected slowdowns (rows {', '.join(injected)})")
    return write_results(baseline_path(root, results), results)
