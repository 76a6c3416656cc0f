"""Ablation matrices: named lists of switch settings, one benchmark row each.

Built-in matrices are ``table4`` (the paper's Table 4), ``table3`` (Table 3's rows that differ
from U-ViT's script only in the switches), ``uvit`` (U-ViT's script as the paper ran it),
``attention`` (every backend) and ``compile`` (every torch.compile mode and scope). The first
three are built from the paper's data (:mod:`dit_repro.paper`), the one source of its setups,
with the device's AMP dtype in place of the paper's fp16. A custom matrix is written on the command line::

    NAME=ROW;ROW;...      ROW = [LABEL@]KEY:VALUE[+KEY:VALUE...]   or   [LABEL@]default

for example ``mine=ckpt:full+precision:bf16;plain@ckpt:none``. Keys are the fields of
:class:`dit_repro.config.Switches` or their short aliases (``ckpt``, ``attn``, ``scope``, ``every``).
Switches a row does not name take the bench base: ``features=cached`` and the Switches defaults.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from dit_repro.config import (
    ATTENTION_CHOICES,
    CompileMode,
    CompileScope,
    ConfigError,
    Switches,
)
from dit_repro.paper import load_paper

BUILTIN_MATRICES = ("table4", "table3", "uvit", "attention", "compile")

MATRIX_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
"""A matrix name: it becomes part of a baseline's file name, so no path separators and no leading dot."""

KEY_ALIASES = {"ckpt": "checkpointing", "attn": "attention", "scope": "compile_scope", "every": "checkpointing_k", "checkpoint_every": "checkpointing_k"}

# Keys a benchmark row may set: one process, so no data parallelism.
_ROW_KEYS = tuple(f.name for f in dataclasses.fields(Switches) if f.name != "distributed")

BASE_SWITCHES: dict[str, Any] = {"features": "cached"}
"""What a custom row starts from: cached latents (the VAE would otherwise dominate), Switches defaults."""


@dataclass(frozen=True)
class MatrixRow:
    """One configuration of a matrix."""

    name: str
    """Row label, unique within its matrix; baselines are matched by it."""
    switches: dict[str, Any]
    """Switch values of this row (field name -> value), complete enough to build Switches."""

    def resolved(self) -> Switches:
        """The validated Switches of this row."""
        return Switches(**self.switches)


@dataclass(frozen=True)
class RowRatio:
    """A named comparison between two rows of one run (machine drift cancels in it)."""

    name: str
    """What the ratio means, e.g. ``checkpointing saved-activation ratio``."""
    metric: str
    """``time`` (median step time) or ``saved_activation_bytes``."""
    numerator: str
    """Row name on top."""
    denominator: str
    """Row name below."""
    higher_is_better: bool
    """Direction of an improvement."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Matrix:
    """A named list of rows and the ratios between them that carry meaning."""

    name: str
    """``table4``, ``attention``, ``compile`` or a custom name."""
    rows: tuple[MatrixRow, ...]
    """The configurations, in run order."""
    ratios: tuple[RowRatio, ...] = field(default=())
    """Named row-to-row ratios the gate also checks."""
    notes: tuple[str, ...] = field(default=())
    """How the matrix maps the paper's wording to switches (printed with the results)."""

    def __post_init__(self) -> None:
        names = [row.name for row in self.rows]
        if not names:
            raise ConfigError(f"matrix {self.name!r} has no rows")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"matrix {self.name!r} repeats row names {duplicates}; give each row a LABEL@")
        for ratio in self.ratios:
            for row in (ratio.numerator, ratio.denominator):
                if row not in names:
                    raise ConfigError(f"ratio {ratio.name!r} names row {row!r}, which matrix {self.name!r} lacks")
        for row in self.rows:
            row.resolved()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (stored in the results file)."""
        return {
            "name": self.name,
            "rows": [{"name": r.name, "switches": dict(r.switches)} for r in self.rows],
            "ratios": [r.to_dict() for r in self.ratios],
            "notes": list(self.notes),
        }


def amp_precision(device_type: str) -> str:
    """The autocast dtype that stands for the paper's AMP on this device.

    fp16 on CUDA: the paper's AMP came from Accelerate, whose ``fp16`` mode is autocast to
    float16 with a grad scaler. On a CPU autocast's native dtype is bfloat16 (fp16 autocast is
    not what CPU kernels are built for); it runs there only at smoke scale.
    """
    return "fp16" if device_type == "cuda" else "bf16"


def paper_switches(switches: dict[str, str], device_type: str) -> dict[str, str]:
    """A paper row's switches with the paper's AMP (fp16, from Accelerate) as this device's AMP dtype."""
    amp = amp_precision(device_type)
    return {**switches, "precision": amp if switches["precision"] == "fp16" else switches["precision"]}


