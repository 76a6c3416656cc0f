"""The results file: its JSON Schema (results.schema.json beside this module), loading and writing."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from dit_repro.atomic import write_json_atomic

SCHEMA_ID = "dit-repro/bench-results"
SCHEMA_VERSION = 2


class ResultsError(ValueError):
    """A results or baseline file that cannot be read or does not follow the schema."""


@functools.cache
def results_schema() -> dict[str, Any]:
    """The JSON Schema of a results file (also the schema of a measured baseline)."""
    text = resources.files("dit_repro.bench").joinpath("results.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def validate_results(data: Any, source: str = "results") -> dict[str, Any]:
    """Return ``data`` if it follows the schema, else raise ResultsError naming the first violation."""
    if isinstance(data, dict) and data.get("schema") == SCHEMA_ID and data.get("schema_version") == 1:
        raise ResultsError(
            f"{source} has results schema version 1, written before baselines were keyed by hardware; "
            "record it again with `dit-repro bench --record` on the hardware it is for")
    validator = jsonschema.Draft202012Validator(results_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise ResultsError(
            f"{source} does not follow results.schema.json at {where}: {first.message}"
            + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else "")
        )
    row_names = [row["name"] for row in data["rows"]]
    if len(set(row_names)) != len(row_names):
        raise ResultsError(f"{source} repeats row names: {row_names}")
    for where, value in _numbers(data):
        if not math.isfinite(value):
            # JSON Schema's "minimum" lets NaN through (every comparison with NaN is false).
            raise ResultsError(f"{source} holds a non-finite number ({value}) at {where}: a measurement "
                               "must be a finite number; the run that wrote it is broken, measure again")
    return data


def _numbers(value: Any, where: str = "") -> Iterator[tuple[str, float]]:
    """Every float in a JSON document with its path (``rows/2/timing/median_s``)."""
    if isinstance(value, float):
        yield where or "(top level)", value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{where}/{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{where}/{index}" if where else str(index))


def load_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a results (or baseline) file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"results file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not JSON: {exc}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path} is not JSON: it is not UTF-8 text") from None
    except OSError as exc:  # a folder, or a file this user may not read
        raise ResultsError(f"results file {path} cannot be read ({exc.strerror or exc})") from None
    return validate_results(data, source=str(path))


def write_results(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Validate, then write a results file atomically."""
    validate_results(data, source=str(path))
    # Fields keep the order the document was assembled in, which reads better than sorted keys;
    # NaN is refused because it is not JSON, and readers other than Python's would reject the file.
    return write_json_atomic(path, data, sort_keys=False, allow_nan=False)
