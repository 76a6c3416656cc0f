"""Does the paper support its own text? Checks of each claim against the paper's other numbers.

Every check compares printed figures through their rounding intervals (see
:mod:`dit_repro.verify.figures`): a figure is inconsistent only when no unrounded values that
print as the paper's digits could make it true.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass

from dit_repro.paper import CellRef, PaperData, split_row_ref

from .claims import Claim, ClaimSet, Tolerance
from .figures import change_interval, coefficient_of_variation, table1_stats
from .rules import table4_pairs
from .verdicts import PaperCheck


@dataclass(frozen=True)
class ConsistencyResult:
    """The paper check of one claim."""

    check: PaperCheck
    """consistent, inconsistent or not applicable."""
    detail: str
    """The numbers it rests on."""
    flags: tuple[str, ...] = ()
    """What a reader must know even when the check passes, e.g. a figure computed against another
    baseline than the one the table's caption states, with the rows it used."""


def check_consistency(claim: Claim, claims: ClaimSet, param_count: Callable[[str], int]) -> ConsistencyResult:
    """Run the claim's consistency check. ``param_count(preset)`` counts a model's parameters as defined."""
    kind = claim.consistency.kind
    paper, tolerances = claims.paper, claims.tolerances
    if kind == "none":
        return ConsistencyResult(PaperCheck.NOT_APPLICABLE, "nothing else in the paper bears on it")
    if kind == "average_of_row":
        return _average_of_row(claim, paper)
    if kind in ("table1_within_cv", "table1_across_cv"):
        return _table1_spread(kind, paper)
    if kind == "table1_grand_mean":
        return _table1_grand_mean(claim, paper, tolerances[claim.comparison.tolerance])
    if kind == "family_params":
        return _family_params(claim, paper, param_count)
    if kind == "row_within_capacity":
        return _within_capacity(claim, paper)
    if kind == "doubling_search":
        return _doubling(claim, paper)
    if kind == "table2_order":
        return _table2_order(claim, paper)
    if kind == "rows_minimal":
        return _rows_minimal(claim, paper, tolerances["speed"])
    if kind == "headline_search":
        return _headline(claim, paper)
    if kind == "cells_support_text":
        return _cells_support_text(claim, paper)
    raise ValueError(f"{claim.id}: unknown consistency check {kind!r}")


def _text_interval(claim: Claim) -> tuple[float, float]:
    size = claim.comparison.size
    sign = -1.0 if claim.comparison.direction == "decrease" else 1.0
    low, high = sign * size.low, sign * size.high
    return min(low, high), max(low, high)


# ---------------------------------------------------------------------------------------- Table 1


def _average_of_row(claim: Claim, paper: PaperData) -> ConsistencyResult:
    check = paper.average_check(split_row_ref(claim.comparison.treated)[1])
    return ConsistencyResult(
        PaperCheck.CONSISTENT if check.consistent else PaperCheck.INCONSISTENT,
        f"the mean of its ten printed epochs is {check.mean:.4f}; printed average {check.printed.text} "
        f"(gap {check.gap:.4f} {'<=' if check.consistent else '>'} rounding {check.allowed:.4f})",
    )


def _table1_spread(kind: str, paper: PaperData) -> ConsistencyResult:
    stats = table1_stats(paper)
    if kind == "table1_within_cv":
        detail = "coefficient of variation over the ten epochs: " + ", ".join(f"{s.row} {s.cv:.1%}" for s in stats)
    else:
        detail = (f"run means {', '.join(f'{s.row} {s.mean:.3f}' for s in stats)}: coefficient of variation "
                  f"{coefficient_of_variation([s.mean for s in stats]):.1%} (with the printed averages "
                  f"{coefficient_of_variation([s.printed_average.value for s in stats]):.1%})")
    return ConsistencyResult(PaperCheck.NOT_APPLICABLE, f"the figure is read from Table 1 itself: {detail}")


