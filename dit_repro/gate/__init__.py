"""The regression gate: benchmark results against a reference measured on the same hardware.

Three references, by strength:

* ``ab``: REF's side of a same-run A/B (``dit-repro bench --against REF``), found beside the
  results. Both sides ran on this machine at the same time, interleaved: every figure compares,
  absolute step times included.
* ``stored``: the stored baseline recorded on hardware with exactly this hardware key.
* ``portable``: a stored baseline of any hardware, for the figures that do not depend on the
  machine only (multiply-adds, saved-activation bytes and their ratios).

Exit codes: 0 pass, 1 regression (or a failed row, or a figure that disappeared), 2 usage or
data error (unreadable files, no baseline for this hardware without ``--allow-missing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dit_repro.atomic import write_text_atomic
from dit_repro.bench.baselines import (
    FAILED_STATUSES,
    MissingBaseline,
    check_same_setup,
    failure_summary,
    find_baseline,
    find_portable_baseline,
)
from dit_repro.bench.schema import ResultsError, load_results

from .compare import Comparison, Thresholds, Verdict
from .metrics import MODES, GateInputs, gate_comparisons
from .report import markdown_table, plot_changes

EXIT_PASS = 0
EXIT_REGRESSION = 1
EXIT_DATA_ERROR = 2

DEFAULT_BASELINES = Path("baselines")
"""Where stored baselines are looked for when a results file is not one side of an A/B."""

__all__ = ["DEFAULT_BASELINES", "EXIT_DATA_ERROR", "EXIT_PASS", "EXIT_REGRESSION", "MODES", "GateInputs",
           "GateOutcome", "MissingBaseline", "Thresholds", "Verdict", "run_gate"]


@dataclass
class GateOutcome:
    """What the gate found."""

    exit_code: int
    """0 pass, 1 regression or failure."""
    comparisons: list[Comparison]
    """Every comparison, in table order."""
    notes: list[str]
    """What was and was not compared, and why."""
    markdown: str
    """The full report (notes, table, verdict)."""
    plot_path: Path | None
    """The bar chart, when a report directory was given."""


def paired_reference(results: dict[str, Any], results_path: Path) -> Path:
    """REF's side of the A/B whose candidate side ``results`` is, checked to belong to the same run."""
    ab = results["ab"]
    if ab["role"] != "candidate":
        raise ResultsError(f"{results_path} is the reference side of an A/B; gate the candidate side "
                           f"({ab['paired_results']}) instead")
    path = results_path.parent / ab["paired_results"]
    if path.name != ab["paired_results"] or path.parent != results_path.parent:
        raise ResultsError(f"{results_path}: paired_results must be a file name beside it, got {ab['paired_results']!r}")
    reference = load_results(path)
    other = reference.get("ab")
    if other is None or other["run_id"] != ab["run_id"] or other["role"] != "reference":
        raise ResultsError(f"{path} is not the reference side of the run that wrote {results_path} "
                           "(run ids differ): run `dit-repro bench --against REF` again")
    return path


def choose_reference(results: dict[str, Any], results_path: Path, baselines: Path | None,
                     portable: bool) -> tuple[str, Path]:
    """The gate's mode and reference file (see the module docstring)."""
    if portable:
        return "portable", find_portable_baseline(results, baselines or DEFAULT_BASELINES)
    if baselines is None and "ab" in results:
        return "ab", paired_reference(results, results_path)
    return "stored", find_baseline(results, baselines or DEFAULT_BASELINES)


def _crash_comparisons(results: dict[str, Any], thresholds: Thresholds) -> list[Comparison]:
    """Without a baseline only faults can be judged: a row that crashed fails the gate."""
    out = []
    for row in results["rows"]:
        if row["status"] in FAILED_STATUSES:
            out.append(Comparison(f"{row['name']}: status", "", None, None, None, None, Verdict.FAIL, thresholds.time,
                                  failure_summary(row)))
    return out


