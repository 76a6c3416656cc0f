"""Every verdict can fail: for each claim there is a measurement the verdict calls not reproduced.

A claim of an effect must also be told apart from no effect: a measured 0 % must not reproduce a
claimed increase or decrease. Where the paper's own spread is wider than the effect, no
measurement can do that, and the claim must say so (``resolution``); a claim that says so must
really be in that case, so that the note cannot go stale.
"""

from __future__ import annotations

import pytest

from dit_repro.verify.claims import Claim, load_claims
from dit_repro.verify.figures import paper_figure
from dit_repro.verify.verdicts import Measurement, Verdict, judge_measurement, tolerance_for

CLAIMS = load_claims()


def judge(claim: Claim, value: float | bool) -> Verdict:
    comparison = claim.comparison
    figure = paper_figure(claim, CLAIMS.paper)
    tolerance = CLAIMS.tolerances[comparison.tolerance]
    return judge_measurement(comparison, figure, Measurement(value, str(value), "synthetic"), tolerance).verdict


def candidates(claim: Claim) -> list[float | bool]:
    """Measurements spanning both sides of the claim's figure, well beyond its tolerance."""
    comparison = claim.comparison
    if comparison.kind == "holds":
        return [True, False]
    figure = paper_figure(claim, CLAIMS.paper)
    p = figure.value if isinstance(figure.value, float) else 0.0
    t = tolerance_for(comparison, CLAIMS.tolerances[comparison.tolerance], figure)
    reach = 3 * t + abs(p) + 1.0
    return [p - reach, -p, 0.0, p + reach]


@pytest.mark.parametrize("claim", CLAIMS.claims, ids=[c.id for c in CLAIMS.claims])
def test_some_measurement_is_not_reproduced(claim: Claim) -> None:
    verdicts = {value: judge(claim, value) for value in candidates(claim)}
    assert Verdict.NOT_REPRODUCED in verdicts.values(), verdicts


def _claims_an_effect(claim: Claim) -> bool:
    comparison = claim.comparison
    if comparison.kind != "change" or comparison.direction == "none":
        return False
    return isinstance(paper_figure(claim, CLAIMS.paper).value, float)


EFFECTS = [c for c in CLAIMS.claims if _claims_an_effect(c)]


@pytest.mark.parametrize("claim", EFFECTS, ids=[c.id for c in EFFECTS])
def test_no_effect_does_not_reproduce_a_claimed_effect_unless_the_claim_says_why(claim: Claim) -> None:
    no_effect = judge(claim, 0.0)
    if claim.resolution is None:
        assert no_effect is Verdict.NOT_REPRODUCED, (
            f"{claim.id}: a measured 0% is '{no_effect.value}'; narrow the tolerance or give the claim a resolution")
    else:
        assert no_effect is not Verdict.NOT_REPRODUCED, f"{claim.id}: its resolution note no longer applies"
    assert judge(claim, -paper_figure(claim, CLAIMS.paper).value) is not Verdict.REPRODUCED or claim.resolution


def test_the_issue_examples_are_now_decided() -> None:
    # AMP's +10% on two A100s: a slowdown or no change must not count as reproduced.
    amp = [c for c in EFFECTS if c.comparison.treated == "table4/gcp+amp" and c.comparison.setting == "a100x2"
           and c.comparison.metric == "steps_per_s"]
    assert amp, "the AMP-on-two-A100s speed claim"
    for claim in amp:
        assert judge(claim, -0.01) is Verdict.NOT_REPRODUCED and judge(claim, 0.0) is Verdict.NOT_REPRODUCED


def test_resolution_notes_are_only_on_effect_claims() -> None:
    noted = {c.id for c in CLAIMS.claims if c.resolution}
    assert noted <= {c.id for c in EFFECTS}
