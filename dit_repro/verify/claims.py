"""The claims file: typed entries, validation against the paper's tables, and the tolerances.

``claims.json`` holds one entry per claim of the paper. Validation goes beyond its JSON Schema:
every row reference must name a cell of ``paper.json``, every direction must agree with the
cells it is read from, every check kind must be one the verifier knows, and every row of
Tables 1-4 must be covered by at least one claim.
"""

from __future__ import annotations

import functools
import json
import os
import re
import statistics
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from dit_repro.paper import (
    CellRef,
    PaperData,
    PaperDataError,
    Printed,
    load_paper,
    parse_printed,
    split_row_ref,
)

TABLE_REF = re.compile(r"^table[1-4]/")

DIRECTIONS = {
    "change": ("increase", "decrease", "none"),
    "value": ("equal",),
    "bound": ("at_most", "at_least"),
    "holds": ("true", "false"),
}
"""The directions each comparison kind admits."""

CONSISTENCY_KINDS = (
    "none", "average_of_row", "table1_within_cv", "table1_across_cv", "table1_grand_mean", "family_params",
    "row_within_capacity", "doubling_search", "table2_order", "rows_minimal", "headline_search", "cells_support_text",
)
"""Checks of the paper against its own numbers (implemented in :mod:`dit_repro.verify.consistency`)."""

MEASURE_KINDS = (
    "none", "params", "memory_model", "bench_value", "bench_change", "bench_best", "stability_within",
    "stability_across", "macs_ratio", "recompute_flops", "latent_shape", "equivalence",
)
"""Measurements this project can make (implemented in :mod:`dit_repro.verify.measure`)."""

_DERIVED_BOUNDS = ("table1_within_cv", "table1_across_cv")

METRIC_COLUMNS = {"oom": "memory_mib"}
"""Metrics read from a column of another name: whether a run ran out of memory is in the memory column."""


class ClaimsError(ValueError):
    """The claims file is malformed or does not fit the paper's tables."""


@dataclass(frozen=True)
class Comparison:
    """What a claim compares: cells or labels, the metric, the direction and the size."""

    kind: str
    """``change`` (treated relative to baseline), ``value``, ``bound`` or ``holds`` (a yes/no outcome)."""
    metric: str
    """The quantity: ``steps_per_s``, ``memory_mib``, ``params``, ``oom``, ``train_flops`` ..."""
    baseline: str | None
    """Row reference (``table4/gcp``) or a plain label; None when there is none."""
    treated: str | None
    """Row reference or a plain label."""
    setting: str | None
    """Table 4's ``a100x1`` / ``a100x2``; None elsewhere."""
    direction: str
    """increase, decrease, none, equal, at_most, at_least, true or false."""
    size: Printed | None
    """The text's own figure (magnitude); None when the figure is read from the cells or the paper gives none."""
    tolerance: str
    """Name of the tolerance (see :class:`Tolerance`)."""

    def cell(self, which: str, setting: str | None = None) -> CellRef | None:
        """The cell of ``baseline`` or ``treated`` for this metric (and ``setting``), or None for a label."""
        ref = getattr(self, which)
        if ref is None or not TABLE_REF.match(ref):
            return None
        table, row = split_row_ref(ref)
        column = METRIC_COLUMNS.get(self.metric, self.metric)
        return CellRef(table, row, column, setting if setting is not None else self.setting)

    @property
    def signed_size(self) -> float | None:
        """The text's figure with the direction's sign (a decrease of 59% -> -0.59)."""
        if self.size is None:
            return None
        return -self.size.value if self.direction == "decrease" else self.size.value


@dataclass(frozen=True)
class Hardware:
    """What the paper made the claim on."""

    gpu: str | None
    """``A100`` or ``RTX8000``; None for a machine-independent claim."""
    gpus: int | None
    """Number of GPUs; None for a machine-independent claim."""

    def describe(self) -> str:
        """``A100 x2`` or ``any (machine-independent)``."""
        return "any (machine-independent)" if self.gpu is None else f"{self.gpu} x{self.gpus}"


@dataclass(frozen=True)
class Check:
    """A consistency or measurement check: its kind and parameters."""

    kind: str
    """The registered check."""
    params: dict[str, Any] = field(default_factory=dict)
    """Everything else the entry gives the check."""


