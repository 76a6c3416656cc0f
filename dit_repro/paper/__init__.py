"""The paper's tables as data: numbers as printed (so their rounding is known) and cell references.

One source for the paper's setups: the verifier reads its claims' numbers here, and the bench
builds its Table 4, Table 3 and U-ViT matrices from the rows' switches here.

A cell is named by a reference ``<table>/<row id>`` plus a metric (a column) and, for Table 4,
a setting (``a100x1`` or ``a100x2``). Numbers are stored as the strings the paper prints; a
:class:`Printed` keeps the value and half a unit of the last printed digit, which is how far
the unrounded figure can be from it.

Besides the tables, ``stated_sizes`` holds the shapes and sizes the text states (image and latent
shapes, the presets' patch sizes), each with the sentence of ``dit_repro/verify/text_coverage.json``
or the table row that states it; the verifier's rules check them against the architecture.
"""

from __future__ import annotations

import functools
import json
import re
import statistics
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Any

import jsonschema

OOM_MARK = "OOM"
"""How a cell that ran out of memory is stored."""

_SUFFIXES = {"%": Decimal("0.01"), "M": Decimal(10) ** 6, "h": Decimal(1), "": Decimal(1)}
_NUMBER = re.compile(r"^([+-]?\d+(?:\.\d+)?)\s*(%|M|h)?$")


class PaperDataError(ValueError):
    """The paper's data file, or a reference into it, is malformed."""


@dataclass(frozen=True)
class Printed:
    """A number as the paper prints it."""

    text: str
    """The printed text, e.g. ``0.77``, ``21%`` or ``675M``."""
    value: float
    """Its value in base units (``21%`` -> 0.21, ``675M`` -> 675e6)."""
    half_unit: float
    """Half a unit of the last printed digit, in base units: the rounding the text allows."""

    @property
    def low(self) -> float:
        """Smallest unrounded value that prints as ``text``."""
        return self.value - self.half_unit

    @property
    def high(self) -> float:
        """Largest unrounded value that prints as ``text``."""
        return self.value + self.half_unit


def parse_printed(text: str) -> Printed:
    """Parse ``0.77``, ``21%``, ``675M``, ``10h`` or ``66259``; anything else is a PaperDataError."""
    match = _NUMBER.match(text.strip())
    if not match:
        raise PaperDataError(f"{text!r} is not a printed number (expected e.g. 0.77, 21%, 675M, 66259)")
    digits, suffix = match.group(1), match.group(2) or ""
    try:
        number = Decimal(digits)
    except InvalidOperation:  # the regex admits only decimals; kept for a clear message
        raise PaperDataError(f"{text!r} is not a printed number") from None
    scale = _SUFFIXES[suffix]
    exponent = number.as_tuple().exponent
    half = Decimal(5) * Decimal(10) ** (int(exponent) - 1)
    return Printed(text=text.strip(), value=float(number * scale), half_unit=float(half * scale))


@dataclass(frozen=True)
class CellRef:
    """One cell: table, row, metric and (Table 4 only) setting."""

    table: str
    """``table1`` ... ``table4``."""
    row: str
    """The row id."""
    metric: str
    """The column: ``steps_per_s``, ``memory_mib``, ``params``, ``average``, ``epochs``."""
    setting: str | None = None
    """Table 4's ``a100x1`` / ``a100x2``; None elsewhere."""

    def __str__(self) -> str:
        parts = [self.table, self.row] + ([self.setting] if self.setting else []) + [self.metric]
        return "/".join(parts)


def split_row_ref(ref: str) -> tuple[str, str]:
    """``table4/gcp`` -> (``table4``, ``gcp``); anything else is a PaperDataError."""
    table, sep, row = ref.partition("/")
    if not sep or not table or not row or "/" in row:
        raise PaperDataError(f"row reference {ref!r} is not <table>/<row id> (e.g. table4/gcp)")
    return table, row


