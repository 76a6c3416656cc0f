"""The general consistency rules, each on synthetic tables (a copy of the paper's data with one number
changed), and on the paper itself."""

from __future__ import annotations

import copy
import json
from importlib import resources

import pytest

from dit_repro.paper import PaperData
from dit_repro.verify.claims import load_claims
from dit_repro.verify.machine import param_count
from dit_repro.verify.rules import (
    averages_vs_cells,
    change_tolerance,
    parameter_counts,
    percentages_vs_pairs,
    run_rules,
    switch_across_settings,
)

RAW = json.loads(resources.files("dit_repro.paper").joinpath("paper.json").read_text(encoding="utf-8"))
CLAIMS = load_claims()


def edited(edit) -> PaperData:
    data = copy.deepcopy(RAW)
    edit(data["tables"])
    return PaperData(data)


def row(tables: dict, table: str, row_id: str) -> dict:
    return next(r for r in tables[table]["rows"] if r["id"] == row_id)


def test_averages_vs_cells_finds_exactly_a_row_whose_average_its_cells_contradict() -> None:
    def fix_exp1_break_exp3(tables: dict) -> None:
        row(tables, "table1", "exp1")["average"] = "0.716"  # the mean of its cells
        row(tables, "table1", "exp3")["average"] = "0.650"  # its cells average 0.618
    findings = averages_vs_cells(edited(fix_exp1_break_exp3))
    assert [f.rows for f in findings] == [("table1/exp3",)]
    assert "printed average 0.650, mean of its cells 0.6180" in findings[0].message


def test_parameter_counts_find_a_printed_count_the_architecture_does_not_round_to() -> None:
    def break_xl(tables: dict) -> None:
        for entry in tables["table2"]["rows"]:
            if entry["model"] == "DiT-XL/2":
                entry["params"] = "700M"
            if entry["model"] == "DiT-L/2":
                entry["params"] = "458M"  # what the architecture has
            if entry["model"] == "DiT-B/2":
                entry["params"] = "131M"
    findings = parameter_counts(edited(break_xl), param_count)
    assert len(findings) == 1 and "DiT-XL/2: the table prints 700M, the architecture has 675.1M" in findings[0].message


def test_percentages_vs_pairs_name_the_pairs_and_the_captions_baseline() -> None:
    memory_59 = [CLAIMS.by_id("headline-memory-59")]
    findings = percentages_vs_pairs(memory_59, CLAIMS.paper)
    assert len(findings) == 1
    assert findings[0].rows == ("table4/original -> table4/gcp+features (a100x2)",
                                "table4/original -> table4/gcp+amp+features (a100x2)")
    assert "none starts from the caption's baseline Gradient Checkpointing (GCP)" in findings[0].message

    def gcp_gives_59(tables: dict) -> None:  # GCP's two-A100 memory such that GCP -> GCP+AMP+Feature is -59%
        row(tables, "table4", "gcp")["a100x2"]["memory_mib"] = "66320"
    assert percentages_vs_pairs(memory_59, edited(gcp_gives_59)) == []

    def nothing_gives_59(tables: dict) -> None:
        row(tables, "table4", "original")["a100x2"]["memory_mib"] = "50000"
    lost = percentages_vs_pairs(memory_59, edited(nothing_gives_59))
    assert [f.message for f in lost] == ["headline-memory-59: no Table 4 pair gives -59%"]


def test_on_the_paper_the_rules_find_its_known_inconsistencies() -> None:
    found = {(f.rule, f.rows[0]) for f in run_rules(CLAIMS.claims, CLAIMS.paper, param_count, change_tolerance(CLAIMS.tolerances))}
    assert ("averages vs cells", "table1/exp1") in found
    assert {r for rule, r in found if rule == "parameter counts vs architectures"} == {
        "table2/dit-l2-a100x1-b128", "table2/dit-b2-a100x1-b128"}
    assert ("percentages vs row pairs", "table4/original") in found  # gcp-memory-55: no pair gives -55%


@pytest.mark.parametrize("rule", [averages_vs_cells, lambda p: parameter_counts(p, param_count)])
def test_a_consistent_table_gives_no_findings(rule) -> None:
    def make_consistent(tables: dict) -> None:
        row(tables, "table1", "exp1")["average"] = "0.716"
        for entry in tables["table2"]["rows"]:
            entry["params"] = {"DiT-L/2": "458M", "DiT-B/2": "131M"}.get(entry["model"], entry["params"])
    assert rule(edited(make_consistent)) == []


def test_one_switch_on_two_settings_finds_opposite_and_far_apart_effects() -> None:
    flat = lambda metric, setting: 0.03  # noqa: E731 - a tolerance of 3% everywhere
    found = {f.message for f in switch_across_settings(CLAIMS.paper, flat)}
    # AMP's memory: -8.1% on one A100, +1.0% on two.
    assert any(m.startswith("Gradient Checkpointing (GCP) -> GCP + AMP (precision only), memory_mib: -8.1% on A100, "
                            "+1.0% on Two A100s: opposite directions") for m in found)

    def same_everywhere(tables: dict) -> None:  # two A100s measured exactly like one
        for entry in tables["table4"]["rows"]:
            entry["a100x2"] = dict(entry["a100x1"])
            if entry["a100x2"]["memory_mib"] == "OOM":
                entry["a100x2"] = {"steps_per_s": None, "memory_mib": "OOM"}
    assert switch_across_settings(edited(same_everywhere), flat) == []


def test_the_settings_rule_uses_the_sum_of_both_settings_tolerances() -> None:
    tolerance = change_tolerance(CLAIMS.tolerances)
    assert tolerance("memory_mib", "a100x1") == pytest.approx(51991 / 44045 - 1)
    assert tolerance("steps_per_s", "a100x2") == pytest.approx(CLAIMS.tolerances["speed"].value)
    messages = [f.message for f in switch_across_settings(CLAIMS.paper, tolerance)]
    print("\n".join(messages))
    # GCP -> GCP + Feature memory: -33.7% and -12.6%, 21.1 points apart, within 18.0% + 4.4%.
    assert not any("GCP + Feature (features only), memory_mib" in m and m.startswith("Gradient") for m in messages)
