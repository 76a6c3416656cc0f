"""The gate's self-test machinery: its arguments, its refusals and the between-run rates.

Requirement: a 10 % slowdown flagged in >= 95 % of draws, equal code in <= 1 %. Whether the gate
meets it on live step times is a benchmark (`dit-repro gate --self-test`, the README's table),
never a test: a loaded machine would fail it. Tests of the rates on recorded and seeded samples
are in test_gate_statistics.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dit_repro.bench.reference import Reference, ReferenceUnusable
from dit_repro.gate.ab_selftest import require_identical_code
from dit_repro.gate.between_runs import between_run_rates, relative_changes, time_identical_rows
from dit_repro.gate.compare import RunSamples, Thresholds
from dit_repro.gate.selftest import requirements_met, run_self_test


def test_self_test_refuses_too_few_samples_and_needs_both_key_factors() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        run_self_test([0.1] * 5, Thresholds())
    estimates = run_self_test([0.1 + 0.001 * i for i in range(40)], Thresholds(), n=20, draws=5, factors=(1.0,))
    with pytest.raises(ValueError, match="1.00 and 1.10"):
        requirements_met(estimates)


def _synthetic_runs(offsets: list[dict[str, float]], steps: int = 60, seed: int = 0) -> list[RunSamples]:
    """Runs of six rows with 2 % lognormal step noise; ``offsets`` scale whole rows per run."""
    rng = np.random.default_rng(seed)
    return [RunSamples({f"m{row}": list(0.003 * offset.get(f"m{row}", 1.0) * rng.lognormal(0.0, 0.02, steps))
                        for row in range(6)}, block=2) for offset in offsets]


def test_between_run_rates_flag_a_ten_percent_row_and_spare_equal_code() -> None:
    runs = _synthetic_runs([{}, {}, {}])
    rates = {e.factor: e for e in between_run_rates(runs, Thresholds(), resamples=500)}
    assert rates[1.00].draws == 3 * 6  # three pairs of runs, six rows each
    assert rates[1.00].flagged == 0
    assert rates[1.10].flagged == rates[1.10].draws


def test_between_run_rates_see_a_row_that_moved_between_runs() -> None:
    # One run where row m3 ran 8 % slower with equal code: a false alarm that resampling the steps
    # of a single run can never produce, and the reason this self-test exists.
    runs = _synthetic_runs([{}, {"m3": 1.08}, {}])
    rates = {e.factor: e for e in between_run_rates(runs, Thresholds(), resamples=500)}
    assert rates[1.00].flagged == 1  # the pair (run 1, run 2) with m3 +8 %; (run 2, run 3) sees -8 %
    changes = relative_changes(runs)
    assert changes.size == 18 and np.isclose(np.abs(changes - 1.0).max(), 0.08, atol=0.02)


def test_between_run_self_test_refuses_too_few_runs_or_rows() -> None:
    with pytest.raises(ValueError, match=">= 2 runs"):
        time_identical_rows(1)
    with pytest.raises(ValueError, match=">= 3 rows"):
        time_identical_rows(3, rows=2)
    with pytest.raises(ValueError, match="same rows"):
        between_run_rates([RunSamples({"a": [1.0] * 4}, 2), RunSamples({"b": [1.0] * 4}, 2)], Thresholds())


def test_between_runs_below_two_is_a_usage_error_before_anything_is_timed() -> None:
    done = subprocess.run([sys.executable, "-m", "dit_repro.cli", "gate", "--self-test", "--between-runs", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--between-runs needs at least 2 runs" in done.stderr and "timing" not in done.stderr


def test_the_a_b_self_test_needs_runs_and_code_identical_to_ref(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "dit_repro.cli", "gate", "--self-test", "--against", "HEAD"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--between-runs R" in done.stderr, done.stderr
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["git", "-C", str(other), "init", "-q"], check=True)
    elsewhere = Reference("HEAD", "0" * 40, other, "HEAD")
    with pytest.raises(ReferenceUnusable, match="REF in the repository holding this code"):
        require_identical_code(elsewhere)
