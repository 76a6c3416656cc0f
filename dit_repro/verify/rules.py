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
* **credited switch effects vs one-switch pairs**: every percentage the text credits to one
  switch against every pair of the table's rows that differ in that switch alone;
* **one switch on two hardware settings**: every pair of Table 4 rows that differ in one switch,
  whose effect on one A100 and on two goes in opposite directions (neither change's rounding
  interval reaching zero), or differs by more than twice the tolerance of the metric;
* **speed per multiply-add, memory per tensor byte**: every row of Tables 1-4 against the other
  rows of the same model on the same hardware setting, by the project's own multiply-add count
  and memory model of each row's setup (see :func:`cost_ratio_outliers`);
* **stated sizes vs architecture**: every shape or size the text states (``paper.json``'s
  ``stated_sizes``) against the architecture's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dit_repro.paper import CellRef, PaperData, Printed

from .claims import Claim, Comparison, Tolerance
from .figures import change_interval, paper_figure
from .machine import PAPER_IMAGE_SIZE, architecture_size, training_step_macs
from .measure import Setup, row_setup
from .memory_model import MemoryModel, shared_memory_model
from .verdicts import tolerance_for


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


def signed_interval(comparison: Comparison) -> tuple[float, float]:
    """The text's figure of a change (``size`` with the direction's sign) as the interval its rounding allows."""
    size: Printed = comparison.size
    sign = -1.0 if comparison.direction == "decrease" else 1.0
    low, high = sorted((sign * size.low, sign * size.high))
    return low, high


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
        low, high = signed_interval(c)
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



# ---------------------------------------------------------------------------------------- credited switch effects


def credited_switch(claim: Claim, paper: PaperData) -> tuple[str, str, str] | None:
    """The switch a claim credits its figure to: (switch, value before, value after) when the claim's two
    rows are rows of one table with switches and differ in that switch alone; None otherwise."""
    base, treated = claim.comparison.cell("baseline"), claim.comparison.cell("treated")
    if base is None or treated is None or base.table != treated.table:
        return None
    before = paper.row(base.table, base.row).get("switches")
    after = paper.row(treated.table, treated.row).get("switches")
    if before is None or after is None:
        return None
    differing = [k for k in before if before[k] != after[k]]
    if len(differing) != 1:
        return None
    return differing[0], before[differing[0]], after[differing[0]]


def single_switch_pairs(paper: PaperData, table: str, switch: str, before: str, after: str) -> list[tuple[str, str]]:
    """Every (baseline row, treated row) of ``table`` whose switches differ in ``switch`` alone, from ``before`` to ``after``."""
    rows = [(r, paper.row(table, r).get("switches")) for r in paper.row_ids(table)]
    rows = [(r, sw) for r, sw in rows if sw is not None]
    return [(a, b) for a, sa in rows for b, sb in rows
            if sa[switch] == before and sb[switch] == after and all(sa[k] == sb[k] for k in sa if k != switch)]


def credited_switch_effects(claims: Iterable[Claim], paper: PaperData, tolerance_of: Callable[[Claim], float]
                            ) -> list[Finding]:
    """Every percentage the text credits to one switch against the table's effect of that switch alone.

    A claim credits a switch when the figure is the text's own (``size``) and its two rows differ in
    that switch alone (their ``switches`` in ``paper.json``). On each setting the claim is about,
    every pair of the table's rows that differ in the same switch, from the same value to the same
    value, gives a change with its rounding interval. The figure agrees with the pair it is read
    from (the claim's own rows: one measurement, so rounding alone) when the intervals meet, and with
    any other pair (another run, in another context) when they are within ``tolerance_of(claim)`` of
    each other: the claim's tolerance as its verdict uses it (:func:`verdicts.tolerance_for`). A
    finding when no pair agrees, naming every pair.
    """
    findings = []
    for claim in claims:
        c = claim.comparison
        credited = credited_switch(claim, paper) if c.kind == "change" and c.size is not None else None
        if credited is None:
            continue
        switch, before, after = credited
        table, own = c.cell("baseline").table, (c.cell("baseline").row, c.cell("treated").row)
        low, high = signed_interval(c)
        tolerance = tolerance_of(claim)
        settings = [c.setting] if c.setting else (paper.settings(table) or [None])
        refs, described, agrees, others = [], [], False, 0
        for setting in settings:
            for pair in single_switch_pairs(paper, table, switch, before, after):
                a = paper.number(CellRef(table, pair[0], c.metric, setting))
                b = paper.number(CellRef(table, pair[1], c.metric, setting))
                if a is None or b is None:
                    continue
                interval = change_interval(a, b)
                allowed = 0.0 if pair == own else tolerance
                others += pair != own
                agrees = agrees or interval.overlaps(low - allowed, high + allowed)
                where = f" ({setting})" if setting else ""
                refs.append(f"{table}/{pair[0]} -> {table}/{pair[1]}{where}")
                described.append(f"{paper.label(table, pair[0])} -> {paper.label(table, pair[1])}{_on(paper, table, setting)} "
                                 f"{interval.value:+.1%}" + (" (the text's own rows)" if pair == own else ""))
        if described and not agrees:
            findings.append(Finding(
                "credited switch effects vs one-switch pairs", tuple(refs),
                f"{claim.id}: the text credits {switch} ({before} -> {after}) with {claim.figure}; the rows that "
                f"differ in {switch} alone give {'; '.join(described)}: not within rounding of its own rows"
                + (f", nor within the claim's tolerance {tolerance:.1%} of the other {others}" if others else "")))
    return findings


