"""Benchmark results files (``dit-repro bench``) as evidence for the claims."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dit_repro.bench.schema import load_results
from dit_repro.models import PRESETS

from .figures import coefficient_of_variation

MIB = 2**20
STABILITY_BLOCKS = 10
"""Timed steps are cut into this many consecutive blocks, as Table 1 cuts a run into ten epochs."""


@dataclass(frozen=True)
class ResultsFile:
    """One validated results document and where it came from."""

    path: str
    """The file it was read from (or where it was written)."""
    doc: dict[str, Any]
    """The document (results.schema.json)."""

    @property
    def matrix(self) -> str:
        """The matrix name: table4, attention, compile or a custom one."""
        return self.doc["matrix"]["name"]

    @property
    def on_gpu(self) -> bool:
        """True when measured on CUDA."""
        return self.doc["device"]["type"] == "cuda"

    @property
    def device_name(self) -> str:
        """The GPU's (or CPU's) name."""
        return self.doc["device"]["name"]

    @property
    def model(self) -> str:
        """The model preset the rows trained."""
        return self.doc["scale"]["model"]

    @property
    def family(self) -> str:
        """``dit`` or ``uvit``."""
        return PRESETS[self.model].family if self.model in PRESETS else "unknown"

    @property
    def global_batch_size(self) -> int:
        """Images per step."""
        return int(self.doc["scale"]["global_batch_size"])

    @property
    def image_size(self) -> int:
        """Image side in pixels."""
        return int(self.doc["scale"]["image_size"])

    def describe(self) -> str:
        """``NVIDIA H100 80GB HBM3 x1, DiT-S/2 batch 32 at 256 px (results.json)``."""
        return (f"{self.device_name} x1, {self.model} batch {self.global_batch_size} at {self.image_size} px "
                f"({Path(self.path).name})")

    def row(self, name: str) -> dict[str, Any] | None:
        """The row of that name, or None."""
        return next((row for row in self.doc["rows"] if row["name"] == name), None)


def load_results_files(paths: list[str | os.PathLike[str]]) -> list[ResultsFile]:
    """Read and validate each results file (ResultsError names the first bad one)."""
    return [ResultsFile(str(path), load_results(path)) for path in paths]


def row_metric(row: dict[str, Any] | None, metric: str) -> float | None:
    """steps/s (at the median step) or peak reserved MiB of an ``ok`` row; None when not measured.

    Reserved memory is used because the paper's per-GPU figures include the allocator's cache.
    """
    if row is None or row["status"] != "ok":
        return None
    if metric == "steps_per_s":
        return None if row["timing"] is None else float(row["timing"]["steps_per_s"])
    if metric == "memory_mib":
        memory = row["memory"]
        if memory is None or memory["kind"] != "cuda":
            return None
        return memory["max_reserved_bytes"] / MIB
    raise ValueError(f"unknown results metric {metric!r}")


def block_rate_cv(row: dict[str, Any], blocks: int = STABILITY_BLOCKS) -> float | None:
    """Coefficient of variation of the step rate over ``blocks`` consecutive blocks of timed steps."""
    if row["status"] != "ok" or row["timing"] is None:
        return None
    times = row["timing"]["step_times_s"]
    if len(times) < blocks:
        return None
    size = len(times) // blocks
    rates = [size / sum(times[i * size:(i + 1) * size]) for i in range(blocks)]
    return coefficient_of_variation(rates)


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    return float(statistics.median(values))
