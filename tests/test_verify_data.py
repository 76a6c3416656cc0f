"""The claims and the paper's tables as data: they load, validate, cover every row, and refuse bad entries."""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path

import pytest

from dit_repro.paper import CellRef, PaperData, PaperDataError, load_paper, paper_schema, parse_printed
from dit_repro.verify.claims import (
    CONSISTENCY_KINDS,
    DIRECTIONS,
    MEASURE_KINDS,
    ClaimsError,
    load_claims,
    parse_claims,
    uncovered_rows,
)
from dit_repro.verify.coverage import load_text_coverage, normalise
from dit_repro.verify.figures import paper_figure
from dit_repro.verify.machine import ARCHITECTURE_QUANTITIES
from dit_repro.verify.measure import Evidence

REPO = Path(__file__).resolve().parent.parent


def shipped_claims() -> dict:
    return json.loads(resources.files("dit_repro.verify").joinpath("claims.json").read_text(encoding="utf-8"))


def test_shipped_claims_load_and_every_entry_has_every_field() -> None:
    claims = load_claims()
    assert len(claims.claims) >= 100
    for claim in claims.claims:
        assert claim.text and claim.source, claim.id
        c = claim.comparison
        assert c.kind in DIRECTIONS and c.direction in DIRECTIONS[c.kind], claim.id
        assert c.metric and c.tolerance in claims.tolerances, claim.id
        assert claim.consistency.kind in CONSISTENCY_KINDS and claim.measure.kind in MEASURE_KINDS, claim.id
        # The paper's figure is the text's own (size), read from the cells, or (a change) a direction alone.
        figure = paper_figure(claim, claims.paper)
        if c.kind in ("value", "bound"):
            assert isinstance(figure.value, float), claim.id
        elif c.kind == "holds":
            assert figure.value is (c.direction == "true"), claim.id
        elif figure.value is not None:
            assert (figure.value > 0) == (c.direction == "increase") or c.direction == "none", claim.id
        assert figure.display, claim.id


def test_every_row_of_every_table_is_covered_by_a_claim() -> None:
    claims = load_claims()
    assert uncovered_rows(claims.claims, claims.paper) == []
    paper = claims.paper
    assert len(paper.row_ids("table1")) == 4 and len(paper.row_ids("table2")) == 15
    assert len(paper.row_ids("table3")) == 7 and len(paper.row_ids("table4")) == 6


def test_the_text_s_figures_each_have_an_entry() -> None:
    claims = load_claims()
    figures = {c.id: (c.comparison.size.text if c.comparison.size else None) for c in claims.claims}
    assert figures["headline-speed-95"] == "95%" and figures["headline-memory-59"] == "59%"
    assert figures["gcp-memory-55"] == "55%"
    assert figures["amp-speed-a100x1"] == "21%" and figures["amp-speed-a100x2"] == "10%"
    assert figures["features-speed-a100x1"] == "30%" and figures["features-speed-a100x2"] == "34%"
    assert figures["features-amp-speed-a100x2"] == "56%" and figures["flash-at-most-1pct"] == "1%"
    assert {"compile-model-no-gain", "compile-blocks-no-gain"} <= set(figures)
    for oom in ("t2-oom-dit-xl2-a100x1-b128", "t4-original-a100x1-oom"):
        assert claims.by_id(oom).comparison.direction == "true"


def test_every_measurement_kind_has_a_method() -> None:
    for kind in MEASURE_KINDS:
        assert callable(getattr(Evidence, f"_measure_{kind}", None)), kind


def test_tolerances_are_derived_from_the_paper_s_numbers() -> None:
    tolerances = load_claims().tolerances
    # Table 1: run means 0.716, 0.640, 0.618, 0.605. Experiment 1's printed average (0.746) is not the
    # mean of its cells (0.716), so it is left out: grand mean of the others 18.63 / 30 = 0.621,
    # largest deviation experiment 2's 0.640.
    speed = tolerances["speed"]
    assert speed.value == pytest.approx((6.40 / 10 - 18.63 / 30) / (18.63 / 30), rel=1e-9)
    assert "left out" in speed.detail and "exp1" in speed.detail
    # Table 4: GCP with TF32 disabled against GCP (identical tensors), per setting: one A100, two A100s.
    memory = tolerances["memory"]
    assert memory.per_setting == pytest.approx({"a100x1": 51991 / 44045 - 1, "a100x2": 32167 / 30801 - 1}, rel=1e-12)
    assert memory.value == pytest.approx(51991 / 44045 - 1, rel=1e-12)
    assert tolerances["printed"].value is None and tolerances["exact"].value == 0.0


