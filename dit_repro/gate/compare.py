"""One metric, baseline against current: the change, its significance and the verdict.

A metric regresses only when its change is beyond the threshold *and* statistically
significant at level ``alpha``; an improvement needs the same in the other direction.

* Per-step samples (step times, per-step memory peaks): one-sided Mann-Whitney U test of
  current against baseline; the change is the ratio of medians.
* Ratios between rows of one run (the CPU gate): percentile bootstrap of the ratio of the
  current to the baseline figure; the rounds of an interleaved run are resampled jointly
  across rows (a block bootstrap), so that drift of the machine stays paired; the p-value is
  the bootstrap fraction on the wrong side of 1 (add-one smoothed).
* The two sides of one interleaved A/B run (``compare_round_ratios``): the sides of a row were
  timed in the same rounds, so each round gives one paired ratio, current over baseline, in which
  the machine's state at that moment cancels; the change is the median of those ratios and the
  bootstrap resamples rounds. (The ratio of the two sides' medians lets a burst of load that hit
  one side's steps of a round more than the other's move the estimate: on recorded A/B runs of
  identical code it ranged over 0.93-1.02, the median of round ratios over 0.98-1.02.)
* Counts without sampling noise (multiply-adds, saved-activation bytes): the change alone
  decides; there is no p-value.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats


class Verdict(str, enum.Enum):
    """Outcome of one comparison."""

    PASS = "pass"
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    FAIL = "fail"
    NEW = "new"

    @property
    def fails_gate(self) -> bool:
        """Regressions and failures make the gate exit 1."""
        return self in (Verdict.REGRESSION, Verdict.FAIL)


@dataclass(frozen=True)
class Comparison:
    """One line of the gate's table."""

    metric: str
    """What is compared, e.g. ``gcp: step time``."""
    unit: str
    """Unit of baseline and current: ``s``, ``bytes``, ``gmacs`` or ``x`` (a ratio)."""
    baseline: float | None
    """Baseline figure (a median for samples), None when there is none."""
    current: float | None
    """Current figure, None when missing."""
    change: float | None
    """current / baseline, None when either is missing."""
    p_value: float | None
    """Significance of the change in the direction it went; None for noise-free counts."""
    verdict: Verdict
    """pass, regression, improvement, fail or new."""
    threshold: float
    """Relative change that counts (0.05 = 5 %)."""
    note: str = ""
    """Why a verdict was given when it is not the plain statistics (crash, missing metric, ...)."""


@dataclass(frozen=True)
class Thresholds:
    """When a change counts."""

    time: float = 0.05
    """Relative change of time-like metrics (step time, time ratios, multiply-adds)."""
    memory: float = 0.10
    """Relative change of memory-like metrics (peaks, saved-activation bytes, memory ratios)."""
    alpha: float = 0.01
    """Significance level of each one-sided test."""

    def __post_init__(self) -> None:
        for name in ("time", "memory"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} threshold must be in (0, 1) (a fraction, 0.05 = 5%), got {value}")
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"the significance level (--alpha) must be in (0, 0.5), got {self.alpha}")


def decide(change: float, p_worse: float | None, p_better: float | None, threshold: float, alpha: float,
           higher_is_better: bool = False) -> tuple[Verdict, float | None]:
    """Verdict and reported p-value of a change (current / baseline).

    ``p_worse``/``p_better`` are one-sided p-values of a change in the bad/good direction; both
    None for a noise-free count, which is then judged on the threshold alone.
    """
    worse = change < 1.0 - threshold if higher_is_better else change > 1.0 + threshold
    better = change > 1.0 + threshold if higher_is_better else change < 1.0 - threshold
    went_worse = change < 1.0 if higher_is_better else change > 1.0
    reported = p_worse if went_worse else p_better
    if worse and (p_worse is None or p_worse < alpha):
        return Verdict.REGRESSION, reported
    if better and (p_better is None or p_better < alpha):
        return Verdict.IMPROVEMENT, reported
    return Verdict.PASS, reported


def compare_samples(metric: str, unit: str, baseline: Sequence[float], current: Sequence[float], threshold: float,
                    alpha: float) -> Comparison:
    """Per-step samples where higher is worse: Mann-Whitney U and the ratio of medians."""
    base, cur = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    if base.size == 0 or cur.size == 0:
        raise ValueError(f"{metric}: cannot compare an empty sample")
    base_median, cur_median = float(np.median(base)), float(np.median(cur))
    change = cur_median / base_median
    if np.all(base == base[0]) and np.all(cur == base[0]):
        p_worse = p_better = 1.0  # identical constant samples: no evidence of any change
    else:
        p_worse = float(stats.mannwhitneyu(cur, base, alternative="greater").pvalue)
        p_better = float(stats.mannwhitneyu(cur, base, alternative="less").pvalue)
    verdict, p = decide(change, p_worse, p_better, threshold, alpha)
    return Comparison(metric, unit, base_median, cur_median, change, p, verdict, threshold)


def compare_exact(metric: str, unit: str, baseline: float, current: float, threshold: float,
                  higher_is_better: bool = False) -> Comparison:
    """A noise-free count: the threshold alone decides."""
    if baseline == 0:
        change = 1.0 if current == 0 else float("inf")
    else:
        change = current / baseline
    verdict, _ = decide(change, None, None, threshold, alpha=0.5, higher_is_better=higher_is_better)
    return Comparison(metric, unit, float(baseline), float(current), change, None, verdict, threshold,
                      note="count without sampling noise")


