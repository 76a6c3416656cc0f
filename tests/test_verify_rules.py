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
from dit_repro.verify.rules import averages_vs_cells, parameter_counts, percentages_vs_pairs, run_rules

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
    found = {(f.rule, f.rows[0]) for f in run_rules(CLAIMS.claims, CLAIMS.paper, param_count)}
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
