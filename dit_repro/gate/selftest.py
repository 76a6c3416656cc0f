"""The gate's self-test: its detection and false-alarm rates on real step-time noise.

Real step times are taken on this machine (a small matmul training step timed by the bench's
own session, or the step times of one row of a results file). Each draw resamples a baseline
and a current run of ``n`` steps independently from them, multiplies the current one by a
slowdown factor, and runs the gate's step-time comparison. The rate of regression verdicts per
factor is the detection rate (factor > 1) or the false-alarm rate (factor 1.00).
Requirements: a 10 % slowdown caught in at least 95 % of draws; equal code flagged in at most 1 %.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from dit_repro.bench.measure import RowSession
from dit_repro.bench.stats import WarmupPolicy, summarize
from dit_repro.bench.workload import MatmulWorkload

from .compare import Thresholds, Verdict, compare_samples

FACTORS = (1.00, 1.03, 1.05, 1.10)
"""Slowdowns tried: none, two below the default threshold's reach, and the one that must be caught."""
REQUIRED_DETECTION = 0.95
"""Least share of draws in which a 10 % slowdown must be flagged."""
MAX_FALSE_ALARMS = 0.01
"""Largest share of draws in which equal code may be flagged."""


@dataclass(frozen=True)
class RateEstimate:
    """How often the gate flagged a regression at one slowdown factor."""

    factor: float
    """Slowdown applied to the current sample."""
    draws: int
    """Number of independent draws."""
    flagged: int
    """Draws with a regression verdict."""
    ci_low: float
    """Lower end of the exact (Clopper-Pearson) 95 % interval of the rate."""
    ci_high: float
    """Upper end of that interval."""

    @property
    def rate(self) -> float:
        """Share of draws flagged."""
        return self.flagged / self.draws

    @classmethod
    def from_counts(cls, factor: float, draws: int, flagged: int) -> RateEstimate:
        """The estimate with its exact (Clopper-Pearson) 95 % interval."""
        interval = stats.binomtest(flagged, draws).proportion_ci(confidence_level=0.95, method="exact")
        return cls(factor, draws, flagged, float(interval.low), float(interval.high))

    def table_row(self) -> str:
        """``| x1.10 | draws | flagged | rate | interval |``, as both self-test reports print it."""
        return (f"| x{self.factor:.2f} | {self.draws} | {self.flagged} | {self.rate:.1%} | "
                f"{self.ci_low:.1%} - {self.ci_high:.1%} |")


def spread_line(changes: np.ndarray, what: str) -> str:
    """``<what> (<n> row-pairs): median |change| a%, 95th percentile b%, largest c%`` of changes around 1."""
    deviation = np.abs(np.asarray(changes, dtype=float) - 1.0)
    return (f"{what} ({deviation.size} row-pairs): median |change| {np.median(deviation):.1%}, "
            f"95th percentile {np.percentile(deviation, 95):.1%}, largest {deviation.max():.1%}")


def measure_matmul_samples(count: int = 400, size: int = 512, batch: int = 512, threads: int = 1,
                           seed: int = 0) -> list[float]:
    """Time ``count`` steps of a small matmul training step on the CPU after a steady warm-up.

    One thread, as the CPU bench rows use: a step then does not wait for a core that another
    process holds. The times are process CPU time, the clock the CPU gate compares (wall time on a
    shared machine carries other processes' load).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        session = RowSession(MatmulWorkload(size=size, batch=batch, seed=seed), WarmupPolicy(window=10, max_steps=300))
        session.warmup()
        return session.time_block(count).gate_clock
    finally:
        torch.set_num_threads(previous)


def run_self_test(samples: Sequence[float], thresholds: Thresholds, n: int = 50, draws: int = 1000,
                  factors: Sequence[float] = FACTORS, seed: int = 0) -> list[RateEstimate]:
    """Flag rate of the step-time comparison per slowdown factor (see the module docstring)."""
    pool = np.asarray(samples, dtype=float)
    if pool.size < 20:
        raise ValueError(f"the self-test needs at least 20 real step times, got {pool.size}")
    if n < 5 or draws < 1:
        raise ValueError(f"the self-test needs n >= 5 steps per run and draws >= 1, got n={n}, draws={draws}")
    rng = np.random.default_rng(seed)
    estimates = []
    for factor in factors:
        flagged = 0
        for _ in range(draws):
            baseline = rng.choice(pool, size=n, replace=True)
            current = rng.choice(pool, size=n, replace=True) * factor
            result = compare_samples("self-test", "s", baseline, current, thresholds.time, thresholds.alpha)
            flagged += result.verdict is Verdict.REGRESSION
        estimates.append(RateEstimate.from_counts(factor, draws, flagged))
    return estimates


def requirements_met(estimates: Sequence[RateEstimate]) -> bool:
    """A 10 % slowdown caught in >= 95 % of draws and equal code flagged in <= 1 %."""
    by_factor = {round(e.factor, 6): e for e in estimates}
    if 1.0 not in by_factor or 1.1 not in by_factor:
        raise ValueError("the self-test verdict needs the factors 1.00 and 1.10")
    return by_factor[1.1].rate >= REQUIRED_DETECTION and by_factor[1.0].rate <= MAX_FALSE_ALARMS


def self_test_report(samples: Sequence[float], estimates: Sequence[RateEstimate], n: int, thresholds: Thresholds,
                     source: str) -> str:
    """Markdown: where the samples came from, their spread, and the rate per factor."""
    summary = summarize(samples)
    lines = [
        "# Gate self-test",
        "",
        f"samples: {summary.n} real step times from {source}; median {summary.median_s * 1e3:.3f} ms, "
        f"IQR {summary.iqr_s * 1e3:.3f} ms ({summary.iqr_s / summary.median_s:.1%} of the median)",
        f"each draw: baseline and current resampled independently, {n} steps each; "
        f"time threshold {thresholds.time:.0%}, significance level {thresholds.alpha}",
        "",
        "| slowdown | draws | flagged as regression | rate | 95% CI |",
        "|---|---|---|---|---|",
    ]
    lines += [e.table_row() for e in estimates]
    ok = requirements_met(estimates)
    lines += ["", f"requirement (x1.10 caught >= {REQUIRED_DETECTION:.0%}, x1.00 flagged <= {MAX_FALSE_ALARMS:.0%}): "
              + ("met" if ok else "NOT met")]
    return "\n".join(lines) + "\n"
