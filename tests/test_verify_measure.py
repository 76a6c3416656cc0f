"""Measurements from benchmark results files, and the reasons given when a claim cannot be measured."""

from __future__ import annotations

import statistics

import pytest

from dit_repro.verify.claims import load_claims
from dit_repro.verify.measure import Evidence
from dit_repro.verify.results import ResultsFile
from dit_repro.verify.verdicts import Measurement, NotCheckable
from tests.verify_documents import flat, results_file


@pytest.fixture(scope="module")
def claims():
    return load_claims()


def evidence(claims, files: list[ResultsFile], gpu_here: bool = False) -> Evidence:
    return Evidence(claims, files, run_equivalence=False, gpu_here=gpu_here)


def test_a_speed_change_is_read_from_gpu_results(claims) -> None:
    doc = results_file({"gcp": flat(0.120), "gcp+amp": flat(0.100)})
    measured = evidence(claims, [doc]).measure(claims.by_id("amp-speed-a100x1"))
    assert isinstance(measured, Measurement)
    assert measured.value == pytest.approx(0.120 / 0.100 - 1)
    assert "NVIDIA H100" in measured.hardware and "DiT-S/2 batch 8" in measured.hardware


def test_the_median_over_repeated_runs_is_used(claims) -> None:
    docs = [results_file({"gcp": flat(0.1), "gcp+amp": flat(t)}, name=f"{i}.json") for i, t in enumerate((0.08, 0.09, 0.05))]
    measured = evidence(claims, docs).measure(claims.by_id("amp-speed-a100x1"))
    assert measured.value == pytest.approx(statistics.median([0.1 / 0.08 - 1, 0.1 / 0.09 - 1, 0.1 / 0.05 - 1]))
    assert "median of 3 runs" in measured.display


def test_claims_on_two_or_four_gpus_say_how_many_are_needed(claims) -> None:
    doc = results_file({"gcp": flat(0.1), "gcp+amp": flat(0.09)})
    two = evidence(claims, [doc]).measure(claims.by_id("amp-speed-a100x2"))
    four = evidence(claims, [doc]).measure(claims.by_id("t2-speed-dit-xl2-a100x4-b128"))
    assert isinstance(two, NotCheckable) and two.reason.startswith("two GPUs needed")
    assert isinstance(four, NotCheckable) and four.reason.startswith("four GPUs needed")


def test_without_gpu_results_speed_is_not_checkable_and_the_reason_says_why(claims) -> None:
    claim = claims.by_id("features-speed-a100x1")
    none = evidence(claims, []).measure(claim)
    assert "no GPU here" in none.reason and "CPU timing ratios do not transfer" in none.reason
    cpu = evidence(claims, [results_file({"gcp": flat(1.0), "gcp+features": flat(0.5)}, device="cpu")]).measure(claim)
    assert "measured on a CPU" in cpu.reason
    here = evidence(claims, [], gpu_here=True).measure(claim)
    assert "--scale small" in here.reason


def test_a_row_that_ran_out_of_memory_leaves_the_change_unmeasured(claims) -> None:
    doc = results_file({"original": "oom", "gcp+amp+features": flat(0.1)})
    measured = evidence(claims, [doc]).measure(claims.by_id("headline-speed-95"))
    assert isinstance(measured, NotCheckable) and "original oom" in measured.reason


def test_absolute_figures_need_the_paper_s_gpu_model_and_batch(claims) -> None:
    doc = results_file({"gcp": flat(0.1)}, model="DiT-XL/2", batch=128, image_size=256)
    measured = evidence(claims, [doc]).measure(claims.by_id("t4-gcp-a100x1-speed"))
    assert isinstance(measured, NotCheckable) and "only on the paper's A100 x1" in measured.reason


def test_attention_bound_takes_the_best_named_backend(claims) -> None:
    doc = results_file({"math": flat(0.100), "flash": flat(0.095), "xformers": "unavailable"}, matrix="attention")
    measured = evidence(claims, [doc]).measure(claims.by_id("flash-at-most-1pct"))
    assert measured.value == pytest.approx(0.100 / 0.095 - 1)
    assert "xformers unavailable" in measured.detail


def test_u_vit_claims_need_u_vit_results(claims) -> None:
    doc = results_file({"math": flat(0.1), "xformers": flat(0.08)}, matrix="attention")
    measured = evidence(claims, [doc]).measure(claims.by_id("xformers-uvit-17"))
    assert isinstance(measured, NotCheckable) and "U-ViT model" in measured.reason


def test_stability_within_a_run_cuts_the_steps_into_ten_blocks(claims) -> None:
    times = [0.1] * 10 + [0.2] * 10  # five blocks at 10 steps/s, five at 5 steps/s
    doc = results_file({"gcp": times})
    measured = evidence(claims, [doc]).measure(claims.by_id("t1-stable-within"))
    rates = [10.0] * 5 + [5.0] * 5
    assert measured.value == pytest.approx(statistics.stdev(rates) / statistics.fmean(rates))


def test_stability_across_runs_needs_repeated_files_of_one_setup(claims) -> None:
    claim = claims.by_id("t1-stable-across")
    one = evidence(claims, [results_file({"gcp": flat(0.1)})]).measure(claim)
    assert isinstance(one, NotCheckable) and "two or more" in one.reason
    docs = [results_file({"gcp": flat(t)}, name=f"{t}.json") for t in (0.10, 0.11)]
    measured = evidence(claims, docs).measure(claim)
    assert measured.value == pytest.approx(statistics.stdev([10.0, 1 / 0.11]) / statistics.fmean([10.0, 1 / 0.11]))


def test_paper_scale_gpu_results_take_precedence_over_the_memory_model(claims) -> None:
    doc = results_file({"original": "oom", "gcp": flat(0.5)}, model="DiT-XL/2", batch=128, image_size=256)
    measured = evidence(claims, [doc]).measure(claims.by_id("t4-original-a100x1-oom"))
    assert measured.value is True and "benchmark at the paper's scale" in measured.detail


def test_not_measurable_claims_carry_their_reason(claims) -> None:
    measured = evidence(claims, []).measure(claims.by_id("equivalence-fid"))
    assert isinstance(measured, NotCheckable) and "Inception" in measured.reason
    skipped = evidence(claims, []).measure(claims.by_id("equivalence-loss-amp"))
    assert skipped.reason == "equivalence checks skipped (--skip-equivalence)"


def test_identical_tensors_are_not_left_to_the_memory_model(claims) -> None:
    measured = evidence(claims, []).measure(claims.by_id("t4-gcp-no-tf32-a100x2-memory"))
    assert isinstance(measured, NotCheckable) and "identical tensors" in measured.reason


def test_machine_independent_counts(claims) -> None:
    ev = evidence(claims, [])
    assert ev.measure(claims.by_id("t2-params-ditl2")).value == 458_102_816
    assert ev.measure(claims.by_id("features-latent-shape")).display == "4x32x32"
    structure = ev.measure(claims.by_id("s33-not-structure"))
    assert structure.value > 0  # U-ViT-H/2 does more multiply-adds per image than DiT-XL/2


@pytest.mark.equivalence
@pytest.mark.slow
def test_the_checkpointing_check_finds_bitwise_equality(claims) -> None:
    measured = Evidence(claims, [], run_equivalence=True).measure(claims.by_id("equivalence-loss-checkpointing"))
    print(measured.display)
    assert measured.value is True and "loss bitwise equal" in measured.display
    assert measured.display.split("; ")[1].split(" of ")[0] == measured.display.split(" of ")[1].split(" ")[0]
