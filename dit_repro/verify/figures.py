"""The paper's figure for each claim, with the rounding its printed digits allow.

A change read from two cells is an interval: ``0.43 -> 0.52`` may be anything from
``0.515 / 0.435 - 1`` to ``0.525 / 0.425 - 1``. Table 1's stability figures (coefficients of
variation within and across runs) are computed here too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from dit_repro.paper import CellRef, PaperData, Printed

from .claims import Claim
from .verdicts import PaperFigure

UNITS = {"steps_per_s": "steps/s", "average": "steps/s", "memory_mib": "MiB"}
"""How each metric's cells are labelled in the report."""


@dataclass(frozen=True)
class Interval:
    """A relative change and the range the rounding of its two cells allows."""

    value: float
    """treated / baseline - 1 from the printed cells."""
    low: float
    """Smallest change the unrounded cells allow."""
    high: float
    """Largest change the unrounded cells allow."""

    def overlaps(self, low: float, high: float) -> bool:
        """True when [low, high] meets this interval."""
        return self.low <= high and low <= self.high


def change_interval(baseline: Printed, treated: Printed) -> Interval:
    """treated / baseline - 1 with its rounding interval (both cells positive)."""
    return Interval(
        value=treated.value / baseline.value - 1,
        low=treated.low / baseline.high - 1,
        high=treated.high / baseline.low - 1,
    )


def coefficient_of_variation(values: list[float]) -> float:
    """Sample standard deviation over the mean (0 for fewer than two values)."""
    if len(values) < 2:
        return 0.0
    return statistics.stdev(values) / statistics.fmean(values)


@dataclass(frozen=True)
class RunStats:
    """One row of Table 1."""

    row: str
    """Row id."""
    mean: float
    """Mean of the ten printed epoch rates."""
    cv: float
    """Coefficient of variation of the epoch rates."""
    printed_average: Printed
    """The 'Average' column as printed."""
    entries: tuple[float, ...]
    """The epoch rates."""


def table1_stats(paper: PaperData) -> list[RunStats]:
    """Mean, spread and printed average of every Table 1 run."""
    stats = []
    for row in paper.row_ids("table1"):
        entries = [p.value for p in paper.numbers(CellRef("table1", row, "epochs"))]
        average = paper.number(CellRef("table1", row, "average"))
        stats.append(RunStats(row, statistics.fmean(entries), coefficient_of_variation(entries), average, tuple(entries)))
    return stats


def paper_figure(claim: Claim, paper: PaperData) -> PaperFigure:
    """The paper's figure for ``claim`` in the comparison's units (relative change for changes and bounds)."""
    c = claim.comparison
    if c.kind == "holds":
        treated = c.cell("treated")
        if c.metric == "oom" and treated is not None:
            figure = paper.number(treated)
            display = "OOM" if paper.is_oom(treated) else (f"fits ({figure.text} MiB)" if figure else "fits")
        else:
            display = claim.figure or c.direction
        return PaperFigure(c.direction == "true", 0.0, display)
    if c.size is not None:
        value = c.signed_size if c.kind == "change" else c.size.value
        return PaperFigure(value, c.size.half_unit, claim.figure or c.size.text)
    if c.kind == "bound":
        return _derived_bound(claim, paper)
    base, treated = c.cell("baseline"), c.cell("treated")
    if c.kind == "change":
        if base is None or treated is None:
            return PaperFigure(None, 0.0, claim.figure or f"{c.direction} (no figure)")
        a, b = paper.number(base), paper.number(treated)
        interval = change_interval(a, b)
        unit = UNITS.get(c.metric, "")
        return PaperFigure(interval.value, (interval.high - interval.low) / 2,
                           f"{a.text} -> {b.text} {unit} ({interval.value:+.1%})".replace("  ", " "))
    number = paper.number(treated)
    unit = UNITS.get(c.metric, "")
    return PaperFigure(number.value, number.half_unit, f"{number.text} {unit}".strip())


def _derived_bound(claim: Claim, paper: PaperData) -> PaperFigure:
    stats = table1_stats(paper)
    if claim.consistency.kind == "table1_within_cv":
        worst = max(stats, key=lambda s: s.cv)
        return PaperFigure(worst.cv, 0.0, f"CV <= {worst.cv:.1%} (largest within one run: {worst.row})")
    cv = coefficient_of_variation([s.mean for s in stats])
    return PaperFigure(cv, 0.0, f"CV <= {cv:.1%} (of the {len(stats)} runs' mean rates)")