def table4(device_type: str) -> Matrix:
    """The paper's Table 4: original, GCP without TF32, GCP, GCP+AMP, GCP+features, GCP+AMP+features."""
    amp = amp_precision(device_type)
    paper = load_paper()
    return Matrix(
        name="table4",
        rows=tuple(MatrixRow(row_id, paper_switches(paper.row("table4", row_id)["switches"], device_type))
                   for row_id in paper.row_ids("table4")),
        ratios=(
            RowRatio("checkpointing saved-activation ratio (gcp / original)", "saved_activation_bytes",
                     "gcp", "original", higher_is_better=False),
            RowRatio("cached-latents speed-up (gcp / gcp+features)", "time", "gcp", "gcp+features",
                     higher_is_better=True),
        ),
        notes=(
            "Rows other than 'GCP with TF32 disabled' run with TF32 matmuls (precision=tf32), "
            "as the paper's naming implies.",
            f"AMP = autocast to {amp} ({'with a grad scaler, as Accelerate fp16' if amp == 'fp16' else 'CPU autocast dtype'}).",
            "features: live = VAE encoding every step; cached = the latent cache.",
            "The paper's change rates are relative to GCP.",
        ),
    )


def table3(device_type: str) -> Matrix:
    """Table 3's switchable rows: U-ViT's script (checkpointing + AMP, cached features) without one or the other."""
    paper = load_paper()
    rows = tuple(MatrixRow(row_id, {**paper_switches(row["switches"], device_type), "protocol": "uvit"})
                 for row_id in paper.row_ids("table3") if "switches" in (row := paper.row("table3", row_id)))
    return Matrix(name="table3", rows=rows, notes=(
        "Table 3's rows that change only switches (the others change U-ViT's architecture); run it with a U-ViT "
        "model, e.g. --model U-ViT-S/2",))


def uvit_matrix(device_type: str) -> Matrix:
    """U-ViT's own script as the paper ran it (Table 2's U-ViT rows): its switches and its recipe, one row."""
    switches = load_paper().protocols["uvit"]["switches"]
    return Matrix(name="uvit", rows=(MatrixRow("original", {**paper_switches(switches, device_type), "protocol": "uvit"}),),
                  notes=("U-ViT's training script: checkpointing, AMP, cached features, U-ViT's recipe; run it with a "
                         "U-ViT model, e.g. --model U-ViT-H/2",))


def attention_matrix(device_type: str) -> Matrix:
    """Every attention backend of the registry at the paper's best setting (GCP+AMP+features).

    On a CPU the rows run in fp32: bf16 kernels there are far slower than fp32 ones, and the fused
    GPU kernels are unavailable anyway. A backend that cannot run records ``unavailable``.
    """
    precision = amp_precision(device_type) if device_type == "cuda" else "fp32"
    rows = tuple(
        MatrixRow(name, {"attention": name, "checkpointing": "full", "precision": precision, "features": "cached"})
        for name in ATTENTION_CHOICES
        if name != "auto"
    )
    return Matrix(
        name="attention",
        rows=(MatrixRow("auto", {**rows[0].switches, "attention": "auto"}),) + rows,
        notes=(f"all rows: checkpointing=full, precision={precision}, features=cached",),
    )