@dataclass(frozen=True)
class AverageCheck:
    """A printed average against the mean of the printed cells it averages."""

    row: str
    """The row."""
    mean: float
    """Mean of the printed cells."""
    printed: Printed
    """The printed average."""
    gap: float
    """|printed - mean|."""
    allowed: float
    """How far rounding alone can put them apart."""

    @property
    def consistent(self) -> bool:
        """True when rounding explains the gap."""
        return self.gap <= self.allowed


@dataclass(frozen=True)
class StatedSize:
    """A shape or size the text states (``paper.json``'s ``stated_sizes``)."""

    source: str
    """The sentence id (of ``dit_repro/verify/text_coverage.json``) or table row (``table2/<id>``) stating it."""
    quote: str
    """The words that state it."""
    quantity: str
    """``image_shape``, ``latent_shape``, ``patch_size``, ``hidden_size``, ``depth`` or ``tokens``."""
    value: tuple[int, ...]
    """The stated shape, or the one stated number."""
    model: str | None = None
    """The preset whose size it is; None for the shapes of the paper's setting."""


class PaperData:
    """The paper's tables, hardware and training protocols, read from ``paper.json``."""

    def __init__(self, data: dict[str, Any]) -> None:
        jsonschema.validate(data, paper_schema())
        self.raw = data
        """The validated document."""
        self.tables: dict[str, dict[str, Any]] = data["tables"]
        """Table id -> table (title, setup, rows)."""
        self.hardware: dict[str, dict[str, Any]] = data["hardware"]
        """GPU key (``A100``, ``RTX8000``) -> name and memory."""
        self.protocols: dict[str, dict[str, Any]] = data["protocols"]
        """``dit`` / ``uvit`` -> the switches of each code base's own training script."""
        self._rows = {
            table_id: {row["id"]: row for row in table["rows"]} for table_id, table in self.tables.items()
        }
        for table_id, table in self.tables.items():
            if len(self._rows[table_id]) != len(table["rows"]):
                raise PaperDataError(f"{table_id} repeats a row id")
        self._check_cells()
        self.stated_sizes: tuple[StatedSize, ...] = tuple(
            StatedSize(e["source"], e["quote"], e["quantity"], tuple(e["value"]), e.get("model"))
            for e in data.get("stated_sizes", {}).get("entries", []))
        """Shapes and sizes the text states, checked against the architecture by the verifier's rules."""
        self._check_stated_sizes()

    def _check_cells(self) -> None:
        """Every printed number parses, so that a typo fails at load time rather than mid-report."""
        for table_id, rows in self._rows.items():
            for row_id, row in rows.items():
                for key, value in row.items():
                    for text in _printed_strings(key, value):
                        try:
                            parse_printed(text)
                        except PaperDataError as exc:
                            raise PaperDataError(f"{table_id}/{row_id} {key}: {exc}") from None

    def _check_stated_sizes(self) -> None:
        """A size stated by a table row names that row's preset (sentence ids are checked against the text's list)."""
        for stated in self.stated_sizes:
            if not stated.source.startswith("table"):
                continue
            row = self.row(*split_row_ref(stated.source))
            if stated.model is None or row.get("model") != stated.model or stated.quote != stated.model:
                raise PaperDataError(f"stated size from {stated.source}: the row's model is {row.get('model')!r}, "
                                     f"the entry names {stated.model!r} and quotes {stated.quote!r}")

    # ------------------------------------------------------------------ rows and cells

    def row(self, table: str, row: str) -> dict[str, Any]:
        """The row dict, or a PaperDataError naming the valid ids."""
        if table not in self._rows:
            raise PaperDataError(f"unknown table {table!r}; tables: {', '.join(self._rows)}")
        rows = self._rows[table]
        if row not in rows:
            raise PaperDataError(f"{table} has no row {row!r}; rows: {', '.join(rows)}")
        return rows[row]

    def row_ids(self, table: str) -> list[str]:
        """Row ids of a table, in the paper's order."""
        return [row["id"] for row in self.tables[table]["rows"]]

    def settings(self, table: str) -> list[str]:
        """Table 4's settings (``a100x1``, ``a100x2``); empty for the other tables."""
        return list(self.tables[table].get("settings", {}))

    def raw_cell(self, ref: CellRef) -> Any:
        """The stored cell (printed string, list, ``OOM`` or None), validated against the table."""
        row = self.row(ref.table, ref.row)
        settings = self.settings(ref.table)
        if settings:
            if ref.setting not in settings:
                raise PaperDataError(f"{ref}: {ref.table} needs a setting, one of {', '.join(settings)}")
            row = row[ref.setting]
        elif ref.setting is not None:
            raise PaperDataError(f"{ref}: {ref.table} has no settings")
        if ref.metric not in row:
            raise PaperDataError(f"{ref}: no column {ref.metric!r}; columns: {', '.join(k for k in row if k != 'id')}")
        return row[ref.metric]

    def number(self, ref: CellRef) -> Printed | None:
        """The printed number of a cell; None for an empty or OOM cell."""
        value = self.raw_cell(ref)
        if value is None or value == OOM_MARK:
            return None
        if not isinstance(value, str):
            raise PaperDataError(f"{ref} holds {value!r}, not one printed number")
        return parse_printed(value)

    def is_oom(self, ref: CellRef) -> bool:
        """True when the cell says 'Out Of Memory'."""
        return self.raw_cell(ref) == OOM_MARK

    def numbers(self, ref: CellRef) -> list[Printed]:
        """A list cell (Table 1's epochs) as printed numbers."""
        value = self.raw_cell(ref)
        if not isinstance(value, list):
            raise PaperDataError(f"{ref} is not a list of numbers")
        return [parse_printed(text) for text in value]

    def capacity_mib(self, gpu: str) -> Printed:
        """Memory of one GPU of the paper's kind, as Table 2 prints it."""
        if gpu not in self.hardware:
            raise PaperDataError(f"unknown GPU {gpu!r}; known: {', '.join(self.hardware)}")
        return parse_printed(self.hardware[gpu]["memory_mib"])

    def average_check(self, row: str) -> AverageCheck:
        """Table 1's printed average of ``row`` against the mean of its printed epochs (the averages-vs-cells rule)."""
        epochs = self.numbers(CellRef("table1", row, "epochs"))
        printed = self.number(CellRef("table1", row, "average"))
        if printed is None or not epochs:
            raise PaperDataError(f"table1/{row} has no printed average or no epochs")
        mean = statistics.fmean(p.value for p in epochs)
        # The mean of rounded entries is within the largest half-unit of the mean of the true ones.
        allowed = max(p.half_unit for p in epochs) + printed.half_unit
        return AverageCheck(row, mean, printed, abs(printed.value - mean), allowed)

    def label(self, table: str, row: str) -> str:
        """The row's label as the paper prints it (Table 2 rows are named by model, GPUs and batch)."""
        data = self.row(table, row)
        if "label" in data:
            return data["label"]
        if table == "table2":
            return f"{data['model']} {data['gpu']}x{data['gpus']} batch {data['global_batch_size']}"
        return row


def _printed_strings(key: str, value: Any) -> list[str]:
    if key in ("id", "label", "model", "gpu", "sampling", "switches"):
        return []
    if isinstance(value, str):
        return [] if value == OOM_MARK else [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    if isinstance(value, dict):
        return [v for k, inner in value.items() for v in _printed_strings(k, inner)]
    return []


@functools.cache
def paper_schema() -> dict[str, Any]:
    """JSON Schema of ``paper.json``."""
    return json.loads(resources.files("dit_repro.paper").joinpath("paper.schema.json").read_text(encoding="utf-8"))


@functools.cache
def load_paper() -> PaperData:
    """The shipped ``paper.json`` (validated once per process)."""
    text = resources.files("dit_repro.paper").joinpath("paper.json").read_text(encoding="utf-8")
    return PaperData(json.loads(text))
