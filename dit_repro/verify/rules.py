"""Consistency rules run over all of the paper's numbers, not claim by claim.

A claim's paper check (:mod:`dit_repro.verify.consistency`) asks whether the paper supports that
claim. These rules instead sweep every number a rule applies to and report each violation as a
finding that names the rows it used. Each rule is a function of the paper's data, so it can be
tested on synthetic tables:

* **averages vs cells**: every printed average against the mean of the cells it averages;
* **parameter counts vs architectures**: every printed parameter count against the preset's count;
* **percentages vs row pairs**: every percentage the text states for Table 4 against every pair
  of Table 4 rows that could produce it, naming the pairs and whether any uses the baseline the
  caption states;
* **one switch on two hardware settings**: every pair of Table 4 rows that differ in one switch,
  whose effect on one A100 and on two goes in opposite directions (neither change's rounding
  interval reaching zero), or differs by more than twice the tolerance of the metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dit_repro.paper import CellRef, PaperData, Printed

from .claims import Claim
from .figures import change_interval


@dataclass(frozen=True)
class Finding:
    """One violation found by a rule."""

    rule: str
    """The rule's name."""
    rows: tuple[str, ...]
    """The cells or rows it rests on (``table/row`` references, with the setting where there is one)."""
    message: str
    """What is wrong, with the numbers."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view."""
        return {"rule": self.rule, "rows": list(self.rows), "message": self.message}


def averages_vs_cells(paper: PaperData) -> list[Finding]:
    """Every Table 1 row whose printed average is further from the mean of its cells than rounding allows."""
    findings = []
    for row in paper.row_ids("table1"):
        check = paper.average_check(row)
        if not check.consistent:
            findings.append(Finding(
                "averages vs cells", (f"table1/{row}",),
                f"{paper.label('table1', row)}: printed average {check.printed.text}, mean of its cells "
                f"{check.mean:.4f} (gap {check.gap:.4f} > rounding {check.allowed:.4f})"))
    return findings


def parameter_counts(paper: PaperData, param_count: Callable[[str], int]) -> list[Finding]:
    """Every printed parameter count that the preset's architecture (counted as defined) does not round to."""
    findings = []
    seen: set[tuple[str, str]] = set()
    for row in paper.row_ids("table2"):
        printed = paper.number(CellRef("table2", row, "params"))
        model = paper.row("table2", row)["model"]
        if printed is None or (model, printed.text) in seen:
            continue
        seen.add((model, printed.text))
        counted = param_count(model)
        if not printed.low <= counted <= printed.high:
            findings.append(Finding(
                "parameter counts vs architectures", (f"table2/{row}",),
                f"{model}: the table prints {printed.text}, the architecture has {counted / 1e6:.1f}M parameters"))
    return findings


def table4_pairs(paper: PaperData, metric: str, low: float, high: float) -> list[tuple[str, str, str, float]]:
    """Every (baseline row, treated row, setting, change) of Table 4 whose change can be in [low, high]."""
    pairs = []
    rows = paper.row_ids("table4")
    for setting in paper.settings("table4"):
        for base in rows:
            for treated in rows:
                if base == treated:
                    continue
                a = paper.number(CellRef("table4", base, metric, setting))
                b = paper.number(CellRef("table4", treated, metric, setting))
                if a is None or b is None:
                    continue
                interval = change_interval(a, b)
                if interval.overlaps(low, high):
                    pairs.append((base, treated, setting, interval.value))
    return pairs


