"""The results file: schema validation on load, clear errors, atomic writes, document assembly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dit_repro.atomic import default_file_mode
from dit_repro.bench.results import compute_block
from dit_repro.bench.schema import (
    ResultsError,
    load_results,
    results_schema,
    validate_results,
    write_results,
)
from tests.bench_documents import make_job, make_results


def _document() -> dict:
    times = [0.2, 0.25, 0.3, 0.22]
    return make_results([make_job("a", times=times, device_type="cuda"),
                         make_job("b", times=None, device_type="cuda", status="oom")], "cuda")


def test_assembled_document_follows_the_schema_and_round_trips(tmp_path: Path) -> None:
    document = _document()
    path = write_results(tmp_path / "r.json", document)
    assert load_results(path) == document
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == default_file_mode()  # not mkstemp's 0600
    row = document["rows"][0]
    assert row["timing"]["step_times_s"] == [0.2, 0.25, 0.3, 0.22]
    assert row["timing"]["median_s"] == pytest.approx(0.235)
    assert row["timing"]["images_per_s"] == pytest.approx(8 / 0.235)
    assert document["rows"][1]["status"] == "oom" and document["rows"][1]["timing"] is None


def test_schema_file_is_valid_draft_2020_12() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(results_schema())


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda d: d["rows"][0].update(status="exploded"), "rows/0/status"),
        (lambda d: d["rows"][0]["timing"].pop("step_times_s"), "rows/0/timing"),
        (lambda d: d["device"].update(slug="has space"), "device/slug"),
        (lambda d: d.pop("environment"), "(top level)"),
    ],
)
def test_invalid_documents_name_the_offending_field(mutate, where: str) -> None:
    document = _document()
    mutate(document)
    with pytest.raises(ResultsError, match=where.replace("(", r"\(").replace(")", r"\)")):
        validate_results(document)


def test_repeated_row_names_are_refused() -> None:
    document = _document()
    document["rows"][1]["name"] = "a"
    with pytest.raises(ResultsError, match="repeats row names"):
        validate_results(document)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])  # -inf already fails the schema's minimum
def test_non_finite_measurements_are_refused_naming_row_and_field(value: float) -> None:
    document = _document()
    document["rows"][0]["timing"]["step_times_s"][3] = value
    with pytest.raises(ResultsError, match=r"non-finite number \((nan|inf|-inf)\) at rows/0/timing/step_times_s/3"):
        validate_results(document)


def test_unreadable_files_are_results_errors(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ResultsError, match="not JSON"):
        load_results(bad)
    bad.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(ResultsError, match="results.schema.json"):
        load_results(bad)


def test_model_flops_exclude_recompute_and_mfu_uses_the_peak() -> None:
    info = {"train_flops_per_image": 3e9, "forward_gmacs_per_image": 0.5, "images_per_step": 4}
    peak = {"precision": "bf16", "flops_per_s": 1e12, "source": "test"}
    block = compute_block(info, median_s=0.5, peak=peak)
    assert block["model_flops_per_step"] == 1.2e10
    assert block["model_tflops_per_s"] == pytest.approx(0.024)
    assert block["mfu"] == pytest.approx(0.024)
    assert block["peak"] == peak
    assert compute_block(info, 0.5, {**peak, "flops_per_s": None})["mfu"] is None
