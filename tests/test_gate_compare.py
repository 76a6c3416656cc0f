"""The statistics of one comparison: threshold AND significance, in both directions.

Random draws are seeded; each test states the false-failure rate its assertion allows.
"""

from __future__ import annotations

import numpy as np
import pytest

from dit_repro.gate.compare import (
    RunSamples,
    Thresholds,
    Verdict,
    bootstrap_row_medians,
    compare_bootstrap,
    compare_exact,
    compare_samples,
    decide,
)

THR = Thresholds()


def _times(median: float, n: int, seed: int, spread: float = 0.02) -> np.ndarray:
    return median * np.exp(np.random.default_rng(seed).normal(0.0, spread, n))


def test_decide_needs_both_threshold_and_significance() -> None:
    assert decide(1.10, 0.001, 0.999, 0.05, 0.01)[0] is Verdict.REGRESSION
    assert decide(1.10, 0.2, 0.8, 0.05, 0.01)[0] is Verdict.PASS  # beyond threshold, not significant
    assert decide(1.03, 1e-9, 1.0, 0.05, 0.01)[0] is Verdict.PASS  # significant, within threshold
    assert decide(0.90, 0.999, 0.001, 0.05, 0.01)[0] is Verdict.IMPROVEMENT
    # Higher-is-better metrics (speed-ups) flip the direction.
    assert decide(0.90, 0.001, 0.999, 0.05, 0.01, higher_is_better=True)[0] is Verdict.REGRESSION
    assert decide(1.10, 0.999, 0.001, 0.05, 0.01, higher_is_better=True)[0] is Verdict.IMPROVEMENT


def test_a_ten_percent_slowdown_is_a_regression_with_a_tiny_p_value() -> None:
    # 2 % log-normal noise, 100 steps each: the 10 % shift is ~35 standard errors of the median.
    result = compare_samples("t", "s", _times(1.0, 100, 0), _times(1.1, 100, 1), THR.time, THR.alpha)
    assert result.verdict is Verdict.REGRESSION
    assert result.p_value is not None and result.p_value < 1e-10
    assert result.change == pytest.approx(1.1, rel=0.01)


def test_equal_samples_pass_and_speedups_are_improvements() -> None:
    same = compare_samples("t", "s", _times(1.0, 100, 2), _times(1.0, 100, 3), THR.time, THR.alpha)
    assert same.verdict is Verdict.PASS
    faster = compare_samples("t", "s", _times(1.0, 100, 4), _times(0.8, 100, 5), THR.time, THR.alpha)
    assert faster.verdict is Verdict.IMPROVEMENT


def test_identical_constant_samples_have_p_value_one() -> None:
    result = compare_samples("m", "bytes", [5.0] * 10, [5.0] * 10, THR.memory, THR.alpha)
    assert (result.verdict, result.p_value, result.change) == (Verdict.PASS, 1.0, 1.0)


def test_exact_counts_are_judged_on_the_threshold_alone() -> None:
    assert compare_exact("b", "bytes", 100, 111, 0.10).verdict is Verdict.REGRESSION
    assert compare_exact("b", "bytes", 100, 109, 0.10).verdict is Verdict.PASS
    assert compare_exact("b", "bytes", 100, 89, 0.10).verdict is Verdict.IMPROVEMENT
    result = compare_exact("b", "bytes", 100, 100, 0.10)
    assert result.p_value is None and result.change == 1.0


def test_bootstrap_ratio_detects_a_changed_ratio_and_passes_an_unchanged_one() -> None:
    rng = np.random.default_rng(0)

    def ratio_change(b: dict, c: dict) -> np.ndarray:
        return (c["a"] / c["b"]) / (b["a"] / b["b"])

    base = RunSamples({"a": _times(2.0, 40, 10), "b": _times(1.0, 40, 11)})
    # The whole machine is 30 % slower, and row a is 10 % slower on top.
    slower = RunSamples({"a": _times(2.0 * 1.3 * 1.1, 40, 12), "b": _times(1.3, 40, 13)})
    same = RunSamples({"a": _times(2.0 * 1.3, 40, 14), "b": _times(1.3, 40, 15)})
    flagged = compare_bootstrap("r", "x", ratio_change, base, slower, (2.0, 2.2), THR.time, THR.alpha, False, 2000, rng)
    assert flagged.verdict is Verdict.REGRESSION and flagged.change == pytest.approx(1.1, rel=0.02)
    assert flagged.p_value is not None and flagged.p_value < THR.alpha
    kept = compare_bootstrap("r", "x", ratio_change, base, same, (2.0, 2.0), THR.time, THR.alpha, False, 2000, rng)
    assert kept.verdict is Verdict.PASS


def test_round_paired_bootstrap_cancels_drift_that_independent_resampling_does_not() -> None:
    # Two rows interleaved in 8 rounds of 5 steps; the machine slows by 40 % half-way through the
    # run. Row a is truly 2x row b in every round, with 1 % noise.
    rng = np.random.default_rng(0)
    drift = np.repeat([1.0] * 4 + [1.4] * 4, 5)
    rows = {"a": 2.0 * drift * _times(1.0, 40, 20, 0.01), "b": drift * _times(1.0, 40, 21, 0.01)}
    paired = bootstrap_row_medians(RunSamples(rows, block=5), 4000, rng)
    independent = bootstrap_row_medians(RunSamples(rows, block=None), 4000, rng)
    paired_ratio, independent_ratio = paired["a"] / paired["b"], independent["a"] / independent["b"]
    # Drift stays paired: the ratio's bootstrap spread is a few times smaller than without pairing.
    assert np.std(paired_ratio) * 3 < np.std(independent_ratio)
    assert np.median(paired_ratio) == pytest.approx(2.0, rel=0.02)


def test_paired_rounds_need_equal_step_counts_and_two_rounds() -> None:
    assert RunSamples({"a": [1.0] * 10, "b": [1.0] * 10}, block=5).paired_rounds()
    assert not RunSamples({"a": [1.0] * 10, "b": [1.0] * 9}, block=5).paired_rounds()
    assert not RunSamples({"a": [1.0] * 4, "b": [1.0] * 4}, block=5).paired_rounds()
    assert not RunSamples({"a": [1.0] * 10}, block=None).paired_rounds()


@pytest.mark.parametrize("kwargs", [dict(time=0.0), dict(memory=1.0), dict(alpha=0.6)])
def test_invalid_thresholds_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Thresholds(**kwargs)
