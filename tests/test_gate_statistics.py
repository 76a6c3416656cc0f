"""The gate's detection and false-alarm rates, on recorded step times and on seeded synthetic ones.

No test here times anything: live rates are a benchmark (`dit-repro gate --self-test`, the README
table). ``tests/data/ab_smoke_cpu_*steps.json`` hold the per-step CPU times of real same-run A/B
benches of the CPU smoke matrix with identical code on both sides, 60 and 120 timed steps per side
(recorded with ``dit-repro gate --self-test --between-runs R --against HEAD --save-samples``; the
machine is named in each file).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dit_repro.bench.schema import write_results
from dit_repro.gate import EXIT_PASS, EXIT_REGRESSION, GateInputs, Thresholds, Verdict, run_gate
from dit_repro.gate.ab_selftest import ABRun, ab_rates, load_ab_runs
from dit_repro.gate.compare import RunSamples, compare_bootstrap
from dit_repro.gate.selftest import requirements_met, run_self_test
from tests.bench_documents import make_job, make_results

RECORDINGS = {steps: Path(__file__).resolve().parent / "data" / f"ab_smoke_cpu_{steps}steps.json" for steps in (60, 120)}


@pytest.fixture(scope="module", params=sorted(RECORDINGS), ids=lambda steps: f"{steps}steps")
def recorded(request: pytest.FixtureRequest) -> list[ABRun]:
    runs = load_ab_runs(RECORDINGS[request.param])
    data = json.loads(RECORDINGS[request.param].read_text())
    assert data["hardware_key"]["type"] == "cpu" and "against HEAD" in data["source"]
    assert len(runs) >= 3
    for run in runs:
        assert list(run.reference.rows) == list(run.candidate.rows) == [
            "original", "gcp-no-tf32", "gcp", "gcp+amp", "gcp+features", "gcp+amp+features"]
        assert run.candidate.block == 2 and all(len(v) == request.param for v in run.candidate.rows.values())
    return runs


def _ab_documents(tmp_path: Path, run: ABRun, scale: dict[str, float]) -> Path:
    """The recorded run as the two results files of an A/B, the candidate's rows scaled by ``scale``."""
    def side(samples: RunSamples, factors: dict[str, float]) -> dict:
        jobs = [make_job(name, times=list(np.asarray(times) * factors.get(name, 1.0)), device_type="cpu")
                for name, times in samples.rows.items()]
        document = make_results(jobs)
        document["scale"]["block_steps"] = samples.block
        document["scale"]["timed_steps"] = len(next(iter(samples.rows.values())))
        return document

    reference, candidate = side(run.reference, {}), side(run.candidate, scale)
    ab = {"run_id": "recorded", "against": "HEAD", "reference_commit": "0" * 40, "candidate": "recorded"}
    reference["ab"] = {**ab, "role": "reference", "paired_results": "results.json"}
    candidate["ab"] = {**ab, "role": "candidate", "paired_results": "results-reference.json"}
    write_results(tmp_path / "results-reference.json", reference)
    return write_results(tmp_path / "results.json", candidate)


def test_equal_code_passes_one_slower_row_fails_alone_and_a_uniform_slowdown_is_caught(
        recorded: list[ABRun], tmp_path: Path) -> None:
    run = recorded[0]
    same = run_gate(_ab_documents(tmp_path / "same", run, {}), None, GateInputs())
    print(same.markdown)
    assert same.exit_code == EXIT_PASS
    one = run_gate(_ab_documents(tmp_path / "one", run, {"gcp": 1.10}), None, GateInputs())
    print(one.markdown)
    assert one.exit_code == EXIT_REGRESSION
    assert {c.metric for c in one.comparisons if c.verdict is Verdict.REGRESSION} == {"gcp: step time"}
    # Every row 10 % slower: a stored-baseline CPU gate reads that as a slower machine; the A/B does not.
    every = {name: 1.10 for name in run.candidate.rows}
    uniform = run_gate(_ab_documents(tmp_path / "all", run, every), None, GateInputs())
    assert {c.metric for c in uniform.comparisons if c.verdict is Verdict.REGRESSION} == {
        f"{name}: step time" for name in run.candidate.rows}


def test_a_b_rates_on_the_recorded_runs_meet_the_requirement(recorded: list[ABRun]) -> None:
    estimates = {round(e.factor, 2): e for e in ab_rates(recorded, Thresholds(), resamples=1000)}
    for estimate in estimates.values():
        print(estimate.table_row())
    assert estimates[1.0].flagged == 0  # at most 1 %: none of these row-pairs
    assert estimates[1.1].rate >= 0.95
    assert estimates[1.0].rate <= estimates[1.03].rate <= estimates[1.05].rate <= estimates[1.1].rate


def test_the_step_time_self_test_on_recorded_samples_meets_the_requirement(recorded: list[ABRun]) -> None:
    # The within-process resampling self-test (`gate --self-test --samples`), fed a recorded row.
    samples = recorded[0].candidate.rows["gcp"]
    estimates = run_self_test(samples, Thresholds(), n=50, draws=500, seed=0)
    for estimate in estimates:
        print(estimate.table_row())
    assert requirements_met(estimates)


def _synthetic_ab(rng: np.random.Generator, factor: float, rounds: int = 30, block: int = 2,
                  drift: float = 0.10, noise: float = 0.02) -> ABRun:
    """One A/B run of one row: a machine drift shared by the two sides of each round, noise per step."""
    common = np.repeat(np.exp(rng.normal(0.0, drift, rounds)), block)
    base = 0.3 * common * np.exp(rng.normal(0.0, noise, rounds * block))
    cur = 0.3 * factor * common * np.exp(rng.normal(0.0, noise, rounds * block))
    return ABRun(RunSamples({"row": list(base)}, block), RunSamples({"row": list(cur)}, block))


def test_pairing_rounds_cancels_machine_drift_that_would_hide_a_slowdown() -> None:
    # A 10 % drift between rounds, shared by both sides (as on a shared machine), and 2 % step noise.
    rng = np.random.default_rng(0)
    same = [_synthetic_ab(rng, 1.00) for _ in range(200)]
    slower = [_synthetic_ab(rng, 1.10) for _ in range(200)]
    rates = {e.factor: e for e in ab_rates(same, Thresholds(), factors=(1.0, 1.1), resamples=500)}
    assert rates[1.0].rate <= 0.01 and rates[1.1].rate >= 0.95
    real = {e.factor: e for e in ab_rates(slower, Thresholds(), factors=(1.0,), resamples=500)}
    assert real[1.0].rate >= 0.95  # the slowdown built into the samples, not applied by the test
    # The same runs with the two sides resampled independently, as if timed at different times.
    unpaired_rng = np.random.default_rng(1)
    unpaired = sum(compare_bootstrap("row", "s", lambda b, c: c["row"] / b["row"], run.reference, run.candidate,
                                     (0.3, 0.33), 0.05, 0.01, False, 500, unpaired_rng).verdict is Verdict.REGRESSION
                   for run in slower) / len(slower)
    print(f"x1.10 caught: paired {real[1.0].rate:.1%}, unpaired {unpaired:.1%}")
    assert unpaired < 0.95 <= real[1.0].rate
