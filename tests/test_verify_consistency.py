"""The paper against itself: the known inconsistencies are found, the consistent figures pass."""

from __future__ import annotations

import copy
import dataclasses

import pytest

from dit_repro.paper import PaperData, load_paper, parse_printed
from dit_repro.verify.claims import load_claims
from dit_repro.verify.consistency import check_consistency
from dit_repro.verify.figures import change_interval, table1_stats
from dit_repro.verify.machine import param_count
from dit_repro.verify.verdicts import PaperCheck


@pytest.fixture(scope="module")
def claims():
    return load_claims()


def check(claims, claim_id: str):
    return check_consistency(claims.by_id(claim_id), claims, param_count)


def test_experiment_1_s_printed_average_is_not_the_mean_of_its_row(claims) -> None:
    result = check(claims, "t1-exp1-average")
    assert result.check is PaperCheck.INCONSISTENT
    assert "0.7160" in result.detail and "0.746" in result.detail
    for row in ("exp2", "exp3", "exp4"):
        assert check(claims, f"t1-{row}-average").check is PaperCheck.CONSISTENT


def test_table1_means_are_those_of_the_printed_entries(claims) -> None:
    means = {s.row: s.mean for s in table1_stats(claims.paper)}
    assert means == pytest.approx({"exp1": 0.716, "exp2": 0.640, "exp3": 0.618, "exp4": 0.605})


def test_dit_l2_and_b2_parameter_counts_contradict_the_paper_s_own_xl2_count(claims) -> None:
    for claim_id, printed in (("t2-params-ditl2", "625M"), ("t2-params-ditb2", "272M")):
        result = check(claims, claim_id)
        assert result.check is PaperCheck.INCONSISTENT and printed in result.detail
    assert check(claims, "t2-params-uvitl2").check is PaperCheck.CONSISTENT
    assert "implies 457.7M-458.4M" in check(claims, "t2-params-ditl2").detail


def test_the_95_percent_comes_from_gcp_on_one_a100_not_from_the_original(claims) -> None:
    result = check(claims, "headline-speed-95")
    assert result.check is PaperCheck.INCONSISTENT
    assert "0.77 -> 1.33 = +72.7%" in result.detail  # the original, on two A100s
    assert "Gradient Checkpointing (GCP) -> GCP + AMP + Feature on a100x1 (+95.3%)" in result.detail
    assert "Original is OOM" in result.detail


def test_the_59_percent_is_the_original_against_all_three_on_two_a100s(claims) -> None:
    result = check(claims, "headline-memory-59")
    assert result.check is PaperCheck.CONSISTENT
    assert "Original -> GCP + AMP + Feature on a100x2 (-59.0%)" in result.detail
    assert "a100x1" not in result.detail.split("Table 4 pairs")[1]  # nothing on one A100 gives 59%


def test_55_percent_from_checkpointing_is_not_table_4_s_53_5(claims) -> None:
    result = check(claims, "gcp-memory-55")
    assert result.check is PaperCheck.INCONSISTENT
    assert "66259 -> 30801 = -53.5%" in result.detail and "giving -55%: none" in result.detail


@pytest.mark.parametrize("claim_id", ["amp-speed-a100x1", "amp-speed-a100x2", "features-speed-a100x1",
                                      "features-speed-a100x2", "features-amp-speed-a100x2"])
def test_the_amp_and_feature_figures_follow_from_table_4(claims, claim_id: str) -> None:
    assert check(claims, claim_id).check is PaperCheck.CONSISTENT


def test_a_text_figure_outside_the_cells_rounding_is_inconsistent(claims) -> None:
    claim = claims.by_id("amp-speed-a100x1")
    wrong = dataclasses.replace(claim, comparison=dataclasses.replace(claim.comparison, size=parse_printed("25%")),
                                figure="+25%")
    assert check_consistency(wrong, claims, param_count).check is PaperCheck.INCONSISTENT


def test_doubling_the_gpus_gives_35_percent_in_table_2_never_135(claims) -> None:
    assert check(claims, "t2-doubling-min").check is PaperCheck.CONSISTENT
    result = check(claims, "t2-doubling-max")
    assert result.check is PaperCheck.INCONSISTENT and "0.77 -> 1.05 (+36.4%)" in result.detail


def test_u_vit_beats_dit_in_every_comparable_table_2_pair(claims) -> None:
    assert check(claims, "t2-uvit-faster").check is PaperCheck.CONSISTENT
    assert check(claims, "t2-uvit-less-memory").check is PaperCheck.CONSISTENT


def test_structural_u_vit_rows_are_not_all_minimal_against_the_papers_own_spread(claims) -> None:
    # 'out blocks with nn.linear' is +5.6%, beyond the 3.1% run-to-run spread of Table 1's consistent runs.
    result = check(claims, "t3-minimal")
    assert result.check is PaperCheck.INCONSISTENT and "out blocks with nn.linear +5.6%" in result.detail


def test_0_62_is_approximately_table_1(claims) -> None:
    # Experiment 1 (printed average 0.746, its cells' mean 0.716) is left out, as everywhere: 18.63 / 30.
    result = check(claims, "t1-grand-mean")
    print(result.detail)
    assert result.check is PaperCheck.CONSISTENT and "consistent runs 0.621" in result.detail
    assert "exp1 left out" in result.detail and "all 40 epoch rates 0.645 (+4.0%)" in result.detail


def test_memory_figures_fit_their_gpu(claims) -> None:
    for claim in claims.claims:
        if claim.consistency.kind == "row_within_capacity":
            assert check(claims, claim.id).check is PaperCheck.CONSISTENT, claim.id


def test_an_average_edited_to_the_row_mean_becomes_consistent() -> None:
    data = copy.deepcopy(load_paper().raw)
    data["tables"]["table1"]["rows"][0]["average"] = "0.716"
    claims = load_claims(paper=PaperData(data))
    assert check(claims, "t1-exp1-average").check is PaperCheck.CONSISTENT


def test_change_intervals_widen_with_the_printed_rounding() -> None:
    interval = change_interval(parse_printed("0.43"), parse_printed("0.52"))
    assert interval.value == pytest.approx(0.52 / 0.43 - 1)
    assert interval.low == pytest.approx(0.515 / 0.435 - 1) and interval.high == pytest.approx(0.525 / 0.425 - 1)


def test_the_59_percent_headline_is_flagged_with_the_rows_it_used(claims) -> None:
    result = check(claims, "headline-memory-59")
    assert result.check is PaperCheck.CONSISTENT
    assert result.flags == ("-59% is Original -> GCP + AMP + Feature on Two A100s, not against the caption's baseline "
                            "Gradient Checkpointing (GCP), which gives -37.6% on A100, -11.7% on Two A100s",)
    # A figure computed against the caption's own baseline is not flagged.
    assert not any(check(claims, c.id).flags for c in claims.claims
                   if c.comparison.baseline == "table4/gcp" and c.consistency.kind == "headline_search")
