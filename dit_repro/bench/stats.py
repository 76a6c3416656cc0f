"""Summary statistics of step times and the steady-state test used to end the warm-up."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TimeSummary:
    """Robust summary of a sample of step times (seconds)."""

    n: int
    """Number of steps in the sample."""
    median_s: float
    """Median step time."""
    q1_s: float
    """First quartile (25th percentile, linear interpolation)."""
    q3_s: float
    """Third quartile (75th percentile, linear interpolation)."""
    iqr_s: float
    """Interquartile range, q3 - q1."""
    mean_s: float
    """Arithmetic mean (reported beside the median; outliers pull it)."""
    min_s: float
    """Fastest step."""
    max_s: float
    """Slowest step."""

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready view."""
        return asdict(self)


def summarize(times: Sequence[float]) -> TimeSummary:
    """Median, quartiles, mean and range of ``times``; an empty sample is an error."""
    sample = np.asarray(times, dtype=np.float64)
    if sample.size == 0:
        raise ValueError("cannot summarize an empty sample of step times")
    if not np.all(np.isfinite(sample)) or np.any(sample < 0):
        raise ValueError("step times must be finite and non-negative")
    q1, median, q3 = np.percentile(sample, [25, 50, 75])
    return TimeSummary(
        n=int(sample.size),
        median_s=float(median),
        q1_s=float(q1),
        q3_s=float(q3),
        iqr_s=float(q3 - q1),
        mean_s=float(sample.mean()),
        min_s=float(sample.min()),
        max_s=float(sample.max()),
    )


@dataclass(frozen=True)
class WarmupPolicy:
    """When the warm-up ends: the step time has stopped changing, judged on two adjacent windows."""

    window: int = 5
    """Steps per window; the medians of the last two windows are compared."""
    rel_tol: float = 0.05
    """Largest relative difference between the two window medians that counts as steady."""
    min_steps: int = 10
    """Never stop before this many steps (at least two windows are always needed)."""
    max_steps: int = 200
    """Stop here even if not steady; the result then records ``steady: false``."""

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"warm-up window must be >= 1 step, got {self.window}")
        if not 0.0 < self.rel_tol < 1.0:
            raise ValueError(f"warm-up rel_tol must be in (0, 1), got {self.rel_tol}")
        if self.max_steps < max(self.min_steps, 2 * self.window):
            raise ValueError(
                f"warm-up max_steps ({self.max_steps}) must be >= min_steps ({self.min_steps}) "
                f"and >= two windows ({2 * self.window})"
            )

    def is_steady(self, times: Sequence[float]) -> bool:
        """True once ``times`` is long enough and its last two windows have medians within rel_tol."""
        if len(times) < max(self.min_steps, 2 * self.window):
            return False
        previous = float(np.median(times[-2 * self.window : -self.window]))
        latest = float(np.median(times[-self.window :]))
        return abs(latest - previous) <= self.rel_tol * previous

    def is_done(self, times: Sequence[float]) -> bool:
        """True when the warm-up should stop: steady, or out of steps."""
        return len(times) >= self.max_steps or self.is_steady(times)

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready view."""
        return asdict(self)