@pytest.mark.parametrize(
    "text, value, half",
    [("0.77", 0.77, 0.005), ("0.8", 0.8, 0.05), ("21%", 0.21, 0.005), ("675M", 675e6, 0.5e6), ("66259", 66259, 0.5),
     ("0.746", 0.746, 0.0005), ("10h", 10.0, 0.5)],
)
def test_printed_numbers_keep_their_rounding(text: str, value: float, half: float) -> None:
    printed = parse_printed(text)
    assert printed.value == pytest.approx(value) and printed.half_unit == pytest.approx(half)


def test_a_non_number_is_refused() -> None:
    with pytest.raises(PaperDataError, match="not a printed number"):
        parse_printed("fast")


def test_unknown_cells_are_refused_with_the_valid_names() -> None:
    paper = load_paper()
    with pytest.raises(PaperDataError, match="table4 has no row 'gcp-typo'; rows: original"):
        paper.raw_cell(CellRef("table4", "gcp-typo", "steps_per_s", "a100x1"))
    with pytest.raises(PaperDataError, match="needs a setting"):
        paper.raw_cell(CellRef("table4", "gcp", "steps_per_s"))
    with pytest.raises(PaperDataError, match="no column 'speed'"):
        paper.raw_cell(CellRef("table3", "original", "speed"))


def _problem(mutate, match: str) -> None:
    data = shipped_claims()
    mutate(data)
    with pytest.raises(ClaimsError, match=match):
        parse_claims(data, load_paper())


def _entry(data: dict, claim_id: str) -> dict:
    return next(c for c in data["claims"] if c["id"] == claim_id)


def test_a_reference_to_a_missing_row_is_named() -> None:
    _problem(lambda d: _entry(d, "amp-speed-a100x1")["comparison"].update(treated="table4/gcp+fp8"),
             r"amp-speed-a100x1: treated: table4 has no row 'gcp\+fp8'")


def test_a_direction_contradicting_the_cells_is_refused() -> None:
    _problem(lambda d: _entry(d, "t4-gcp+amp-a100x1-speed")["comparison"].update(direction="decrease"),
             r"direction 'decrease' but the cells go 0.43 -> 0.52 \(increase\)")


def test_an_oom_claim_must_match_its_cell() -> None:
    _problem(lambda d: _entry(d, "t2-oom-dit-l2-a100x1-b128")["comparison"].update(direction="false"),
             "says OOM")


def test_a_claim_measured_nowhere_must_say_why() -> None:
    _problem(lambda d: _entry(d, "equivalence-fid")["measure"].pop("reason"), "must say why")


def test_removing_the_only_claims_of_a_row_is_caught() -> None:
    def drop(data: dict) -> None:
        data["claims"] = [c for c in data["claims"] if "no-amp" not in c["id"]]

    _problem(drop, "table3/no-amp: no claim covers this row")


def test_duplicate_ids_and_unknown_kinds_are_refused() -> None:
    def duplicate(data: dict) -> None:
        data["claims"].append(copy.deepcopy(data["claims"][0]))

    _problem(duplicate, "duplicate id")
    _problem(lambda d: _entry(d, "gcp-memory-55")["consistency"].update(kind="vibes"), "unknown consistency check 'vibes'")


def test_schema_violations_name_the_place() -> None:
    _problem(lambda d: _entry(d, "gcp-memory-55")["comparison"].update(size="lots"), r"claims/\d+/comparison/size")


def test_a_claims_file_that_does_not_exist_is_named(tmp_path: Path) -> None:
    with pytest.raises(ClaimsError, match="does not exist"):
        load_claims(tmp_path / "nowhere.json")




def shipped_paper() -> dict:
    return json.loads(resources.files("dit_repro.paper").joinpath("paper.json").read_text(encoding="utf-8"))


def test_every_stated_size_is_said_by_its_sentence_or_named_by_its_row() -> None:
    paper, text = load_paper(), load_text_coverage()
    assert paper.stated_sizes, "paper.json states no sizes"
    for stated in paper.stated_sizes:
        if stated.source.startswith("table"):
            assert paper.row(*stated.source.split("/"))["model"] == stated.model == stated.quote
        else:
            assert normalise(stated.quote) in text.by_id(stated.source).text, stated


def test_the_stated_quantities_are_the_ones_the_architecture_knows() -> None:
    assert tuple(paper_schema()["$defs"]["stated_size"]["properties"]["quantity"]["enum"]) == ARCHITECTURE_QUANTITIES


def test_a_stated_size_from_a_row_must_name_the_row_s_preset() -> None:
    data = shipped_paper()
    entry = next(e for e in data["stated_sizes"]["entries"] if e["source"] == "table2/dit-b2-a100x1-b128")
    entry.update(model="DiT-L/2", quote="DiT-L/2")
    with pytest.raises(PaperDataError, match="the row's model is 'DiT-B/2', the entry names 'DiT-L/2'"):
        PaperData(data)
