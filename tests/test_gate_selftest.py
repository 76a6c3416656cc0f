"""The gate's self-test on real step-time noise of this machine.

Requirement: a 10 % slowdown flagged in >= 95 % of draws, equal code in <= 1 %. The draws are
seeded; the samples are real, so the rates move a little between machines and runs.
"""

from __future__ import annotations

import pytest

from dit_repro.gate.compare import Thresholds
from dit_repro.gate.selftest import measure_matmul_samples, requirements_met, run_self_test, self_test_report


@pytest.mark.slow
def test_gate_catches_a_ten_percent_slowdown_and_rarely_cries_wolf() -> None:
    samples = measure_matmul_samples(count=400)
    thresholds = Thresholds()
    estimates = run_self_test(samples, thresholds, n=50, draws=500, factors=(1.00, 1.03, 1.10), seed=0)
    report = self_test_report(samples, estimates, 50, thresholds, "a matmul step timed by this test")
    print(report)
    rates = {round(e.factor, 2): e.rate for e in estimates}
    assert rates[1.10] >= 0.95, report
    assert rates[1.00] <= 0.01, report
    # Below the threshold a change is never a regression more often than one beyond it.
    assert rates[1.03] <= rates[1.10]
    assert requirements_met(estimates)


def test_self_test_refuses_too_few_samples_and_needs_both_key_factors() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        run_self_test([0.1] * 5, Thresholds())
    estimates = run_self_test([0.1 + 0.001 * i for i in range(40)], Thresholds(), n=20, draws=5, factors=(1.0,))
    with pytest.raises(ValueError, match="1.00 and 1.10"):
        requirements_met(estimates)
