"""Step-time summaries and the steady-state rule that ends the warm-up."""

from __future__ import annotations

import numpy as np
import pytest

from dit_repro.bench.stats import WarmupPolicy, summarize


def test_summary_matches_numpy_percentiles() -> None:
    times = [0.5, 0.1, 0.4, 0.2, 0.3]
    summary = summarize(times)
    assert summary.n == 5
    assert summary.median_s == 0.3
    assert summary.q1_s == float(np.percentile(times, 25))
    assert summary.q3_s == float(np.percentile(times, 75))
    assert summary.iqr_s == summary.q3_s - summary.q1_s
    assert (summary.min_s, summary.max_s) == (0.1, 0.5)


@pytest.mark.parametrize("bad", [[], [0.1, float("nan")], [0.1, -0.2]])
def test_summary_refuses_empty_or_invalid_samples(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        summarize(bad)


def test_steady_state_is_detected_after_a_decaying_transient() -> None:
    # Compile-like transient: the first steps are slow, then the time settles at 1.0 s.
    policy = WarmupPolicy(window=5, rel_tol=0.05, min_steps=10, max_steps=100)
    times: list[float] = []
    step = 0
    while not policy.is_done(times):
        times.append(1.0 + 20.0 * 0.5**step)
        step += 1
    assert policy.is_steady(times)
    # The two last windows agree within 5 %; one window earlier they did not yet.
    assert not policy.is_steady(times[:-1])
    assert len(times) < policy.max_steps


def test_warmup_never_stops_before_min_steps_even_if_flat() -> None:
    policy = WarmupPolicy(window=2, rel_tol=0.05, min_steps=8, max_steps=50)
    assert not policy.is_steady([1.0] * 7)
    assert policy.is_steady([1.0] * 8)


def test_warmup_gives_up_at_max_steps_and_reports_not_steady() -> None:
    policy = WarmupPolicy(window=3, rel_tol=0.01, min_steps=6, max_steps=12)
    drifting = [1.0 + 0.1 * i for i in range(12)]  # never steady: +10 % per step
    assert policy.is_done(drifting)
    assert not policy.is_steady(drifting)
    assert not policy.is_done(drifting[:11])


@pytest.mark.parametrize(
    "kwargs",
    [dict(window=0), dict(rel_tol=0.0), dict(rel_tol=1.5), dict(window=5, min_steps=10, max_steps=9)],
)
def test_invalid_policies_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        WarmupPolicy(**kwargs)