def _on(paper: PaperData, table: str, setting: str | None) -> str:
    return f" on {paper.tables[table]['settings'][setting]['label']}" if setting else ""


# ---------------------------------------------------------------------------------------- speed per multiply-add, memory per tensor byte


@dataclass(frozen=True)
class SetupCosts:
    """What a row's setup costs, by counts that need no GPU."""

    step_macs: Callable[[Setup], float]
    """Multiply-adds of one training step over the global batch."""
    tensor_bytes: Callable[[Setup], float] | None = None
    """Bytes of the tensors one GPU holds at the step's peak; None leaves memory out."""


def project_costs(memory_model: MemoryModel | None = None) -> SetupCosts:
    """The project's own counts: analytic multiply-adds (:func:`machine.training_step_macs`) and the
    memory model's peak (``memory_model``, default the process's shared one)."""
    model = memory_model or shared_memory_model()

    def step_macs(setup: Setup) -> float:
        per_image = training_step_macs(setup.model, setup.switches["checkpointing"], setup.switches["features"],
                                       setup.image_size or PAPER_IMAGE_SIZE)
        return float(per_image * setup.global_batch_size)

    return SetupCosts(step_macs, lambda setup: float(model.estimate(setup.memory_spec()).peak_bytes))


@dataclass(frozen=True)
class Normalised:
    """A printed figure times a factor its setup's cost fixes (rows of one setup that print the same figure: one entry)."""

    rows: tuple[str, ...]
    """``table/row`` references, with Table 4's setting."""
    labels: tuple[str, ...]
    """The rows as the paper names them."""
    printed: Printed
    """The printed figure."""
    factor: float
    """Multiply-adds per step (steps/s -> multiply-adds/s), or one over the tensor bytes (MiB -> MiB per byte)."""

    @property
    def value(self) -> float:
        """The figure times the factor."""
        return self.printed.value * self.factor

    @property
    def low(self) -> float:
        """Smallest value the figure's rounding allows (the counts are exact)."""
        return self.printed.low * self.factor

    @property
    def high(self) -> float:
        """Largest value the figure's rounding allows."""
        return self.printed.high * self.factor


def leave_one_out_outliers(entries: list[Normalised], margin: float) -> list[tuple[Normalised, float, float]]:
    """Entries whose value lies outside the others' range widened by ``margin``: (entry, low, high of that range).

    The spread method, a leave-one-out range: each entry is set against the smallest and the
    largest value of all the *other* entries (their rounding intervals included), widened by the
    relative ``margin``; it is an outlier when even its own rounding interval misses that range.

    Why this method: the others' range is the spread that comparable setups are seen to reach
    without the entry, so an entry inside it is no stranger than they are, whatever their number;
    leaving the entry out keeps it from widening the yardstick it is judged by (a mean and standard
    deviation over all entries would let one outlier inflate the spread that should expose it).
    The margin is how far one run of a setup strays from its repeats (the metric's tolerance), so
    an entry beyond both is explained neither by the others nor by run-to-run noise. Two others at
    least are needed: of two entries alone, which one is off cannot be told.
    """
    if len(entries) < 3:
        return []
    found = []
    for i, entry in enumerate(entries):
        others = entries[:i] + entries[i + 1:]
        low = min(o.low for o in others) * (1 - margin)
        high = max(o.high for o in others) * (1 + margin)
        if entry.low > high or entry.high < low:
            found.append((entry, low, high))
    return found


SPEED_COLUMNS = {"table1": "average"}
"""The speed column of each table (steps_per_s where not listed): Table 1 prints a run's speed as its average."""