def _table1_grand_mean(claim: Claim, paper: PaperData, tolerance: Tolerance) -> ConsistencyResult:
    """The text's typical rate against the mean of Table 1's runs, leaving out (as the speed tolerance
    does) a run whose printed average its own cells contradict."""
    stats = table1_stats(paper)
    kept = [s for s in stats if paper.average_check(s.row).consistent]
    left_out = [s.row for s in stats if s not in kept]
    entries = [v for s in kept for v in s.entries]
    grand = statistics.fmean(entries)
    every = statistics.fmean(v for s in stats for v in s.entries)
    printed = statistics.fmean(s.printed_average.value for s in stats)
    target = claim.comparison.size.value
    off = grand / target - 1
    ok = abs(off) <= tolerance.value
    return ConsistencyResult(
        PaperCheck.CONSISTENT if ok else PaperCheck.INCONSISTENT,
        f"mean of the {len(entries)} epoch rates of the consistent runs {grand:.3f} ({off:+.1%} from "
        f"{claim.comparison.size.text}; {'within' if ok else 'beyond'} the {tolerance.name} tolerance "
        f"{tolerance.value:.1%})" + (f", {', '.join(left_out)} left out" if left_out else "")
        + f"; all {sum(len(s.entries) for s in stats)} epoch rates {every:.3f} ({every / target - 1:+.1%}); "
        f"mean of the printed averages {printed:.3f}; median run {statistics.median(s.mean for s in stats):.3f}",
    )


# ---------------------------------------------------------------------------------------- Table 2


def _family_params(claim: Claim, paper: PaperData, param_count: Callable[[str], int]) -> ConsistencyResult:
    """The paper's anchor count times the architectures' parameter ratio must give the printed count."""
    treated = claim.comparison.cell("treated")
    anchor = CellRef(*split_row_ref(claim.consistency.params["anchor"]), "params")
    model = paper.row(treated.table, treated.row)["model"]
    anchor_model = paper.row(anchor.table, anchor.row)["model"]
    ratio = param_count(model) / param_count(anchor_model)
    anchor_count, printed = paper.number(anchor), paper.number(treated)
    low, high = anchor_count.low * ratio, anchor_count.high * ratio
    ok = printed.low <= high and low <= printed.high
    return ConsistencyResult(
        PaperCheck.CONSISTENT if ok else PaperCheck.INCONSISTENT,
        f"the paper's own {anchor_model} count {anchor_count.text} times the architectures' parameter ratio "
        f"{model}/{anchor_model} = {ratio:.4f} implies {low / 1e6:.1f}M-{high / 1e6:.1f}M; the table prints {printed.text}",
    )


def _within_capacity(claim: Claim, paper: PaperData) -> ConsistencyResult:
    cell = claim.comparison.cell("treated")
    if cell.metric != "memory_mib":
        cell = CellRef(cell.table, cell.row, "memory_mib", cell.setting)
    figure = paper.number(cell)
    gpu = paper.row(cell.table, cell.row).get("gpu") or claim.hardware.gpu
    capacity = paper.capacity_mib(gpu)
    ok = figure.value <= capacity.value
    return ConsistencyResult(
        PaperCheck.CONSISTENT if ok else PaperCheck.INCONSISTENT,
        f"{figure.text} MiB {'fits within' if ok else 'exceeds'} the {gpu}'s {capacity.text} MiB",
    )