def percentages_vs_pairs(claims: Iterable[Claim], paper: PaperData) -> list[Finding]:
    """Every Table 4 percentage of the text against the row pairs that give it.

    A finding when no pair gives it, or when the pairs that do all start from another row than the
    baseline the caption states (the table's changes are read against that row).
    """
    caption = paper.tables["table4"]["setup"].get("caption_baseline")
    findings = []
    for claim in claims:
        c = claim.comparison
        if c.kind != "change" or c.size is None or not (c.baseline or "").startswith("table4/") or claim.figure is None:
            continue
        size: Printed = c.size
        sign = -1.0 if c.direction == "decrease" else 1.0
        low, high = sorted((sign * size.low, sign * size.high))
        pairs = table4_pairs(paper, c.metric, low, high)
        refs = tuple(f"table4/{a} -> table4/{b} ({s})" for a, b, s, _ in pairs)
        named = ", ".join(f"{paper.label('table4', a)} -> {paper.label('table4', b)} on {s} ({v:+.1%})"
                          for a, b, s, v in pairs)
        if not pairs:
            findings.append(Finding("percentages vs row pairs", (c.baseline, c.treated),
                                    f"{claim.id}: no Table 4 pair gives {claim.figure}"))
        elif caption is not None and all(a != caption for a, _, _, _ in pairs):
            findings.append(Finding(
                "percentages vs row pairs", refs,
                f"{claim.id}: {claim.figure} comes only from {named}; none starts from the caption's baseline "
                f"{paper.label('table4', caption)}"))
    return findings


def switch_across_settings(paper: PaperData, tolerance: Callable[[str, str], float]) -> list[Finding]:
    """Every one-switch pair of Table 4 rows whose effect differs between the hardware settings.

    ``tolerance(metric, setting)`` is the tolerance of a change in ``metric`` on ``setting``; two
    settings' changes are "very different" when further apart than the sum of their tolerances.
    """
    findings = []
    rows = paper.row_ids("table4")
    settings = paper.settings("table4")
    for i, base in enumerate(rows):
        for treated in rows[i + 1:]:  # each pair once, in the table's order
            switches_a = paper.row("table4", base)["switches"]
            switches_b = paper.row("table4", treated)["switches"]
            differing = [k for k in switches_a if switches_a[k] != switches_b[k]]
            if len(differing) != 1:
                continue
            for metric in ("steps_per_s", "memory_mib"):
                changes = {}
                for setting in settings:
                    a = paper.number(CellRef("table4", base, metric, setting))
                    b = paper.number(CellRef("table4", treated, metric, setting))
                    if a is not None and b is not None:
                        changes[setting] = change_interval(a, b)
                if len(changes) < 2:
                    continue
                (s1, c1), (s2, c2) = list(changes.items())[:2]
                opposite = (c1.low > 0 and c2.high < 0) or (c1.high < 0 and c2.low > 0)
                allowed = tolerance(metric, s1) + tolerance(metric, s2)
                far = abs(c1.value - c2.value) > allowed
                if opposite or far:
                    what = "opposite directions" if opposite else f"further apart than their tolerances together ({allowed:.1%})"
                    label = lambda setting: paper.tables["table4"]["settings"][setting]["label"]  # noqa: E731
                    findings.append(Finding(
                        "one switch on two hardware settings",
                        (f"table4/{base} -> table4/{treated} ({s1})", f"table4/{base} -> table4/{treated} ({s2})"),
                        f"{paper.label('table4', base)} -> {paper.label('table4', treated)} ({differing[0]} only), "
                        f"{metric}: {c1.value:+.1%} on {label(s1)}, {c2.value:+.1%} on {label(s2)}: {what}"))
    return findings


def run_rules(claims: Iterable[Claim], paper: PaperData, param_count: Callable[[str], int],
              tolerance: Callable[[str, str], float]) -> list[Finding]:
    """Every rule's findings, rule by rule; ``tolerance(metric, setting)`` as for :func:`switch_across_settings`."""
    claims = list(claims)
    return [*averages_vs_cells(paper), *parameter_counts(paper, param_count), *percentages_vs_pairs(claims, paper),
            *switch_across_settings(paper, tolerance)]


def change_tolerance(tolerances: dict[str, Any]) -> Callable[[str, str], float]:
    """``tolerance(metric, setting)`` from the claims' named tolerances: speed for steps/s, memory for MiB."""
    names = {"steps_per_s": "speed", "memory_mib": "memory"}
    return lambda metric, setting: float(tolerances[names[metric]].for_setting(setting))
