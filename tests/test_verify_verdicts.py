"""Verdict rules on synthetic measurements: every verdict is reachable, and the precedence holds."""

from __future__ import annotations

import pytest

from dit_repro.paper import parse_printed
from dit_repro.verify.claims import Comparison, Tolerance, load_claims
from dit_repro.verify.consistency import ConsistencyResult
from dit_repro.verify.runner import verify_claim
from dit_repro.verify.verdicts import (
    Judgement,
    Measurement,
    NotCheckable,
    PaperCheck,
    PaperFigure,
    Verdict,
    final_verdict,
    judge_measurement,
)

SPEED = Tolerance("speed", "test", 0.10, "test", "")
PRINTED = Tolerance("printed", "test", None, "test", "")
EXACT = Tolerance("exact", "test", 0.0, "test", "")


def change(direction: str = "increase", size: str | None = "21%") -> Comparison:
    return Comparison("change", "steps_per_s", "table4/gcp", "table4/gcp+amp", "a100x1", direction,
                      None if size is None else parse_printed(size), "speed")


def figure(value, half: float = 0.0) -> PaperFigure:
    return PaperFigure(value, half, "test")


def measured(value) -> Measurement:
    return Measurement(value, "test", "test")


@pytest.mark.parametrize(
    "m, verdict",
    [(0.25, Verdict.REPRODUCED), (0.11, Verdict.REPRODUCED), (0.31, Verdict.REPRODUCED),
     (0.40, Verdict.DIRECTION_ONLY), (0.05, Verdict.DIRECTION_ONLY), (0.0, Verdict.NOT_REPRODUCED),
     (-0.05, Verdict.NOT_REPRODUCED)],
)
def test_change_verdicts_follow_direction_and_size(m: float, verdict: Verdict) -> None:
    judged = judge_measurement(change(), figure(0.21), measured(m), SPEED)
    assert judged.verdict is verdict, judged.reason


def test_a_paper_change_within_the_tolerance_has_no_direction_to_reproduce() -> None:
    small = figure(0.08)
    assert judge_measurement(change(), small, measured(-0.01), SPEED).verdict is Verdict.REPRODUCED
    assert judge_measurement(change(), small, measured(0.25), SPEED).verdict is Verdict.NOT_REPRODUCED


def test_a_no_change_claim_is_reproduced_only_near_zero() -> None:
    claim = change("none", "0%")
    assert judge_measurement(claim, figure(0.0), measured(0.04), SPEED).verdict is Verdict.REPRODUCED
    assert judge_measurement(claim, figure(0.0), measured(0.30), SPEED).verdict is Verdict.NOT_REPRODUCED


def test_a_change_without_a_figure_is_judged_by_its_direction() -> None:
    claim = change("increase", None)
    assert judge_measurement(claim, figure(None), measured(0.33), EXACT).verdict is Verdict.REPRODUCED
    assert judge_measurement(claim, figure(None), measured(-0.01), EXACT).verdict is Verdict.NOT_REPRODUCED


def test_value_verdicts_use_relative_or_printed_tolerances() -> None:
    speed = Comparison("value", "steps_per_s", None, "table4/gcp", "a100x1", "equal", None, "speed")
    assert judge_measurement(speed, figure(0.43), measured(0.47), SPEED).verdict is Verdict.REPRODUCED  # 9.3% off
    assert judge_measurement(speed, figure(0.43), measured(0.48), SPEED).verdict is Verdict.NOT_REPRODUCED  # 11.6%
    params = Comparison("value", "params", None, "table2/x", None, "equal", None, "printed")
    assert judge_measurement(params, figure(675e6, 0.5e6), measured(675_129_632.0), PRINTED).verdict is Verdict.REPRODUCED
    assert judge_measurement(params, figure(625e6, 0.5e6), measured(458_102_816.0), PRINTED).verdict is Verdict.NOT_REPRODUCED


def test_bounds_at_most_and_at_least() -> None:
    at_most = Comparison("bound", "steps_per_s", "math", "flash", None, "at_most", parse_printed("1%"), "speed")
    assert judge_measurement(at_most, figure(0.01), measured(0.10), SPEED).verdict is Verdict.REPRODUCED
    assert judge_measurement(at_most, figure(0.01), measured(0.12), SPEED).verdict is Verdict.NOT_REPRODUCED
    at_least = Comparison("bound", "forward_macs", "a", "b", None, "at_least", parse_printed("0%"), "exact")
    assert judge_measurement(at_least, figure(0.0), measured(0.12), EXACT).verdict is Verdict.REPRODUCED
    assert judge_measurement(at_least, figure(0.0), measured(-0.01), EXACT).verdict is Verdict.NOT_REPRODUCED


