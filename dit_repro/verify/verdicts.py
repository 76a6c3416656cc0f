"""Verdicts: the measured one, the paper's own consistency, and how they combine.

Each claim is judged on two independent dimensions:

* **paper check** -- do the paper's own numbers support the claim's text? (``consistent``,
  ``inconsistent`` or ``not applicable`` when there is nothing in the paper to check it against);
* **measured verdict** -- what this machine (or the given benchmark results) shows:
  ``reproduced``, ``direction only``, ``not reproduced`` or ``not checkable here``.

The final verdict is ``inconsistent in the paper itself`` when the paper check fails (a claim the
paper's own tables contradict cannot be reproduced as stated, whatever is measured), and the
measured verdict otherwise. Both dimensions stay in the report.

Rules of the measured verdict, with tolerance ``t`` (see :class:`dit_repro.verify.claims.Tolerance`):

* change (treated relative to baseline, paper change ``p``, measured ``m``): reproduced when
  ``|m - p| <= t``; direction only when ``m`` has the sign of ``p`` but is further away;
  otherwise not reproduced. A paper change no larger than ``t`` (including "no change") has no
  direction the paper's own spread could establish: it is reproduced when ``|m - p| <= t`` and
  not reproduced otherwise. A change claim without a figure is reproduced when ``m`` goes the
  claimed way.
* value: reproduced when the measurement is within ``t`` of the figure (relative, or half a
  unit of the last printed digit for ``printed``), else not reproduced.
* bound: reproduced when ``m <= p + t`` (at most) or ``m >= p - t`` (at least).
* a measured bound (the memory model's tensors-only lower bound) of a value: consistent with a
  bound unless it excludes the figure (a lower bound above ``p + t``), then not reproduced.
* holds (a yes/no outcome such as OOM or equal losses): reproduced when it comes out as claimed.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from .claims import Comparison, Tolerance


class Verdict(str, enum.Enum):
    """The verdicts a claim can get."""

    REPRODUCED = "reproduced"
    CONSISTENT_WITH_BOUND = "consistent with a bound"
    DIRECTION_ONLY = "direction only"
    NOT_REPRODUCED = "not reproduced"
    NOT_CHECKABLE = "not checkable here"
    INCONSISTENT = "inconsistent in the paper itself"


class PaperCheck(str, enum.Enum):
    """Whether the paper's own numbers support the claim."""

    CONSISTENT = "consistent"
    INCONSISTENT = "inconsistent"
    NOT_APPLICABLE = "not applicable"


@dataclass(frozen=True)
class PaperFigure:
    """The paper's figure for a claim, in the units the comparison uses."""

    value: float | bool | None
    """Relative change (0.21 = +21%) for changes and bounds, the figure for values, the outcome for holds;
    None when the paper gives no figure."""
    half_unit: float
    """How far the unrounded figure can be from ``value`` given the paper's printed digits."""
    display: str
    """How the report prints it."""


@dataclass(frozen=True)
class Measurement:
    """What this project measured for a claim."""

    value: float | bool
    """In the comparison's units: relative change, figure, or outcome."""
    display: str
    """How the report prints it."""
    hardware: str
    """Where it was measured: device and scale, or ``memory model``, ``meta device`` ..."""
    detail: str = ""
    """How it was measured."""
    bound: str | None = None
    """``lower`` or ``upper`` when ``value`` bounds the quantity rather than measures it (the memory
    model counts tensors only: a lower bound of what a GPU reports)."""


@dataclass(frozen=True)
class NotCheckable:
    """Why a claim cannot be measured here."""

    reason: str
    """E.g. 'no GPU', 'two GPUs needed'."""


@dataclass(frozen=True)
class Judgement:
    """A measured verdict and the reason for it."""

    verdict: Verdict
    """reproduced, direction only, not reproduced or not checkable here."""
    reason: str
    """The comparison that decided it."""


def tolerance_for(comparison: Comparison, tolerance: Tolerance, figure: PaperFigure) -> float:
    """The absolute tolerance in the comparison's units.

    Relative tolerances (speed, memory) scale with the figure for value comparisons; for changes
    and bounds they are points of the relative change. ``printed`` is the figure's own rounding.
    """
    value = tolerance.for_setting(comparison.setting)
    if value is None:
        return figure.half_unit
    if comparison.kind == "value" and isinstance(figure.value, float):
        return value * abs(figure.value)
    return value