def _paper_cells(paper: PaperData) -> list[tuple[str, str, str | None, Setup]]:
    """(table, row, setting, setup) of every row whose setup the architecture and switches fix.

    Table 3's rows without switches change U-ViT's structure, whose multiply-adds and tensors the
    presets do not count: they are left out.
    """
    cells = []
    for table in paper.tables:
        for row in paper.row_ids(table):
            if table == "table3" and "switches" not in paper.row(table, row):
                continue
            for setting in paper.settings(table) or [None]:
                cells.append((table, row, setting, row_setup(paper, f"{table}/{row}", setting)))
    return cells


def _comparable_groups(paper: PaperData, metric: str) -> dict[tuple[Any, ...], list[tuple[str, str, str | None, Setup, Printed]]]:
    """Rows with a printed ``metric`` (``speed`` or ``memory``), grouped into comparable setups.

    Comparable: the same model on the same GPU type and count, whatever the batch (the step's
    multiply-adds and tensors scale with it); for speed also the same precision, which sets the
    arithmetic's peak rate (:data:`dit_repro.flops.A100_PEAKS`: fp32 at an eighth of TF32's).
    """
    groups: dict[tuple[Any, ...], list[tuple[str, str, str | None, Setup, Printed]]] = {}
    for table, row, setting, setup in _paper_cells(paper):
        data = paper.row(table, row)
        cells = data[setting] if setting else data
        column = SPEED_COLUMNS.get(table, "steps_per_s") if metric == "speed" else "memory_mib"
        if column not in cells:
            continue
        printed = paper.number(CellRef(table, row, column, setting))
        if printed is None:
            continue
        key = (setup.model, setup.gpu, setup.gpus) + ((setup.switches["precision"],) if metric == "speed" else ())
        groups.setdefault(key, []).append((table, row, setting, setup, printed))
    return groups


def _merged(paper: PaperData, members: list[tuple[str, str, str | None, Setup, Printed]],
            factor: Callable[[Setup], float]) -> list[Normalised]:
    """One entry per setup and printed figure: a figure printed twice for one setup is one measurement."""
    merged: dict[tuple[Any, ...], list[tuple[str, str, str | None, Setup, Printed]]] = {}
    for member in members:
        merged.setdefault((member[3].key, member[4].text), []).append(member)
    entries = []
    for same in merged.values():
        refs = tuple(f"{t}/{r}" + (f" ({s})" if s else "") for t, r, s, _, _ in same)
        labels = tuple(paper.label(t, r) + _on(paper, t, s) for t, r, s, _, _ in same)
        entries.append(Normalised(refs, labels, same[0][4], factor(same[0][3])))
    return entries


def _table4_setting(paper: PaperData, gpu: str, gpus: int) -> str | None:
    """The Table 4 setting of this GPU type and count, whose tolerance applies; None where there is none."""
    for setting, where in paper.tables["table4"]["settings"].items():
        if (where["gpu"], where["gpus"]) == (gpu, gpus):
            return setting
    return None


def cost_ratio_outliers(paper: PaperData, costs: SetupCosts, tolerance: Callable[[str, str | None], float]
                        ) -> list[Finding]:
    """Every row whose speed per multiply-add or memory per tensor byte stands apart from its comparable rows.

    Speed per multiply-add is the row's steps/s times the multiply-adds of its step (the rate it
    computed at: a setup doing more work per step is expected to take longer by as much); memory
    per tensor byte is the printed MiB over the tensors the memory model holds for the setup (what
    the allocator, workspaces and context add on top). Each row's setup (model, batch, GPUs,
    switches) is :func:`measure.row_setup`'s, its costs ``costs``'s (:func:`project_costs`: the
    project's analytic multiply-adds and memory model). Comparable rows (:func:`_comparable_groups`)
    should show about the same ratio; :func:`leave_one_out_outliers` reports a row apart from the
    others, with the metric's tolerance on that hardware setting (``tolerance(metric, setting)``,
    Table 4's setting of the same GPU type and count, else the largest) as the margin. Costs are
    computed only for groups of three entries or more, where an outlier can be told.

    Read a memory finding knowing that the memory the model leaves out (CUDA context, workspaces,
    allocator cache) grows less than in proportion to the tensors: a row holding far more tensors
    than its group shows less memory per tensor byte.
    """
    findings = []
    halves = [("speed", "steps_per_s", costs.step_macs)]
    if costs.tensor_bytes is not None:
        tensor_bytes = costs.tensor_bytes
        halves.append(("memory", "memory_mib", lambda setup: 1.0 / tensor_bytes(setup)))
    for metric, column, factor in halves:
        for key, members in _comparable_groups(paper, metric).items():
            if len({(m[3].key, m[4].text) for m in members}) < 3:
                continue
            entries = _merged(paper, members, factor)
            margin = tolerance(column, _table4_setting(paper, key[1], key[2]))
            for entry, low, high in leave_one_out_outliers(entries, margin):
                others = [o for o in entries if o is not entry]
                findings.append(Finding(
                    f"{metric} per {'multiply-add' if metric == 'speed' else 'tensor byte'} of comparable rows",
                    entry.rows + tuple(r for o in others for r in o.rows),
                    _ratio_message(metric, key, entry, others, low, high, margin)))
    return findings


