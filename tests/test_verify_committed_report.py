"""The committed verification (verify/report.md and report.json) is current with the claims data.

``nox -s verify`` writes it; this test fails when the claims, the paper's data or the paper checks
change without the report being made again. Measured figures may differ from machine to machine
and are not compared; what the paper's own numbers decide is.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dit_repro.verify.claims import load_claims
from dit_repro.verify.consistency import check_consistency
from dit_repro.verify.figures import paper_figure
from dit_repro.verify.machine import param_count

REPORT = Path(__file__).resolve().parent.parent / "verify" / "report.json"
CLAIMS = load_claims()


@pytest.fixture(scope="module")
def committed() -> dict:
    if not REPORT.is_file():
        pytest.fail(f"{REPORT} is missing: run `nox -s verify` and commit verify/")
    return json.loads(REPORT.read_text())


def test_the_report_covers_exactly_the_current_claims(committed: dict) -> None:
    assert [c["id"] for c in committed["claims"]] == [c.id for c in CLAIMS.claims]
    for entry, claim in zip(committed["claims"], CLAIMS.claims, strict=True):
        assert (entry["text"], entry["source"], entry["note"], entry.get("resolution")) == (
            claim.text, claim.source, claim.note, claim.resolution), claim.id
        figure = paper_figure(claim, CLAIMS.paper)
        assert entry["paper"]["display"] == figure.display and entry["paper"]["value"] == figure.value, claim.id


def test_the_paper_checks_and_flags_are_the_current_ones(committed: dict) -> None:
    for entry, claim in zip(committed["claims"], CLAIMS.claims, strict=True):
        result = check_consistency(claim, CLAIMS, param_count)
        assert entry["paper_check"]["result"] == result.check.value, (claim.id, result.detail)
        assert entry["paper_check"]["flags"] == list(result.flags), claim.id


def test_the_tolerances_are_the_current_ones(committed: dict) -> None:
    assert {name: t["value"] for name, t in committed["tolerances"].items()} == pytest.approx(
        {name: t.value for name, t in CLAIMS.tolerances.items()})
    assert sum(committed["counts"].values()) == len(CLAIMS.claims)
    assert (REPORT.parent / "report.md").is_file()


def test_the_findings_of_the_general_rules_are_the_current_ones(committed: dict) -> None:
    from dit_repro.verify.rules import change_tolerance, run_rules

    assert committed["findings"] == [f.to_dict() for f in run_rules(CLAIMS.claims, CLAIMS.paper, param_count, change_tolerance(CLAIMS.tolerances))]
