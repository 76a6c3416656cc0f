"""The claims verifier: every claim of 'Optimizing Diffusion Transformers' as data, checked.

* ``dit_repro/paper/paper.json`` holds the paper's Tables 1-4 as printed; ``claims.json`` one entry per claim
  (text, source, figure, comparison, hardware, and how it is checked). Both are validated on
  load (:mod:`~dit_repro.paper`, :mod:`~dit_repro.verify.claims`).
* :mod:`~dit_repro.verify.consistency` checks each claim against the paper's own numbers;
  :mod:`~dit_repro.verify.measure` measures what this machine can (machine-independent counts,
  the memory model, equivalence checks, GPU benchmark results);
  :mod:`~dit_repro.verify.verdicts` turns both into one verdict (the rules are there).
* :func:`run_verification` runs it all; :mod:`~dit_repro.verify.report` writes report.md,
  report.json and the plots. ``dit-repro verify`` is the command, ``nox -s verify`` the session.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dit_repro.envinfo import environment_fingerprint
from dit_repro.paper import PaperDataError, load_paper

from .claims import ClaimsError, ClaimSet, load_claims
from .machine import param_count
from .measure import Evidence
from .memory_model import shared_memory_model
from .results import ResultsFile, load_results_files
from .rules import change_tolerance, project_costs, run_rules
from .runner import ClaimResult, VerificationReport, plot_data, verify_all
from .small_scale import run_small_scale
from .verdicts import PaperCheck, Verdict

__all__ = [
    "ClaimResult", "ClaimSet", "ClaimsError", "PaperCheck", "PaperDataError", "Verdict", "VerificationReport",
    "VerifyOptions", "load_claims", "load_paper", "run_verification",
]

SCALES = ("none", "small")
"""``none``: no benchmark is run; ``small``: the DiT-S/2 subset on this GPU (see small_scale)."""


@dataclass
class VerifyOptions:
    """What ``dit-repro verify`` was asked for."""

    results: list[Path] = field(default_factory=list)
    """Results files of ``dit-repro bench`` to read."""
    scale: str = "none"
    """``none`` or ``small`` (benchmark a DiT-S/2 subset on this GPU first)."""
    out_dir: Path = Path("verify")
    """Where the report, the plots and (with --scale small) the benchmark results go (verify/: the committed report)."""
    equivalence: bool = True
    """Run the in-process equivalence checks (the slowest part on a CPU)."""
    claims_path: Path | None = None
    """Another claims file (default: the shipped claims.json)."""
    only: list[str] = field(default_factory=list)
    """Verify only these claim ids (empty: all)."""


def run_verification(options: VerifyOptions, say: Callable[[str], None] | None = None) -> VerificationReport:
    """Load the claims and results, run the small-scale benchmark if asked, and verify every claim."""
    say = say or (lambda text: print(text, file=sys.stderr))
    if options.scale not in SCALES:
        raise ClaimsError(f"unknown scale {options.scale!r}; choose {', '.join(SCALES)}")
    claims = load_claims(options.claims_path)
    results: list[ResultsFile] = load_results_files(list(options.results))
    if options.scale == "small":
        results += run_small_scale(options.out_dir, say)
    # The process's one memory model: the claims and the general rules model each setup once between them.
    evidence = Evidence(claims, results, run_equivalence=options.equivalence, gpu_here=torch.cuda.is_available(),
                        memory_model=shared_memory_model())
    claim_results = verify_all(claims, evidence, options.only or None, progress=say)
    return VerificationReport(
        results=claim_results,
        tolerances=claims.tolerances,
        findings=run_rules(claims.claims, claims.paper, param_count, change_tolerance(claims.tolerances),
                           project_costs(evidence.memory_model)),
        inputs={
            "results": [r.path for r in results],
            "scale": options.scale,
            "equivalence": options.equivalence,
            "claims": str(options.claims_path or "claims.json (shipped)"),
            "only": list(options.only),
        },
        environment=environment_fingerprint(),
        plots=plot_data(evidence),
    )
