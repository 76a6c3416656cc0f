"""Built-in matrices map the paper's rows to switches; custom matrices parse or fail clearly."""

from __future__ import annotations

import pytest

from dit_repro.bench.matrices import build_matrix, parse_custom
from dit_repro.config import (
    ATTENTION_CHOICES,
    Checkpointing,
    CompileMode,
    ConfigError,
    Features,
    Precision,
    Protocol,
)
from dit_repro.paper import load_paper
from dit_repro.verify.claims import load_claims


@pytest.mark.parametrize("device, amp", [("cuda", Precision.FP16), ("cpu", Precision.BF16)])
def test_table4_rows_are_the_papers(device: str, amp: Precision) -> None:
    matrix = build_matrix("table4", device)
    rows = {row.name: row.resolved() for row in matrix.rows}
    assert list(rows) == ["original", "gcp-no-tf32", "gcp", "gcp+amp", "gcp+features", "gcp+amp+features"]
    assert rows["original"].checkpointing is Checkpointing.NONE
    assert all(rows[n].checkpointing is Checkpointing.FULL for n in list(rows)[1:])
    assert rows["gcp-no-tf32"].precision is Precision.FP32
    assert {rows[n].precision for n in ("original", "gcp", "gcp+features")} == {Precision.TF32}
    assert rows["gcp+amp"].precision is amp and rows["gcp+amp+features"].precision is amp
    assert {n for n, s in rows.items() if s.features is Features.CACHED} == {"gcp+features", "gcp+amp+features"}
    assert {n for n, s in rows.items() if s.features is Features.LIVE} == {"original", "gcp-no-tf32", "gcp", "gcp+amp"}
    ratio_metrics = {r.metric for r in matrix.ratios}
    assert ratio_metrics == {"time", "saved_activation_bytes"}


def test_attention_matrix_covers_every_backend() -> None:
    matrix = build_matrix("attention", "cpu")
    assert [row.resolved().attention for row in matrix.rows] == list(ATTENTION_CHOICES)


def test_compile_matrix_covers_every_mode_and_scope() -> None:
    matrix = build_matrix("compile", "cpu")
    pairs = {(r.resolved().compile, r.resolved().compile_scope.value) for r in matrix.rows[1:]}
    assert matrix.rows[0].resolved().compile is CompileMode.OFF
    assert pairs == {(mode, scope) for mode in CompileMode if mode is not CompileMode.OFF
                     for scope in ("model", "blocks")}


def test_custom_matrix_syntax_labels_aliases_and_defaults() -> None:
    matrix = parse_custom("mine=fast@ckpt:full+precision:bf16+attn:math;ckpt:none;base@default")
    assert [row.name for row in matrix.rows] == ["fast", "ckpt:none", "base"]
    fast = matrix.rows[0].resolved()
    assert (fast.checkpointing, fast.precision, fast.attention) == (Checkpointing.FULL, Precision.BF16, "math")
    # Unnamed switches: cached latents, the rest Switches' defaults.
    base = matrix.rows[2].resolved()
    assert base.features is Features.CACHED and base.precision is Precision.FP32


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("nothing", "unknown matrix"),
        ("mine=", "NAME=ROW"),
        ("mine=ckpt", "KEY:VALUE"),
        ("mine=speed:fast", "unknown switch 'speed'"),
        ("mine=precision:fp8", "unknown precision 'fp8'"),
        ("mine=distributed:ddp", "unknown switch 'distributed'"),
        ("mine=a@ckpt:full;a@ckpt:none", "repeats row names"),
        ("mine=every:two", "positive integer"),
        ("table4=ckpt:full", "clashes with a built-in"),
    ],
)
def test_bad_matrix_specs_name_the_problem(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        build_matrix(spec, "cpu")


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_the_paper_matrices_are_its_rows_switches(device: str) -> None:
    # One source: each row of table4 and table3 is a row of the paper's data, with its switches.
    paper = load_paper()
    table4 = build_matrix("table4", device)
    assert [row.name for row in table4.rows] == paper.row_ids("table4")
    for row in table4.rows:
        printed = paper.row("table4", row.name)["switches"]
        assert {k: v for k, v in row.switches.items() if k != "precision"} == {
            k: v for k, v in printed.items() if k != "precision"}
    table3 = build_matrix("table3", device)
    assert [row.name for row in table3.rows] == ["original", "no-gcp", "no-amp"]
    assert all(row.resolved().protocol is Protocol.UVIT for row in table3.rows)
    assert build_matrix("uvit", device).rows[0].resolved().checkpointing is Checkpointing.FULL


def test_every_matrix_a_claim_names_can_be_built_with_its_rows() -> None:
    named = 0
    for claim in load_claims().claims:
        params = claim.measure.params
        if "matrix" not in params:
            continue
        named += 1
        matrix = build_matrix(params["matrix"], "cuda")
        rows = [row.name for row in matrix.rows]
        named_rows = [params[k] for k in ("row", "baseline_row") if k in params] + list(params.get("treated_rows", []))
        assert set(named_rows) <= set(rows), (claim.id, named_rows, rows)
    assert named == 42


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "sp ace", ""])
def test_a_custom_matrix_name_that_is_not_a_plain_name_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="plain name|NAME=ROW"):
        parse_custom(f"{name}=ckpt:full")


def test_a_results_file_whose_matrix_name_is_a_path_is_refused() -> None:
    from dit_repro.bench.schema import ResultsError, validate_results
    from tests.bench_documents import make_job, make_results

    document = make_results([make_job("a", times=[0.2, 0.25, 0.3], device_type="cpu")])
    document["matrix"]["name"] = "../../outside"
    with pytest.raises(ResultsError, match="matrix/name"):
        validate_results(document)


@pytest.mark.parametrize("slug", ["..", ".", "../x", "/etc", "a\x00b", ""])
def test_a_results_file_whose_device_slug_is_not_a_plain_name_is_refused(slug: str) -> None:
    """The slug names the baselines folder that `bench --record` writes and the gate reads."""
    from dit_repro.bench.schema import ResultsError, validate_results
    from tests.bench_documents import make_job, make_results

    document = make_results([make_job("a", times=[0.2, 0.25, 0.3], device_type="cpu")])
    document["device"]["slug"] = slug
    with pytest.raises(ResultsError, match="device/slug"):
        validate_results(document)


@pytest.mark.parametrize("row", ["../../escape", "/etc/passwd", "a\x00b", "..", "ckpt:full+precision:bf16"])
def test_a_row_name_becomes_a_plain_log_file_name(row: str) -> None:
    """Row names come from matrices (custom ones from the command line) and name each worker's log."""
    from pathlib import PurePath

    from dit_repro.bench.runner import log_name

    name = log_name(row)
    assert PurePath(name).name == name and "\x00" not in name and name not in (".", "..")
