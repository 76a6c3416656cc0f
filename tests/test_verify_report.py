"""report.md, report.json and the plots, written into a temporary folder from a synthetic run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dit_repro.verify.claims import load_claims
from dit_repro.verify.measure import Evidence
from dit_repro.verify.report import REPORT_JSON, REPORT_MD, group_of, write_report
from dit_repro.verify.runner import VerificationReport, plot_data, verify_claim
from dit_repro.verify.verdicts import Measurement, NotCheckable, Verdict
from tests.verify_documents import flat, results_file

HEADER = "| claim | source | paper | measured | hardware (paper -> here) | paper check | verdict |"


class StubEvidence(Evidence):
    """Real plot data, synthetic measurements: speed claims measured, everything else not checkable."""

    def measure(self, claim):
        if claim.comparison.metric == "steps_per_s" and claim.comparison.kind == "change":
            return Measurement(0.2, "+20.0% (test | pipe)", "test GPU")
        return NotCheckable("synthetic run")


@pytest.fixture(scope="module")
def report() -> VerificationReport:
    claims = load_claims()
    gpu = results_file({"original": "oom", "gcp": flat(0.2), "gcp+amp": flat(0.15)}, model="DiT-XL/2", batch=128,
                       image_size=256)
    evidence = StubEvidence(claims, [gpu], run_equivalence=False)
    results = [verify_claim(claim, claims, evidence) for claim in claims.claims]
    return VerificationReport(results, claims.tolerances, {"results": [gpu.path], "scale": "none", "equivalence": False,
                                                          "claims": "claims.json"}, {"device_name": "test CPU"},
                              plot_data(evidence))


def test_markdown_has_a_verdict_table_per_section_and_every_claim(report: VerificationReport, tmp_path: Path) -> None:
    paths = write_report(report, tmp_path)
    text = (tmp_path / REPORT_MD).read_text()
    assert paths["markdown"] == tmp_path / REPORT_MD
    assert text.count(HEADER) == 5  # Tables 1-4 and the text figures
    for section in ("## Table 1", "## Table 2", "## Table 3", "## Table 4", "## Text", "## Details"):
        assert section in text
    for result in report.results:
        assert f"**{result.claim.id}**" in text
    assert "+20.0% (test \\| pipe)" in text  # a pipe inside a cell is escaped
    assert "**inconsistent in the paper itself**" in text and "**not checkable here**" in text
    assert "![speed](speed.png)" in text and "![memory](memory.png)" in text


def test_counts_in_the_markdown_match_the_verdicts(report: VerificationReport) -> None:
    counts = report.counts()
    assert sum(counts.values()) == len(report.results)
    assert set(counts) == {v.value for v in Verdict}
    assert counts[Verdict.INCONSISTENT.value] >= 6


def test_plots_are_png_files(report: VerificationReport, tmp_path: Path) -> None:
    paths = write_report(report, tmp_path)
    for key in ("speed", "memory"):
        data = paths[key].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_json_copy_round_trips(report: VerificationReport, tmp_path: Path) -> None:
    write_report(report, tmp_path)
    loaded = json.loads((tmp_path / REPORT_JSON).read_text())
    assert loaded == json.loads(json.dumps(report.to_dict()))
    assert [c["id"] for c in loaded["claims"]] == [r.claim.id for r in report.results]
    first = loaded["claims"][0]
    assert {"text", "source", "paper", "measured", "paper_check", "measured_verdict", "verdict", "comparison"} <= set(first)
    assert loaded["tolerances"]["speed"]["value"] == pytest.approx(report.tolerances["speed"].value)


def test_plot_data_holds_the_paper_bars_and_the_paper_scale_gpu_run(report: VerificationReport) -> None:
    plots = report.plots
    assert plots["configurations"][2] == "Gradient Checkpointing (GCP)" and plots["reference_row"] == "gcp"
    paper_one = plots["speed"][0]
    assert paper_one["kind"] == "paper" and paper_one["values"][2] == pytest.approx(0.43) and paper_one["oom"][0]
    measured = [s for s in plots["speed"] if s["kind"] == "measured"]
    assert len(measured) == 1 and measured[0]["paper_scale"] and measured[0]["oom"][0]
    assert measured[0]["values"][2] == pytest.approx(5.0)  # 1 / 0.2 s


@pytest.mark.parametrize("source, group", [("Table 1", "Table 1"), ("§3.2, Table 2", "Table 2"), ("Abstract; §5", "Text"),
                                           ("§4.5", "Text")])
def test_claims_are_grouped_by_the_table_they_come_from(source: str, group: str) -> None:
    assert group_of(source) == group