def test_yes_no_outcomes() -> None:
    oom = Comparison("holds", "oom", None, "table2/x", None, "true", None, "memory")
    assert judge_measurement(oom, figure(True), measured(True), SPEED).verdict is Verdict.REPRODUCED
    assert judge_measurement(oom, figure(True), measured(False), SPEED).verdict is Verdict.NOT_REPRODUCED


def test_not_checkable_keeps_its_reason() -> None:
    judged = judge_measurement(change(), figure(0.21), NotCheckable("two GPUs needed"), SPEED)
    assert judged == Judgement(Verdict.NOT_CHECKABLE, "two GPUs needed")


def test_a_non_number_for_a_numeric_comparison_is_an_error() -> None:
    with pytest.raises(ValueError, match="finite number"):
        judge_measurement(change(), figure(0.21), measured(float("nan")), SPEED)


@pytest.mark.parametrize("measured_verdict", [Verdict.REPRODUCED, Verdict.DIRECTION_ONLY, Verdict.NOT_REPRODUCED,
                                              Verdict.NOT_CHECKABLE])
def test_paper_inconsistency_takes_precedence(measured_verdict: Verdict) -> None:
    judged = Judgement(measured_verdict, "x")
    assert final_verdict(PaperCheck.INCONSISTENT, judged) is Verdict.INCONSISTENT
    assert final_verdict(PaperCheck.CONSISTENT, judged) is measured_verdict
    assert final_verdict(PaperCheck.NOT_APPLICABLE, judged) is measured_verdict


class StubEvidence:
    """Returns a fixed measurement for every claim."""

    def __init__(self, result) -> None:
        self.result = result

    def measure(self, claim):
        return self.result


@pytest.mark.parametrize(
    "claim_id, result, verdict",
    [
        ("amp-speed-a100x1", Measurement(0.20, "+20%", "test GPU"), Verdict.REPRODUCED),
        ("amp-speed-a100x1", Measurement(0.60, "+60%", "test GPU"), Verdict.DIRECTION_ONLY),
        ("amp-speed-a100x1", Measurement(-0.20, "-20%", "test GPU"), Verdict.NOT_REPRODUCED),
        ("amp-speed-a100x1", NotCheckable("no GPU"), Verdict.NOT_CHECKABLE),
        ("headline-speed-95", Measurement(0.95, "+95%", "test GPU"), Verdict.INCONSISTENT),
    ],
)
def test_all_five_verdicts_are_reached_on_real_claims(claim_id: str, result, verdict: Verdict) -> None:
    claims = load_claims()
    outcome = verify_claim(claims.by_id(claim_id), claims, StubEvidence(result))
    assert outcome.verdict is verdict, outcome.judgement.reason
    assert isinstance(outcome.consistency, ConsistencyResult)
    if verdict is Verdict.INCONSISTENT:  # the measured verdict is still kept beside it
        assert outcome.judgement.verdict is Verdict.REPRODUCED


def test_a_measured_lower_bound_is_consistent_unless_it_excludes_the_figure() -> None:
    value = Comparison("value", "memory_mib", None, "table2/dit-xl2-a100x2-b128", None, "equal", None, "memory")
    memory = Tolerance("memory", "test", 0.05, "test", "")
    paper = figure(66259.0)
    below = Measurement(30000.0, ">= 30,000 MiB", "memory model", bound="lower")
    judged = judge_measurement(value, paper, below, memory)
    # Far below the figure: as a value it would be 'not reproduced'; as a lower bound it does not contradict.
    assert judged.verdict is Verdict.CONSISTENT_WITH_BOUND, judged.reason
    assert judge_measurement(value, paper, measured(30000.0), memory).verdict is Verdict.NOT_REPRODUCED
    above = Measurement(66259.0 * 1.06, ">= ...", "memory model", bound="lower")
    assert judge_measurement(value, paper, above, memory).verdict is Verdict.NOT_REPRODUCED
    upper = Measurement(60000.0, "<= 60,000 MiB", "test", bound="upper")
    assert judge_measurement(value, paper, upper, memory).verdict is Verdict.NOT_REPRODUCED  # excludes 66,259


def test_a_tolerance_measured_per_setting_applies_to_that_settings_claims() -> None:
    memory = Tolerance("memory", "test", 0.18, "test", "", {"a100x1": 0.18, "a100x2": 0.044})
    assert memory.for_setting("a100x2") == 0.044 and memory.for_setting("a100x1") == 0.18
    assert memory.for_setting(None) == 0.18 and memory.for_setting("h100x8") == 0.18