def run_gate(results_path: Path, baselines: Path | None, inputs: GateInputs, allow_missing: bool = False,
             report_dir: Path | None = None, portable: bool = False, notes: list[str] | None = None) -> GateOutcome:
    """Compare a results file with its reference; writes gate.md and gate.png to ``report_dir`` if given.

    ``baselines`` None: REF's side for an A/B results file, else the stored baselines under
    ``baselines/``. ``portable``: machine-independent figures against a baseline of any hardware.
    ``notes`` go first in the report (e.g. why this reference was chosen).
    Raises ResultsError (exit 2) for unreadable or mismatched files and for a missing baseline
    unless ``allow_missing``.
    """
    results = load_results(results_path)
    lead = list(notes or [])
    try:
        mode, source = choose_reference(results, results_path, baselines, portable)
    except MissingBaseline as exc:
        if not allow_missing:
            raise
        mode, comparisons, notes = "none", _crash_comparisons(results, inputs.thresholds), [
            f"{exc} (--allow-missing: not gated)"]
    else:
        baseline = load_results(source)
        check_same_setup(baseline, results, str(source))
        if mode == "ab":
            _refuse_failed_reference_rows(baseline, source)
        comparisons, notes = gate_comparisons(baseline, results, inputs, mode)
        notes.insert(0, _reference_note(mode, source, baseline))
    notes = lead + notes
    failing = [c for c in comparisons if c.verdict.fails_gate]
    improved = [c for c in comparisons if c.verdict is Verdict.IMPROVEMENT]
    exit_code = EXIT_REGRESSION if failing else EXIT_PASS
    thr = inputs.thresholds
    lines = [f"# Gate: {results_path}", "", f"device: {results['device']['name']} ({results['device']['type']}, "
             f"hardware {results['device']['slug']}); thresholds: time {thr.time:.0%}, memory {thr.memory:.0%}; "
             f"significance level {thr.alpha}", ""]
    lines += [f"- {note}" for note in notes] + [""]
    lines += [markdown_table(comparisons) if comparisons else "(nothing compared)", ""]
    if improved and mode == "stored":
        lines.append(f"{len(improved)} improvement(s) beyond the threshold: record a new baseline with "
                     "`dit-repro bench --record` and commit it after review.")
    if failing:
        lines.append(f"**Verdict: FAIL** ({len(failing)} regression(s) or failure(s): "
                     f"{', '.join(c.metric for c in failing)}). Exit code {exit_code}.")
    else:
        lines.append(f"**Verdict: PASS**. Exit code {exit_code}.")
    markdown = "\n".join(lines) + "\n"
    plot_path = None
    if report_dir is not None:
        write_text_atomic(report_dir / "gate.md", markdown)
        plot_path = plot_changes(comparisons, report_dir / "gate.png",
                                 f"gate: {results['matrix']['name']} on {results['device']['name']}")
    return GateOutcome(exit_code, comparisons, notes, markdown, plot_path)


def _refuse_failed_reference_rows(reference: dict[str, Any], source: Path) -> None:
    """REF's side of an A/B must have run every row it is to judge: the candidate is not at fault otherwise."""
    failed = [f"{row['name']} ({failure_summary(row)})" for row in reference["rows"] if row["status"] in FAILED_STATUSES]
    if failed:
        raise ResultsError(
            f"REF's side ({source}) could not run {len(failed)} row(s), so the A/B cannot judge them: "
            f"{'; '.join(failed)}. Its worker logs are in logs/ beside the results. REF runs the candidate's row "
            "configuration: a REF whose config fields differ cannot run it; choose another REF or a stored baseline")


def _reference_note(mode: str, source: Path, baseline: dict[str, Any]) -> str:
    if mode == "ab":
        ab = baseline["ab"]
        return (f"reference: same-run A/B against {ab['against']} = {ab['reference_commit'][:12]} ({source}); "
                f"candidate: {ab['candidate']}")
    if mode == "portable":
        return (f"reference: {source}, recorded on {baseline['device']['name']} (hardware "
                f"{baseline['device']['slug']}); --portable: only machine-independent figures are compared")
    return f"reference: stored baseline {source} (hardware key matches)"