def _doubling(claim: Claim, paper: PaperData) -> ConsistencyResult:
    """Table 2 pairs that double the GPUs at the same model, GPU type and global batch."""
    rows = [paper.row("table2", r) for r in paper.row_ids("table2")]
    low, high = _text_interval(claim)
    found, matches = [], []
    for a in rows:
        for b in rows:
            same = (a["model"], a["gpu"], a["global_batch_size"]) == (b["model"], b["gpu"], b["global_batch_size"])
            if not same or b["gpus"] != 2 * a["gpus"]:
                continue
            fa = paper.number(CellRef("table2", a["id"], "steps_per_s"))
            fb = paper.number(CellRef("table2", b["id"], "steps_per_s"))
            label = f"{a['model']} {a['gpu']} batch {a['global_batch_size']} x{a['gpus']}->x{b['gpus']}"
            if fa is None or fb is None:
                found.append(f"{label}: no speed (an OOM row)")
                continue
            interval = change_interval(fa, fb)
            found.append(f"{label}: {fa.text} -> {fb.text} ({interval.value:+.1%})")
            if interval.overlaps(low, high):
                matches.append(label)
    ok = bool(matches)
    figure = claim.comparison.size.text
    return ConsistencyResult(
        PaperCheck.CONSISTENT if ok else PaperCheck.INCONSISTENT,
        f"GPU-doubling pairs in Table 2: {'; '.join(found)}. "
        + (f"{figure} matches {', '.join(matches)}" if ok else f"none gives {figure}"),
    )


def _table2_order(claim: Claim, paper: PaperData) -> ConsistencyResult:
    """U-ViT beats DiT in every Table 2 pair of the same GPU type, count and batch."""
    metric = claim.comparison.metric
    rows = [paper.row("table2", r) for r in paper.row_ids("table2")]
    pairs, losses = [], []
    for u in (r for r in rows if r["model"].startswith("U-ViT")):
        for d in (r for r in rows if r["model"].startswith("DiT")):
            if (u["gpu"], u["gpus"], u["global_batch_size"]) != (d["gpu"], d["gpus"], d["global_batch_size"]):
                continue
            uo = paper.is_oom(CellRef("table2", u["id"], "memory_mib"))
            do = paper.is_oom(CellRef("table2", d["id"], "memory_mib"))
            uv, dv = paper.number(CellRef("table2", u["id"], metric)), paper.number(CellRef("table2", d["id"], metric))
            label = f"{u['model']} vs {d['model']} on {u['gpu']}x{u['gpus']} batch {u['global_batch_size']}"
            if do and not uo:
                pairs.append(f"{label}: DiT OOM")
            elif uv is not None and dv is not None:
                better = uv.value > dv.value if metric == "steps_per_s" else uv.value < dv.value
                pairs.append(f"{label}: {uv.text} vs {dv.text}")
                if not better:
                    losses.append(label)
    if not pairs:
        return ConsistencyResult(PaperCheck.NOT_APPLICABLE, "no Table 2 pair of the same hardware and batch")
    return ConsistencyResult(
        PaperCheck.INCONSISTENT if losses else PaperCheck.CONSISTENT,
        f"comparable pairs: {'; '.join(pairs)}" + (f"; DiT is better in {', '.join(losses)}" if losses else ""),
    )


# ---------------------------------------------------------------------------------------- Tables 3 and 4


def _rows_minimal(claim: Claim, paper: PaperData, tolerance: Tolerance) -> ConsistencyResult:
    base_ref = CellRef(*split_row_ref(claim.consistency.params["baseline"]), "steps_per_s")
    base = paper.number(base_ref)
    changes, large = [], []
    for ref in claim.consistency.params["rows"]:
        cell = CellRef(*split_row_ref(ref), "steps_per_s")
        interval = change_interval(base, paper.number(cell))
        changes.append(f"{paper.label(cell.table, cell.row)} {interval.value:+.1%}")
        if min(abs(interval.low), abs(interval.high)) > tolerance.value:
            large.append(cell.row)
    return ConsistencyResult(
        PaperCheck.INCONSISTENT if large else PaperCheck.CONSISTENT,
        f"structural rows against {base.text} steps/s: {'; '.join(changes)} "
        f"({'all within' if not large else 'not all within'} the {tolerance.name} tolerance {tolerance.value:.1%})",
    )