@dataclass(frozen=True)
class RunSamples:
    """Per-step times of several rows of one run, and how they were interleaved."""

    rows: dict[str, Sequence[float]]
    """Row name -> step times in the order they were taken."""
    block: int | None = None
    """Steps per block of an interleaved run (block k of every row was timed in round k); None if not."""

    def paired_rounds(self) -> bool:
        """True when rounds can be resampled jointly across rows (interleaved, equal step counts)."""
        lengths = {len(v) for v in self.rows.values()}
        return self.block is not None and len(lengths) == 1 and lengths.pop() >= 2 * self.block


def bootstrap_row_medians(run: RunSamples, resamples: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Medians of each row over ``resamples`` bootstrap resamples of the run.

    Interleaved runs resample whole rounds, the same rounds for every row, so that a drift of the
    machine between rounds stays paired across rows and cancels in ratios (a block bootstrap).
    Otherwise each row's steps are resampled independently.
    """
    if not run.paired_rounds():
        out = {}
        for name, samples in run.rows.items():
            data = np.asarray(samples, dtype=float)
            out[name] = np.median(data[rng.integers(0, data.size, size=(resamples, data.size))], axis=1)
        return out
    assert run.block is not None
    steps = len(next(iter(run.rows.values())))
    rounds = -(-steps // run.block)
    picks = rng.integers(0, rounds, size=(resamples, rounds))
    out = {}
    for name, samples in run.rows.items():
        padded = np.full(rounds * run.block, np.nan)
        padded[:steps] = samples
        by_round = padded.reshape(rounds, run.block)  # (rounds, block); NaN pads a short last round
        out[name] = np.nanmedian(by_round[picks].reshape(resamples, -1), axis=1)
    return out


ChangeFn = Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], np.ndarray]
"""Maps {row: medians} of the baseline and of the current run (equal-length arrays) to the change."""


def compare_bootstrap(metric: str, unit: str, change_fn: ChangeFn, baseline: RunSamples, current: RunSamples,
                      shown: tuple[float, float], threshold: float, alpha: float, higher_is_better: bool,
                      resamples: int, rng: np.random.Generator, note: str = "") -> Comparison:
    """A change computed from several rows' median step times, judged by a percentile bootstrap.

    Baseline and current runs are resampled independently (see bootstrap_row_medians);
    ``shown`` are the baseline and current figures printed in the table.
    """
    point = ({k: np.array([np.median(v)]) for k, v in baseline.rows.items()},
             {k: np.array([np.median(v)]) for k, v in current.rows.items()})
    change = float(change_fn(*point)[0])
    changes = change_fn(bootstrap_row_medians(baseline, resamples, rng), bootstrap_row_medians(current, resamples, rng))
    return _bootstrap_verdict(metric, unit, change, changes, shown, threshold, alpha, higher_is_better, resamples,
                              note or "bootstrap")


def round_ratios(baseline: Sequence[float], current: Sequence[float], block: int) -> np.ndarray:
    """Per round, the current side's time over the baseline side's (sums of the round's steps)."""
    base, cur = np.asarray(baseline, dtype=float), np.asarray(current, dtype=float)
    if base.size != cur.size or base.size == 0:
        raise ValueError(f"the two sides of an A/B row must time the same rounds, got {base.size} and {cur.size} steps")
    rounds = -(-base.size // block)
    starts = np.arange(rounds) * block
    return np.add.reduceat(cur, starts) / np.add.reduceat(base, starts)


RatioStatistic = Callable[[dict[str, np.ndarray]], np.ndarray]
"""Maps {row: median round ratio} (arrays over resamples) to the change."""


def compare_round_ratios(metric: str, unit: str, statistic: RatioStatistic, baseline: RunSamples,
                         current: RunSamples, shown: tuple[float, float], threshold: float, alpha: float,
                         higher_is_better: bool, resamples: int, rng: np.random.Generator,
                         note: str = "") -> Comparison:
    """A change from the paired round ratios of one interleaved A/B run (see the module docstring).

    ``baseline`` and ``current`` hold the same rows, each timed in the same rounds of
    ``baseline.block`` steps on both sides; rounds are resampled with the same indices for every row.
    """
    if baseline.block is None:
        raise ValueError(f"{metric}: round ratios need an interleaved run (a block size)")
    ratios = {name: round_ratios(baseline.rows[name], current.rows[name], baseline.block) for name in baseline.rows}
    change = float(statistic({k: np.array([np.median(v)]) for k, v in ratios.items()})[0])
    count = len(next(iter(ratios.values())))
    picks = rng.integers(0, count, size=(resamples, count))
    changes = statistic({k: np.median(v[picks], axis=1) for k, v in ratios.items()})
    return _bootstrap_verdict(metric, unit, change, changes, shown, threshold, alpha, higher_is_better, resamples,
                              note or "bootstrap over paired rounds")


def _bootstrap_verdict(metric: str, unit: str, change: float, changes: np.ndarray, shown: tuple[float, float],
                       threshold: float, alpha: float, higher_is_better: bool, resamples: int,
                       note: str) -> Comparison:
    """Verdict of a point change and its bootstrap distribution (p-values: share on the wrong side of 1)."""
    p_up = float((1 + np.count_nonzero(changes <= 1.0)) / (resamples + 1))  # evidence the figure rose
    p_down = float((1 + np.count_nonzero(changes >= 1.0)) / (resamples + 1))  # evidence it fell
    p_worse, p_better = (p_down, p_up) if higher_is_better else (p_up, p_down)
    verdict, p = decide(change, p_worse, p_better, threshold, alpha, higher_is_better)
    return Comparison(metric, unit, shown[0], shown[1], change, p, verdict, threshold, note=note)