def compile_matrix(device_type: str) -> Matrix:
    """Eager, then every torch.compile mode with each scope (whole model, each block)."""
    precision = amp_precision(device_type) if device_type == "cuda" else "fp32"
    base = {"checkpointing": "full", "precision": precision, "features": "cached"}
    rows = [MatrixRow("eager", {**base, "compile": CompileMode.OFF.value})]
    for mode in CompileMode:
        if mode is CompileMode.OFF:
            continue
        for scope in CompileScope:
            rows.append(
                MatrixRow(f"{mode.value}/{scope.value}", {**base, "compile": mode.value, "compile_scope": scope.value})
            )
    return Matrix(name="compile", rows=tuple(rows), notes=(f"all rows: checkpointing=full, precision={precision}, features=cached",))


def parse_custom(spec: str) -> Matrix:
    """Parse ``NAME=ROW;ROW;...`` (see the module docstring) into a Matrix."""
    name, sep, body = spec.partition("=")
    name = name.strip()
    if not sep or not name or not body.strip():
        raise ConfigError(
            f"custom matrix {spec!r} is not NAME=ROW;ROW;... (e.g. mine=ckpt:full+precision:bf16;ckpt:none)"
        )
    if name in BUILTIN_MATRICES:
        raise ConfigError(f"custom matrix name {name!r} clashes with a built-in matrix; choose another name")
    if not MATRIX_NAME.fullmatch(name):
        raise ConfigError(f"custom matrix name {name!r} is not a plain name: it becomes part of the baseline's file "
                          "name, so use letters, digits and . _ + - only (e.g. mine)")
    rows = tuple(_parse_row(text.strip()) for text in body.split(";") if text.strip())
    return Matrix(name=name, rows=rows, notes=("unnamed switches take features=cached and the Switches defaults",))


def _parse_row(text: str) -> MatrixRow:
    label, at, body = text.partition("@")
    if not at:
        label, body = text, text
    label, body = label.strip(), body.strip()
    if not label:
        raise ConfigError(f"row {text!r} has an empty LABEL before '@'")
    switches = dict(BASE_SWITCHES)
    if body and body != "default":
        for item in body.split("+"):
            key, colon, value = item.partition(":")
            key, value = key.strip(), value.strip()
            if not colon or not key or not value:
                raise ConfigError(f"row {text!r}: {item!r} is not KEY:VALUE (e.g. ckpt:full, precision:bf16)")
            key = KEY_ALIASES.get(key, key)
            if key not in _ROW_KEYS:
                valid = ", ".join(sorted(set(_ROW_KEYS) | set(KEY_ALIASES)))
                raise ConfigError(f"row {text!r}: unknown switch {key!r}; valid keys: {valid}")
            if key == "checkpointing_k":
                if not value.isdigit():
                    raise ConfigError(f"row {text!r}: checkpointing_k must be a positive integer, got {value!r}")
                switches[key] = int(value)
            else:
                switches[key] = value
    row = MatrixRow(label, switches)
    row.resolved()
    return row


def select_rows(matrix: Matrix, names: list[str]) -> Matrix:
    """``matrix`` cut down to the rows ``names`` (in the matrix's order) and the ratios between them."""
    known = [row.name for row in matrix.rows]
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"--rows names {unknown}, which matrix {matrix.name!r} lacks; its rows: {', '.join(known)}")
    keep = set(names)
    return dataclasses.replace(
        matrix, rows=tuple(row for row in matrix.rows if row.name in keep),
        ratios=tuple(r for r in matrix.ratios if r.numerator in keep and r.denominator in keep),
        notes=(*matrix.notes, f"rows selected with --rows: {', '.join(row for row in known if row in keep)}"))


def build_matrix(spec: str, device_type: str) -> Matrix:
    """A built-in matrix by name, or a custom one from ``NAME=ROW;...``."""
    if spec == "table4":
        return table4(device_type)
    if spec == "table3":
        return table3(device_type)
    if spec == "uvit":
        return uvit_matrix(device_type)
    if spec == "attention":
        return attention_matrix(device_type)
    if spec == "compile":
        return compile_matrix(device_type)
    if "=" in spec:
        return parse_custom(spec)
    raise ConfigError(
        f"unknown matrix {spec!r}; choose {', '.join(BUILTIN_MATRICES)} or a custom NAME=ROW;ROW;... "
        "(e.g. mine=ckpt:full+precision:bf16;ckpt:none)"
    )