def _cells_support_text(claim: Claim, paper: PaperData) -> ConsistencyResult:
    c = claim.comparison
    a, b = paper.number(c.cell("baseline")), paper.number(c.cell("treated"))
    interval = change_interval(a, b)
    low, high = _text_interval(claim)
    ok = interval.overlaps(low, high)
    return ConsistencyResult(
        PaperCheck.CONSISTENT if ok else PaperCheck.INCONSISTENT,
        f"Table 4 {c.setting}: {paper.label(*split_row_ref(c.baseline))} {a.text} -> "
        f"{paper.label(*split_row_ref(c.treated))} {b.text} gives {interval.value:+.1%} "
        f"(rounding allows {interval.low:+.1%} to {interval.high:+.1%}); the text says {claim.figure}",
    )


def _headline(claim: Claim, paper: PaperData) -> ConsistencyResult:
    """The text's baseline and treated rows must give its figure; also list every Table 4 pair that does."""
    c = claim.comparison
    low, high = _text_interval(claim)
    settings = [c.setting] if c.setting else paper.settings("table4")
    intended, supported, giving = [], False, []
    for setting in settings:
        base_cell, treated_cell = c.cell("baseline", setting), c.cell("treated", setting)
        a, b = paper.number(base_cell), paper.number(treated_cell)
        if a is None or b is None:
            empty = base_cell if a is None else treated_cell
            oom = paper.is_oom(CellRef(empty.table, empty.row, "memory_mib", setting))
            intended.append(f"{setting}: no figure ({paper.label(empty.table, empty.row)} {'is OOM' if oom else 'is empty'})")
            continue
        interval = change_interval(a, b)
        intended.append(f"{setting}: {a.text} -> {b.text} = {interval.value:+.1%}")
        if interval.overlaps(low, high):
            supported = True
            giving.append(setting)
    matches = _pairs_matching(paper, c.metric, low, high)
    base_label, treated_label = paper.label(*split_row_ref(c.baseline)), paper.label(*split_row_ref(c.treated))
    detail = (f"the text's comparison, {base_label} -> {treated_label}: {'; '.join(intended)}. "
              f"Table 4 pairs giving {claim.figure}: {', '.join(matches) if matches else 'none'}")
    return ConsistencyResult(PaperCheck.CONSISTENT if supported else PaperCheck.INCONSISTENT, detail,
                             _caption_baseline_flags(claim, paper, giving))


def _caption_baseline_flags(claim: Claim, paper: PaperData, settings: list[str]) -> tuple[str, ...]:
    """A flag when the figure rests on a baseline other than the caption's (in the ``settings`` that give
    it), with what the caption's baseline gives."""
    c = claim.comparison
    caption = paper.tables["table4"]["setup"].get("caption_baseline")
    base_row = split_row_ref(c.baseline)[1]
    if caption is None or base_row == caption or not settings:
        return ()
    treated_row = split_row_ref(c.treated)[1]
    against = []
    for setting in paper.settings("table4"):
        a = paper.number(CellRef("table4", caption, c.metric, setting))
        b = paper.number(CellRef("table4", treated_row, c.metric, setting))
        if a is not None and b is not None:
            label = paper.tables["table4"]["settings"][setting]["label"]
            against.append(f"{change_interval(a, b).value:+.1%} on {label}")
    used = " and ".join(paper.tables["table4"]["settings"][s]["label"] for s in settings)
    return (f"{claim.figure} is {paper.label('table4', base_row)} -> {paper.label('table4', treated_row)} on {used}, "
            f"not against the caption's baseline {paper.label('table4', caption)}, which gives "
            f"{', '.join(against) or 'no figure'}",)


def _pairs_matching(paper: PaperData, metric: str, low: float, high: float) -> list[str]:
    return [f"{paper.label('table4', a)} -> {paper.label('table4', b)} on {setting} ({value:+.1%})"
            for a, b, setting, value in table4_pairs(paper, metric, low, high)]