def judge_measurement(
    comparison: Comparison, figure: PaperFigure, measured: Measurement | NotCheckable, tolerance: Tolerance
) -> Judgement:
    """The measured verdict of one claim (see the module docstring for the rules)."""
    if isinstance(measured, NotCheckable):
        return Judgement(Verdict.NOT_CHECKABLE, measured.reason)
    m, p = measured.value, figure.value
    if comparison.kind == "holds":
        expected = comparison.direction == "true"
        ok = bool(m) == expected
        return Judgement(Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED,
                         f"expected {'yes' if expected else 'no'}, measured {'yes' if m else 'no'}")
    if not isinstance(m, (int, float)) or isinstance(m, bool) or not math.isfinite(m):
        raise ValueError(f"a {comparison.kind} comparison needs a finite number, measured {m!r}")
    t = tolerance_for(comparison, tolerance, figure)
    if comparison.kind == "change":
        return _judge_change(comparison.direction, p, float(m), t)
    if p is None or isinstance(p, bool):
        raise ValueError(f"a {comparison.kind} comparison needs the paper's figure")
    if comparison.kind == "value" and measured.bound is not None:
        return _judge_bound(measured.bound, float(m), float(p), t)
    if comparison.kind == "value":
        ok = abs(m - p) <= t
        return Judgement(Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED,
                         f"|measured - paper| = {abs(m - p):.4g} {'<=' if ok else '>'} tolerance {t:.4g}")
    if comparison.direction == "at_most":
        ok = m <= p + t
        return Judgement(Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED,
                         f"measured {m:.4g} {'<=' if ok else '>'} bound {p:.4g} + tolerance {t:.4g}")
    ok = m >= p - t
    return Judgement(Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED,
                     f"measured {m:.4g} {'>=' if ok else '<'} bound {p:.4g} - tolerance {t:.4g}")


def _judge_bound(bound: str, m: float, p: float, t: float) -> Judgement:
    """A measured bound against the paper's figure: consistent unless the bound excludes the figure."""
    if bound == "lower":
        excluded = m > p + t
        relation = f"lower bound {m:.4g} {'>' if excluded else '<='} figure {p:.4g} + tolerance {t:.4g}"
    else:
        excluded = m < p - t
        relation = f"upper bound {m:.4g} {'<' if excluded else '>='} figure {p:.4g} - tolerance {t:.4g}"
    if excluded:
        return Judgement(Verdict.NOT_REPRODUCED, f"contradicts the paper: {relation}")
    return Judgement(Verdict.CONSISTENT_WITH_BOUND, f"does not exclude the paper's figure: {relation}")


def _judge_change(direction: str, p: float | bool | None, m: float, t: float) -> Judgement:
    if p is None:  # the paper gives a direction, no figure
        goes = "increase" if m > 0 else "decrease" if m < 0 else "none"
        if direction == "none":
            ok = abs(m) <= t
        else:
            ok = goes == direction
        return Judgement(Verdict.REPRODUCED if ok else Verdict.NOT_REPRODUCED,
                         f"claimed {direction}, measured {m:+.1%} ({goes})")
    if isinstance(p, bool):
        raise ValueError("a change comparison needs a numeric figure")
    gap = abs(m - p)
    if gap <= t:
        return Judgement(Verdict.REPRODUCED, f"|{m:+.1%} - {p:+.1%}| = {gap:.1%} <= tolerance {t:.1%}")
    if direction == "none" or abs(p) <= t:
        return Judgement(Verdict.NOT_REPRODUCED,
                         f"the paper's {p:+.1%} is within its tolerance {t:.1%} of no change; measured {m:+.1%} is {gap:.1%} away")
    if m != 0 and math.copysign(1, m) == math.copysign(1, p):
        return Judgement(Verdict.DIRECTION_ONLY, f"same direction, but |{m:+.1%} - {p:+.1%}| = {gap:.1%} > tolerance {t:.1%}")
    return Judgement(Verdict.NOT_REPRODUCED, f"measured {m:+.1%} against the paper's {p:+.1%}")


def final_verdict(paper_check: PaperCheck, measured: Judgement) -> Verdict:
    """Inconsistent in the paper itself when the paper check fails, else the measured verdict."""
    if paper_check is PaperCheck.INCONSISTENT:
        return Verdict.INCONSISTENT
    return measured.verdict