@dataclass(frozen=True)
class Claim:
    """One claim of the paper."""

    id: str
    """Stable identifier, e.g. ``amp-speed-a100x1``."""
    source: str
    """The table or section it comes from."""
    text: str
    """The claim, quoted or closely paraphrased."""
    figure: str | None
    """The paper's figure as the text prints it; None when read from the cells."""
    comparison: Comparison
    """What it compares."""
    hardware: Hardware
    """What the paper ran it on."""
    consistency: Check
    """How the paper's own numbers are checked against it."""
    measure: Check
    """How this project measures it."""
    note: str | None = None
    """How a qualitative claim is read quantitatively."""
    resolution: str | None = None
    """Why no measurement can tell this claim's effect from no effect (the effect is within its tolerance)."""

    def row_refs(self) -> list[str]:
        """Every row reference of the entry (comparison and consistency parameters)."""
        refs = [r for r in (self.comparison.baseline, self.comparison.treated) if r and TABLE_REF.match(r)]
        for key in ("anchor", "baseline"):
            value = self.consistency.params.get(key)
            if isinstance(value, str) and TABLE_REF.match(value):
                refs.append(value)
        refs += [r for r in self.consistency.params.get("rows", []) if TABLE_REF.match(r)]
        return refs


@dataclass(frozen=True)
class Tolerance:
    """How far a measurement may be from the paper's figure and still reproduce it."""

    name: str
    """``speed``, ``memory``, ``printed`` or ``exact``."""
    derive: str
    """How the value is obtained from the paper's data."""
    value: float | None
    """Relative for values, in points of the relative change for changes and bounds; None for ``printed``
    (half a unit of each figure's last digit)."""
    rationale: str
    """Why this tolerance."""
    detail: str
    """The numbers it was derived from."""
    per_setting: dict[str, float] = field(default_factory=dict)
    """Where the spread was measured separately per hardware setting (Table 4's one and two A100s), the
    value for each: a claim about one setting takes that setting's, and only a claim naming none
    takes :attr:`value`, the largest."""

    def for_setting(self, setting: str | None) -> float | None:
        """The tolerance of a claim about ``setting`` (None: no setting named)."""
        return self.per_setting.get(setting, self.value) if setting else self.value


@dataclass(frozen=True)
class ClaimSet:
    """The validated claims with their tolerances and the paper's tables."""

    claims: tuple[Claim, ...]
    """In file order."""
    tolerances: dict[str, Tolerance]
    """By name."""
    paper: PaperData
    """The tables the claims refer to."""

    def by_id(self, claim_id: str) -> Claim:
        """The claim with this id, or a ClaimsError listing none-such."""
        for claim in self.claims:
            if claim.id == claim_id:
                return claim
        raise ClaimsError(f"no claim {claim_id!r}")


# ---------------------------------------------------------------------------------------- loading


