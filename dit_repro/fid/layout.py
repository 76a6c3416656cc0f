"""File names inside a sample folder written by ``dit-repro sample``.

One PNG per sample index (``0000000.png``, ...; seven digits so that name order is index
order up to ten million samples), a ``samples.json`` record, and optionally an ``.npz`` in the
ADM evaluator's layout named ``samples_{N}x{H}x{W}x{C}.npz``.
"""

from __future__ import annotations

from pathlib import Path

SAMPLES_RECORD = "samples.json"
"""Name of the record written beside the images."""
INDEX_DIGITS = 7
"""Zero-padded width of the index in an image's file name."""
MAX_SAMPLES = 10**INDEX_DIGITS
"""Most samples a folder can hold with names in index order."""


def image_name(index: int) -> str:
    """File name of sample ``index``."""
    if not 0 <= index < MAX_SAMPLES:
        raise ValueError(f"sample index {index} is outside [0, {MAX_SAMPLES})")
    return f"{index:0{INDEX_DIGITS}d}.png"


def npz_name(num: int, height: int, width: int, channels: int) -> str:
    """File name of the packed ``.npz`` of the first ``num`` samples (the ADM/DiT naming)."""
    return f"samples_{num}x{height}x{width}x{channels}.npz"


def record_path(samples: Path) -> Path:
    """``samples.json`` of a sample folder, or of the folder holding a packed ``.npz``."""
    return (samples if samples.is_dir() else samples.parent) / SAMPLES_RECORD
