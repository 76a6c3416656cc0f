"""One verification run: every claim checked against the paper and measured, plus the plot data."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dit_repro.paper import CellRef

from .claims import Claim, ClaimSet, Tolerance
from .consistency import ConsistencyResult, check_consistency
from .figures import paper_figure
from .machine import param_count
from .measure import Evidence
from .memory_model import MemorySpec
from .results import row_metric
from .rules import Finding
from .verdicts import (
    Judgement,
    Measurement,
    NotCheckable,
    PaperFigure,
    Verdict,
    final_verdict,
    judge_measurement,
)


@dataclass(frozen=True)
class ClaimResult:
    """Everything known about one claim after the run."""

    claim: Claim
    """The claim."""
    figure: PaperFigure
    """The paper's figure."""
    consistency: ConsistencyResult
    """The paper against itself."""
    measured: Measurement | NotCheckable
    """What was measured here, or why nothing could be."""
    judgement: Judgement
    """The measured verdict and its reason."""
    verdict: Verdict
    """The final verdict (paper inconsistency first, else the measured verdict)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record of this claim's outcome."""
        c = self.claim
        measured = (
            {"value": self.measured.value, "display": self.measured.display, "hardware": self.measured.hardware,
             "detail": self.measured.detail}
            if isinstance(self.measured, Measurement) else None
        )
        return {
            "id": c.id,
            "source": c.source,
            "text": c.text,
            "note": c.note, "resolution": c.resolution,
            "comparison": {
                "kind": c.comparison.kind, "metric": c.comparison.metric, "baseline": c.comparison.baseline,
                "treated": c.comparison.treated, "setting": c.comparison.setting, "direction": c.comparison.direction,
                "size": None if c.comparison.size is None else c.comparison.size.text, "tolerance": c.comparison.tolerance,
            },
            "paper": {"value": self.figure.value, "half_unit": self.figure.half_unit, "display": self.figure.display,
                      "hardware": c.hardware.describe()},
            "paper_check": {"result": self.consistency.check.value, "detail": self.consistency.detail,
                            "flags": list(self.consistency.flags)},
            "measured": measured,
            "not_checkable_reason": self.measured.reason if isinstance(self.measured, NotCheckable) else None,
            "measured_verdict": self.judgement.verdict.value,
            "measured_reason": self.judgement.reason,
            "verdict": self.verdict.value,
        }


@dataclass
class VerificationReport:
    """The outcome of ``dit-repro verify``."""

    results: list[ClaimResult]
    """One per claim, in the claims file's order."""
    tolerances: dict[str, Tolerance]
    """The tolerances the verdicts used."""
    inputs: dict[str, Any]
    """Results files, scale, skipped checks, claims file."""
    environment: dict[str, Any]
    """The machine (dit_repro.envinfo.environment_fingerprint)."""
    plots: dict[str, Any]
    """Series of speed and memory per Table 4 configuration (paper, memory model, GPU results)."""
    findings: list[Finding] = field(default_factory=list)
    """What the general consistency rules found in the paper's numbers (:mod:`dit_repro.verify.rules`)."""
    created_utc: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    """When the run finished."""

    def counts(self) -> dict[str, int]:
        """Number of claims per final verdict (every verdict listed, zeros included)."""
        return {v.value: sum(r.verdict is v for r in self.results) for v in Verdict}

    def to_dict(self) -> dict[str, Any]:
        """The JSON copy of the report."""
        return {
            "schema": "dit-repro/verify-report",
            "schema_version": 1,
            "created_utc": self.created_utc,
            "inputs": self.inputs,
            "environment": self.environment,
            "counts": self.counts(),
            "tolerances": {
                name: {"derive": t.derive, "value": t.value, "rationale": t.rationale, "detail": t.detail}
                for name, t in self.tolerances.items()
            },
            "claims": [r.to_dict() for r in self.results],
            "findings": [f.to_dict() for f in self.findings],
            "plots": self.plots,
        }


def verify_claim(claim: Claim, claims: ClaimSet, evidence: Evidence) -> ClaimResult:
    """Check one claim against the paper, measure it, and give it a verdict."""
    figure = paper_figure(claim, claims.paper)
    consistency = check_consistency(claim, claims, param_count)
    measured = evidence.measure(claim)
    judgement = judge_measurement(claim.comparison, figure, measured, claims.tolerances[claim.comparison.tolerance])
    return ClaimResult(claim, figure, consistency, measured, judgement, final_verdict(consistency.check, judgement))


def verify_all(claims: ClaimSet, evidence: Evidence, only: list[str] | None = None,
               progress: Callable[[str], None] | None = None) -> list[ClaimResult]:
    """Verify every claim (or those in ``only``, which must all exist)."""
    selected = list(claims.claims) if not only else [claims.by_id(claim_id) for claim_id in only]
    results = []
    for index, claim in enumerate(selected, 1):
        if progress:
            progress(f"[verify] {index}/{len(selected)} {claim.id}")
        results.append(verify_claim(claim, claims, evidence))
    return results


def plot_data(evidence: Evidence) -> dict[str, Any]:
    """Speed and memory of each Table 4 configuration: the paper's bars, the memory model, GPU results.

    The memory model's series holds only the configurations already modelled during the run (all
    of them when every claim is verified), so plotting never starts new work.
    """
    paper = evidence.paper
    rows = paper.row_ids("table4")
    settings = paper.settings("table4")

    def paper_series(metric: str) -> list[dict[str, Any]]:
        """One series per Table 4 setting, with the OOM cells marked."""
        series = []
        for setting in settings:
            values = []
            for row in rows:
                number = paper.number(CellRef("table4", row, metric, setting))
                values.append(None if number is None else number.value)
            oom = [paper.is_oom(CellRef("table4", row, "memory_mib", setting)) for row in rows]
            label = paper.tables["table4"]["settings"][setting]["label"]
            series.append({"label": f"paper, {label}", "kind": "paper", "values": values, "oom": oom})
        return series

    model_series = []
    for setting in settings:
        values = []
        for row in rows:
            spec: MemorySpec = evidence.setup(f"table4/{row}", setting).memory_spec()
            estimate = evidence.memory_model.cached(spec)
            values.append(None if estimate is None else estimate.peak_mib)
        if any(v is not None for v in values):
            batch = evidence.setup("table4/gcp", setting).per_gpu_batch
            model_series.append({"label": f"memory model, {batch}/GPU (tensors only)", "kind": "model",
                                 "values": values, "oom": [False] * len(rows)})

    measured = {"steps_per_s": [], "memory_mib": []}
    setup = paper.tables["table4"]["setup"]
    for doc in evidence.gpu_results("table4"):
        paper_scale = (doc.model, doc.global_batch_size, doc.image_size) == (
            setup["model"], setup["global_batch_size"], setup["image_size"])
        for metric in measured:
            values = []
            for row in rows:
                values.append(row_metric(doc.row(row), metric))
            oom = [(doc.row(row) or {}).get("status") == "oom" for row in rows]
            measured[metric].append({"label": f"measured, {doc.describe()}", "kind": "measured", "values": values,
                                     "oom": oom, "paper_scale": paper_scale})
    capacity = paper.capacity_mib(paper.tables["table4"]["settings"][settings[0]]["gpu"]).value
    return {
        "configurations": [paper.label("table4", row) for row in rows],
        "rows": rows,
        "reference_row": "gcp",
        "capacity_mib": capacity,
        "speed": paper_series("steps_per_s") + measured["steps_per_s"],
        "memory": paper_series("memory_mib") + model_series + measured["memory_mib"],
    }