@functools.cache
def claims_schema() -> dict[str, Any]:
    """JSON Schema of ``claims.json``."""
    text = resources.files("dit_repro.verify").joinpath("claims.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def load_claims(path: str | os.PathLike[str] | None = None, paper: PaperData | None = None) -> ClaimSet:
    """Read and validate a claims file (default: the shipped ``claims.json``) against the paper's tables."""
    if path is None:
        text = resources.files("dit_repro.verify").joinpath("claims.json").read_text(encoding="utf-8")
        source = "claims.json"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ClaimsError(f"claims file {path} does not exist") from None
        source = str(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClaimsError(f"{source} is not JSON: {exc}") from None
    return parse_claims(data, paper or load_paper(), source)


def parse_claims(data: Any, paper: PaperData, source: str = "claims") -> ClaimSet:
    """Validate a claims document (schema, then against ``paper``) and build the typed claims."""
    errors = sorted(jsonschema.Draft202012Validator(claims_schema()).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "(top level)"
        raise ClaimsError(f"{source} does not follow claims.schema.json at {where}: {errors[0].message}")
    tolerances = {name: derive_tolerance(name, spec, paper) for name, spec in data["tolerances"].items()}
    claims = tuple(_claim(entry) for entry in data["claims"])
    problems = validate_claims(claims, tolerances, paper)
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ClaimsError(f"{source} has {len(problems)} problem(s):\n  {shown}{more}")
    return ClaimSet(claims, tolerances, paper)


def _claim(entry: dict[str, Any]) -> Claim:
    comparison = dict(entry["comparison"])
    size = comparison.pop("size")
    consistency, measure = dict(entry["consistency"]), dict(entry["measure"])
    return Claim(
        id=entry["id"],
        source=entry["source"],
        text=entry["text"],
        figure=entry["figure"],
        comparison=Comparison(size=None if size is None else parse_printed(size), **comparison),
        hardware=Hardware(**entry["hardware"]),
        consistency=Check(consistency.pop("kind"), consistency),
        measure=Check(measure.pop("kind"), measure),
        note=entry.get("note"),
        resolution=entry.get("resolution"),
    )


# ---------------------------------------------------------------------------------------- validation


def validate_claims(claims: tuple[Claim, ...], tolerances: dict[str, Tolerance], paper: PaperData) -> list[str]:
    """Every problem of the claims against the paper's tables, as messages naming the claim."""
    problems: list[str] = []
    seen: set[str] = set()
    for claim in claims:
        if claim.id in seen:
            problems.append(f"{claim.id}: duplicate id")
        seen.add(claim.id)
        problems += [f"{claim.id}: {p}" for p in _claim_problems(claim, tolerances, paper)]
    problems += [f"{ref}: no claim covers this row" for ref in uncovered_rows(claims, paper)]
    return problems


def _claim_problems(claim: Claim, tolerances: dict[str, Tolerance], paper: PaperData) -> list[str]:
    c = claim.comparison
    problems = []
    if c.direction not in DIRECTIONS[c.kind]:
        problems.append(f"direction {c.direction!r} does not fit a {c.kind} comparison ({', '.join(DIRECTIONS[c.kind])})")
    if c.tolerance not in tolerances:
        problems.append(f"unknown tolerance {c.tolerance!r}; defined: {', '.join(tolerances)}")
    if claim.consistency.kind not in CONSISTENCY_KINDS:
        problems.append(f"unknown consistency check {claim.consistency.kind!r}")
    if claim.measure.kind not in MEASURE_KINDS:
        problems.append(f"unknown measurement {claim.measure.kind!r}")
    if claim.measure.kind == "none" and not claim.measure.params.get("reason"):
        problems.append("a claim that is measured nowhere must say why (measure.reason)")
    if (claim.hardware.gpu is None) != (claim.hardware.gpus is None):
        problems.append("hardware gives a GPU without a count, or a count without a GPU")
    if claim.hardware.gpu is not None and claim.hardware.gpu not in paper.hardware:
        problems.append(f"unknown GPU {claim.hardware.gpu!r}; known: {', '.join(paper.hardware)}")
    settings = [c.setting] if c.setting else (paper.settings("table4") if claim.consistency.kind == "headline_search" else [None])
    for which in ("baseline", "treated"):
        for setting in settings:
            try:
                cell = c.cell(which, setting)
                if cell is not None:
                    paper.raw_cell(cell)
            except PaperDataError as exc:
                problems.append(f"{which}: {exc}")
    for ref in claim.row_refs():
        try:
            paper.row(*split_row_ref(ref))
        except PaperDataError as exc:
            problems.append(str(exc))
    if problems:
        return problems
    return _figure_problems(claim, paper)


def _figure_problems(claim: Claim, paper: PaperData) -> list[str]:
    """The size is given or readable from cells, and the direction agrees with the cells."""
    c = claim.comparison
    base, treated = c.cell("baseline"), c.cell("treated")
    if c.kind == "change" and c.size is None and base is not None and treated is not None:
        a, b = paper.number(base), paper.number(treated)
        if a is None or b is None:
            return [f"cells {base} and {treated} must both hold numbers"]
        actual = "none" if a.value == b.value else ("increase" if b.value > a.value else "decrease")
        if actual != c.direction:
            return [f"direction {c.direction!r} but the cells go {a.text} -> {b.text} ({actual})"]
    if c.kind == "value" and c.size is None and treated is None:
        return ["a value claim needs the text's figure (size) or a cell (treated)"]
    if c.kind == "value" and c.size is None and paper.number(treated) is None:
        return [f"cell {treated} holds no number"]
    if c.kind == "bound" and c.size is None and claim.consistency.kind not in _DERIVED_BOUNDS:
        return [f"a bound needs its figure (size) unless the consistency check derives it ({', '.join(_DERIVED_BOUNDS)})"]
    if c.kind == "holds" and c.metric == "oom" and treated is not None:
        expected = "true" if paper.is_oom(treated) else "false"
        if c.direction != expected:
            return [f"direction {c.direction!r} but cell {treated} says {'OOM' if expected == 'true' else 'it fits'}"]
    return []


def uncovered_rows(claims: tuple[Claim, ...] | list[Claim], paper: PaperData) -> list[str]:
    """Rows of Tables 1-4 that no claim refers to."""
    covered = {ref for claim in claims for ref in claim.row_refs()}
    return [f"{table}/{row}" for table in paper.tables for row in paper.row_ids(table) if f"{table}/{row}" not in covered]


# ---------------------------------------------------------------------------------------- tolerances


def derive_tolerance(name: str, spec: dict[str, Any], paper: PaperData) -> Tolerance:
    """Compute a named tolerance from the paper's own numbers, as its ``derive`` rule says."""
    derive, rationale = spec["derive"], spec["rationale"]
    if derive == "exact":
        return Tolerance(name, derive, 0.0, rationale, "")
    if derive == "printed_rounding":
        return Tolerance(name, derive, None, rationale, "")
    if derive == "run_to_run_spread":
        rows = spec.get("rows") or []
        if len(rows) < 2:
            raise ClaimsError(f"tolerance {name!r}: run_to_run_spread needs two or more Table 1 rows")
        means = {}
        entries: list[float] = []
        excluded = []
        for ref in rows:
            table, row = split_row_ref(ref)
            check = paper.average_check(row)
            if not check.consistent:  # a run whose printed average its own cells contradict is an anomaly
                excluded.append(f"{row} (printed average {check.printed.text}, mean of its cells {check.mean:.3f})")
                continue
            values = [p.value for p in paper.numbers(CellRef(table, row, "epochs"))]
            means[row] = statistics.fmean(values)
            entries += values
        if len(means) < 2:
            raise ClaimsError(f"tolerance {name!r}: fewer than two consistent Table 1 rows remain")
        grand = statistics.fmean(entries)
        worst = max(means, key=lambda r: abs(means[r] - grand))
        value = abs(means[worst] - grand) / grand
        detail = (f"run means {', '.join(f'{r} {m:.3f}' for r, m in means.items())} against their mean {grand:.3f}; "
                  f"largest deviation {worst} {means[worst] - grand:+.3f} ({value:.1%})"
                  + (f"; left out, as inconsistent with its own cells: {', '.join(excluded)}" if excluded else ""))
        return Tolerance(name, derive, value, rationale, detail)
    if derive == "identical_tensor_spread":
        pairs = spec.get("pairs") or []
        if not pairs:
            raise ClaimsError(f"tolerance {name!r}: identical_tensor_spread needs pairs of Table 4 rows")
        spreads = []
        for first, second in pairs:
            for setting in paper.settings("table4"):
                a = paper.number(CellRef(*split_row_ref(first), "memory_mib", setting))
                b = paper.number(CellRef(*split_row_ref(second), "memory_mib", setting))
                if a is not None and b is not None:
                    spreads.append((abs(b.value / a.value - 1), f"{second} {b.text} vs {first} {a.text} on {setting}", setting))
        if not spreads:
            raise ClaimsError(f"tolerance {name!r}: no pair holds two memory figures")
        value, where = max((spread, text) for spread, text, _ in spreads)
        per_setting: dict[str, float] = {}
        for spread, _, setting in spreads:
            per_setting[setting] = max(spread, per_setting.get(setting, 0.0))
        detail = "; ".join(f"{text} ({spread:.1%})" for spread, text, _ in spreads)
        return Tolerance(name, derive, value, rationale,
                         f"{detail}; a claim about one setting takes that setting's largest, others {value:.1%} ({where})",
                         per_setting)
    raise ClaimsError(f"tolerance {name!r}: unknown derive rule {derive!r}")
