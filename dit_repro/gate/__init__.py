"""The regression gate: benchmark results against the stored baseline of their device.

Exit codes: 0 pass, 1 regression (or a failed row, or a figure that disappeared), 2 usage or
data error (unreadable files, no baseline for the device without ``--allow-missing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dit_repro.bench.baselines import FAILED_STATUSES, baseline_path, check_same_setup, failure_summary
from dit_repro.bench.schema import ResultsError, load_results, write_text_atomic

from .compare import Comparison, Thresholds, Verdict
from .metrics import GateInputs, gate_comparisons
from .report import markdown_table, plot_changes

EXIT_PASS = 0
EXIT_REGRESSION = 1
EXIT_DATA_ERROR = 2

__all__ = ["EXIT_DATA_ERROR", "EXIT_PASS", "EXIT_REGRESSION", "GateInputs", "GateOutcome", "Thresholds",
           "Verdict", "run_gate"]


class MissingBaseline(ResultsError):
    """No baseline is stored for this device and setup."""


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


def find_baseline(results: dict[str, Any], baselines: Path) -> Path:
    """The baseline file: ``baselines`` itself if it is a file, else the device's file under it."""
    if baselines.is_file():
        return baselines
    path = baseline_path(baselines, results)
    if not path.exists():
        device = results["device"]
        raise MissingBaseline(
            f"no baseline for device {device['name']!r} (directory {device['slug']!r}): expected {path}. "
            "Record one with `dit-repro bench --record` on this device, review it and commit it, "
            "or pass --allow-missing to gate only what needs no baseline."
        )
    return path


def _crash_comparisons(results: dict[str, Any], thresholds: Thresholds) -> list[Comparison]:
    """Without a baseline only faults can be judged: a row that crashed fails the gate."""
    out = []
    for row in results["rows"]:
        if row["status"] in FAILED_STATUSES:
            out.append(Comparison(f"{row['name']}: status", "", None, None, None, None, Verdict.FAIL, thresholds.time,
                                  failure_summary(row)))
    return out


def run_gate(results_path: Path, baselines: Path, inputs: GateInputs, allow_missing: bool = False,
             report_dir: Path | None = None) -> GateOutcome:
    """Compare a results file with its baseline; writes gate.md and gate.png to ``report_dir`` if given.

    Raises ResultsError (exit 2) for unreadable or mismatched files and for a missing baseline
    unless ``allow_missing``.
    """
    results = load_results(results_path)
    try:
        source = find_baseline(results, baselines)
    except MissingBaseline as exc:
        if not allow_missing:
            raise
        comparisons, notes = _crash_comparisons(results, inputs.thresholds), [f"{exc} (--allow-missing: not gated)"]
    else:
        baseline = load_results(source)
        check_same_setup(baseline, results, str(source))
        comparisons, notes = gate_comparisons(baseline, results, inputs)
        notes.insert(0, f"baseline: {source}")
    failing = [c for c in comparisons if c.verdict.fails_gate]
    improved = [c for c in comparisons if c.verdict is Verdict.IMPROVEMENT]
    exit_code = EXIT_REGRESSION if failing else EXIT_PASS
    thr = inputs.thresholds
    lines = [f"# Gate: {results_path}", "", f"device: {results['device']['name']} ({results['device']['type']}); "
             f"thresholds: time {thr.time:.0%}, memory {thr.memory:.0%}; significance level {thr.alpha}", ""]
    lines += [f"- {note}" for note in notes] + [""]
    lines += [markdown_table(comparisons) if comparisons else "(nothing compared)", ""]
    if improved:
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
