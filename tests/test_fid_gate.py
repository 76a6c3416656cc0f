"""The FID gate's tolerance maths and its refusals (fast; the trained-model test is in test_fid_gate_digits.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dit_repro.fid.evaluate import FIDResult, NotComparableError
from dit_repro.fid_gate import (
    DEFAULT_FALSE_FAILURE_RATE,
    BaselineError,
    check_against_baseline,
    load_baseline,
    record_baseline,
    tolerance_multiplier,
)

N = 100
SETTINGS = {"sampler": "ddim", "steps": 20, "eta": 0.0, "cfg_scale": 1.0, "cfg_channels": "all"}


def result(
    value: float, seed: int, *, num: int = N, settings: dict | None = None, sha: str = "aa"
) -> FIDResult:
    sampling = {"settings": settings or dict(SETTINGS), "checkpoint": {"sha256": sha}, "seed": seed}
    return FIDResult(
        metric="proxy-FID",
        value=value,
        num_samples=num,
        seed=seed,
        extractor="dit-repro-proxy-rff64",
        reference="ref" * 8,
        reference_num_samples=500,
        samples=f"run{seed}",
        sampling=sampling,
    )


def baseline_runs(values: list[float]) -> list[FIDResult]:
    return [result(v, seed=i * N) for i, v in enumerate(values)]


def t_quantile_df2(p: float) -> float:
    """Student t quantile with 2 degrees of freedom in closed form: (2p - 1) / sqrt(2 p (1 - p))."""
    return (2 * p - 1) / math.sqrt(2 * p * (1 - p))


def test_multiplier_matches_closed_form_for_three_seeds() -> None:
    expected = t_quantile_df2(1 - 0.01) * math.sqrt(1 + 1 / 3)
    assert tolerance_multiplier(3, 1, 0.01) == pytest.approx(expected, rel=1e-12)
    two_new = t_quantile_df2(1 - 0.05) * math.sqrt(1 / 2 + 1 / 3)
    assert tolerance_multiplier(3, 2, 0.05) == pytest.approx(two_new, rel=1e-12)


def test_false_failure_rate_holds_in_simulation() -> None:
    """Baselines and new runs of one normal FID distribution fail at rate alpha.

    40000 trials at alpha = 0.05: the failure count is binomial with sd sqrt(0.05 * 0.95 / 40000)
    = 0.0011; 4 sd (0.0044) bounds the check's own false-failure rate at 6e-5 (fixed seed).
    """
    rng = np.random.default_rng(0)
    alpha, trials, m = 0.05, 40000, 3
    base = rng.normal(10.0, 0.5, size=(trials, m))
    new = rng.normal(10.0, 0.5, size=trials)
    threshold = base.mean(1) + tolerance_multiplier(m, 1, alpha) * base.std(1, ddof=1)
    rate = float(np.mean(new > threshold))
    print(f"simulated false-failure rate {rate:.4f} (alpha {alpha})")
    assert abs(rate - alpha) <= 4 * math.sqrt(alpha * (1 - alpha) / trials)


def test_record_and_check_pass_and_fail(tmp_path) -> None:
    path = tmp_path / "baseline.json"
    baseline = record_baseline(baseline_runs([10.0, 10.4, 9.8]), path)
    assert load_baseline(path) == json.loads(path.read_text())
    values = [10.0, 10.4, 9.8]
    mean, std = np.mean(values), np.std(values, ddof=1)
    threshold = mean + tolerance_multiplier(3, 1, DEFAULT_FALSE_FAILURE_RATE) * std
    assert baseline["summary"]["threshold_one_run"] == pytest.approx(threshold, rel=1e-12)

    inside = check_against_baseline([result(threshold - 1e-6, seed=1000)], baseline)
    assert inside.passed and inside.threshold == pytest.approx(threshold, rel=1e-12)
    outside = check_against_baseline([result(threshold + 1e-6, seed=1000)], baseline)
    assert not outside.passed
    assert "proxy-FID gate FAIL" in outside.summary()
    better = check_against_baseline([result(mean - 10 * std, seed=1000)], baseline)
    assert better.passed and any("better than the baseline" in note for note in better.notes)
    other_checkpoint = check_against_baseline([result(mean, seed=1000, sha="bb")], baseline)
    assert any("differs from the baseline" in note for note in other_checkpoint.notes)


def test_precision_and_attention_may_differ_but_sampler_may_not(tmp_path) -> None:
    baseline = record_baseline(baseline_runs([10.0, 10.4, 9.8]), tmp_path / "b.json")
    switched = dict(SETTINGS, precision="bf16", attention="sdpa")
    assert check_against_baseline([result(10.0, seed=1000, settings=switched)], baseline).passed
    with pytest.raises(NotComparableError, match="steps"):
        check_against_baseline([result(10.0, seed=1000, settings=dict(SETTINGS, steps=50))], baseline)


def test_unequal_sample_counts_are_refused(tmp_path) -> None:
    baseline = record_baseline(baseline_runs([10.0, 10.4, 9.8]), tmp_path / "b.json")
    with pytest.raises(NotComparableError, match="sample counts differ"):
        check_against_baseline([result(10.0, seed=1000, num=2 * N)], baseline)
    with pytest.raises(BaselineError, match="share their measurement conditions"):
        record_baseline(
            [result(10.0, 0), result(10.1, 1000, num=2 * N), result(9.9, 5000)], tmp_path / "c.json"
        )


def test_too_few_or_overlapping_seeds_are_refused(tmp_path) -> None:
    with pytest.raises(BaselineError, match="at least 3 seeds"):
        record_baseline(baseline_runs([10.0, 10.4]), tmp_path / "b.json")
    with pytest.raises(BaselineError, match="share image seeds"):
        record_baseline([result(10.0, 0), result(10.1, 1), result(9.9, 2 * N)], tmp_path / "b.json")
    baseline = record_baseline(baseline_runs([10.0, 10.4, 9.8]), tmp_path / "b.json")
    with pytest.raises(BaselineError, match="share image seeds"):
        check_against_baseline([result(10.0, seed=N // 2)], baseline)


def test_files_that_are_not_baselines_are_refused(tmp_path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(BaselineError, match="not a FID baseline"):
        load_baseline(tmp_path / "x.json")


def test_a_damaged_baseline_is_refused_naming_the_file_and_the_field(tmp_path) -> None:
    path = tmp_path / "baseline.json"
    good = record_baseline(baseline_runs([10.0, 10.5, 9.5]), path)
    for change, words in (
        (lambda b: b["runs"][1].pop("value"), "runs[1].value must be a finite number, got None"),
        (lambda b: b["runs"][0].update(seed=-3), "runs[0].seed must be an integer >= 0, got -3"),
        (lambda b: b.update(num_samples="100"), "num_samples must be an integer >= 1, got '100'"),
        (lambda b: b.update(false_failure_rate=0.9), "false_failure_rate must be in (0, 0.5), got 0.9"),
        (lambda b: b.update(runs={"a": 1}), "the baseline holds 0 runs"),
        (lambda b: b.update(sampling=[1]), "sampling must be null or a JSON object, got [1]"),
    ):
        damaged = json.loads(json.dumps(good))
        change(damaged)
        path.write_text(json.dumps(damaged))
        with pytest.raises(BaselineError) as error:
            load_baseline(path)
        assert str(error.value).startswith(f"--baseline {path}: ") and words in str(error.value), str(error.value)


def test_baseline_files_that_are_not_json_or_hold_nan_are_refused_in_words(tmp_path) -> None:
    path = tmp_path / "baseline.json"
    good = record_baseline(baseline_runs([10.0, 10.5, 9.5]), path)
    path.write_text(json.dumps(good).replace('"value": 10.5', '"value": NaN'))
    with pytest.raises(BaselineError, match="is not valid JSON .*NaN is not a JSON number"):
        load_baseline(path)
    path.write_text("[")
    with pytest.raises(BaselineError, match="is not valid JSON"):
        load_baseline(path)
    with pytest.raises(BaselineError, match="does not exist; record one with dit-repro fid --record"):
        load_baseline(tmp_path / "absent.json")
    path.write_text("[1, 2]")
    with pytest.raises(BaselineError, match=r"not a FID baseline \(found \[1, 2\]"):
        load_baseline(path)