def _ratio_message(metric: str, key: tuple[Any, ...], entry: Normalised, others: list[Normalised], low: float,
                   high: float, margin: float) -> str:
    group = f"{key[0]} on {key[1]} x{key[2]}" + (f", {key[3]}" if len(key) > 3 else "")
    if metric == "speed":
        scale, unit = 1e-12, "T multiply-adds/s"
        what = f"{entry.printed.text} steps/s x {entry.factor / 1e12:.1f} T multiply-adds per step"
    else:
        scale, unit = 2.0**20, "MiB printed per MiB of tensors"
        what = f"{entry.printed.text} MiB over {1 / entry.factor / 2**20:,.0f} MiB of tensors"
    listed = "; ".join(f"{' = '.join(o.labels)} {o.value * scale:.2f}" for o in others)
    return (f"{' = '.join(entry.labels)} ({group}): {entry.value * scale:.2f} {unit} ({what}) lies outside "
            f"{low * scale:.2f}-{high * scale:.2f}, the other comparable rows' range widened by the {metric} tolerance "
            f"{margin:.1%} (others: {listed})")


# ---------------------------------------------------------------------------------------- stated sizes


def stated_sizes_vs_architecture(paper: PaperData, architecture: Callable[[str, str | None], tuple[int, ...]]
                                 ) -> list[Finding]:
    """Every shape or size the text states (``paper.stated_sizes``) that the architecture does not have.

    ``architecture(quantity, model)`` is the architecture's size (:func:`machine.architecture_size`):
    the SD VAE's image and latent shapes at the paper's image size, a preset's patch size, width,
    depth or token count.
    """
    findings = []
    for stated in paper.stated_sizes:
        actual = tuple(architecture(stated.quantity, stated.model))
        if tuple(stated.value) != actual:
            whose = f" of {stated.model}" if stated.model else ""
            findings.append(Finding(
                "stated sizes vs architecture", (stated.source,),
                f"{stated.source} ('{stated.quote}'): the text states {stated.quantity}{whose} "
                f"{'x'.join(map(str, stated.value))}, the architecture has {'x'.join(map(str, actual))}"))
    return findings


# ---------------------------------------------------------------------------------------- all rules


_TOLERANCE_OF_METRIC = {"steps_per_s": "speed", "average": "speed", "memory_mib": "memory"}
"""The named tolerance of each metric's changes: speed for steps/s (Table 1's average too), memory for MiB."""


@dataclass(frozen=True)
class ChangeTolerance:
    """The claims' named tolerances, as the rules use them."""

    tolerances: dict[str, Tolerance]
    """By name (claims.json's ``tolerances``)."""

    def __call__(self, metric: str, setting: str | None) -> float:
        """The tolerance of a change in ``metric`` on ``setting`` (None: no setting, the largest)."""
        return float(self.tolerances[_TOLERANCE_OF_METRIC[metric]].for_setting(setting))

    def of_claim(self, claim: Claim, paper: PaperData) -> float:
        """The claim's own tolerance in its comparison's units, as its verdict takes it."""
        c = claim.comparison
        return tolerance_for(c, self.tolerances[c.tolerance], paper_figure(claim, paper))


def change_tolerance(tolerances: dict[str, Any]) -> ChangeTolerance:
    """``tolerance(metric, setting)`` from the claims' named tolerances: speed for steps/s, memory for MiB."""
    return ChangeTolerance(dict(tolerances))


def run_rules(claims: Iterable[Claim], paper: PaperData, param_count: Callable[[str], int],
              tolerance: ChangeTolerance, costs: SetupCosts | None = None,
              architecture: Callable[[str, str | None], tuple[int, ...]] = architecture_size) -> list[Finding]:
    """Every rule's findings, rule by rule.

    ``tolerance`` as :func:`change_tolerance` gives it; ``costs`` the setups' multiply-adds and
    tensor bytes (default :func:`project_costs`, whose memory model takes seconds per DiT-XL/2 setup);
    ``architecture`` the architecture's sizes.
    """
    claims = list(claims)
    costs = costs if costs is not None else project_costs()
    return [*averages_vs_cells(paper), *parameter_counts(paper, param_count), *percentages_vs_pairs(claims, paper),
            *credited_switch_effects(claims, paper, lambda claim: tolerance.of_claim(claim, paper)),
            *switch_across_settings(paper, tolerance), *cost_ratio_outliers(paper, costs, tolerance),
            *stated_sizes_vs_architecture(paper, architecture)]
