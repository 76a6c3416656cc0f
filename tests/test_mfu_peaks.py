"""MFU against the peak of each row's precision, --peak-flops for every row, and VAE encode FLOPs kept apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from dit_repro import flops
from dit_repro.bench.hardware import gpu_key
from dit_repro.bench.report import results_markdown
from dit_repro.bench.results import PEAK_OVERRIDE_SOURCE, device_block, row_record
from dit_repro.bench.schema import load_results, validate_results
from dit_repro.bench.workload import TrainerWorkload
from dit_repro.cli import main
from dit_repro.config import Switches
from dit_repro.data.vae import SD_VAE_CONFIG_DIR
from tests.bench_documents import make_job, make_results
from tests.data_support import build_cache, train_config

H100_SXM = "NVIDIA H100 80GB HBM3"
BASELINES = Path(__file__).resolve().parent.parent / "baselines"


@pytest.mark.parametrize(
    "name, precision, peak",
    [
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5e12),
        ("NVIDIA A100-SXM4-80GB", "tf32", 156e12),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
        ("NVIDIA A100 80GB PCIe", "tf32", 156e12),  # the PCIe A100 has the SXM part's peaks
        ("NVIDIA A100-PCIE-40GB", "fp16", 312e12),
        (H100_SXM, "fp32", 67e12),
        (H100_SXM, "tf32", 495e12),
        (H100_SXM, "fp16", 989e12),
        (H100_SXM, "bf16", 989e12),
        ("NVIDIA H100 PCIe", "fp32", 51e12),
        ("NVIDIA H100 PCIe", "tf32", 378e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("NVIDIA H100 NVL", "fp32", 60e12),
        ("NVIDIA H100 NVL", "tf32", 417.5e12),
        ("NVIDIA H100 NVL", "bf16", 835e12),
        ("NVIDIA H200", "fp32", 67e12),
        ("NVIDIA H200", "tf32", 495e12),
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA H200 NVL", "tf32", 417.5e12),
        ("NVIDIA H200 NVL", "bf16", 835e12),
        # Unknown parts get no peak, not a neighbour's: GH200 contains "H200", A100X contains "A100".
        ("NVIDIA GH200 480GB", "bf16", None),
        ("NVIDIA A100X", "bf16", None),
        ("NVIDIA L4", "tf32", None),
        ("Tesla V100-SXM2-16GB", "fp16", None),
        ("Intel Xeon", "fp32", None),
    ],
)
def test_peak_of_each_device_and_precision(name: str, precision: str, peak: float | None) -> None:
    assert flops.peak_flops(name, precision) == peak
    expected = None if peak is None else pytest.approx(2.0)
    assert flops.mfu(2 * (peak or 1.0), 1.0, name, precision) == expected


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown precision"):
        flops.peak_flops(H100_SXM, "fp8")


def _row(name: str, precision: str | None, times: list[float], encode_per_image: float | None = None):
    job = make_job(name, times=times, device_type="cuda")
    switches = {"checkpointing": "none"} if precision is None else {"checkpointing": "none", "precision": precision}
    job.info["switches"] = switches
    job.info["encode_flops_per_image"] = encode_per_image
    return job


def _gpu_results(jobs, gpu: str = H100_SXM, peak_override: float | None = None) -> dict:
    # make_results assembles for its fixed H100 without an override; the rows are redone for the GPU under test.
    document = make_results(jobs, "cuda")
    device = device_block(gpu_key(gpu, 1, 80 * 2**30, "12.8", "2.14.1"), peak_override)
    document["device"] = device
    document["rows"] = [row_record(job, device) for job in jobs]
    return validate_results(document)


def _model_flops_per_s(row: dict) -> float:
    return row["compute"]["model_flops_per_step"] / row["timing"]["median_s"]


def test_each_row_is_divided_by_the_peak_of_its_own_precision() -> None:
    times = [0.2, 0.25, 0.3, 0.22]
    results = _gpu_results([_row("fp32", "fp32", times), _row("tf32", "tf32", times), _row("bf16", "bf16", times),
                            _row("fp16", "fp16", times)])
    assert results["device"]["peak_flops_per_s"] is None
    assert results["device"]["peak_flops_per_s_by_precision"] == {
        "fp32": 67e12, "tf32": 495e12, "fp16": 989e12, "bf16": 989e12}
    rows = {row["name"]: row for row in results["rows"]}
    for name, peak in (("fp32", 67e12), ("tf32", 495e12), ("bf16", 989e12), ("fp16", 989e12)):
        compute = rows[name]["compute"]
        assert compute["peak"]["precision"] == name and compute["peak"]["flops_per_s"] == peak
        assert compute["mfu"] == pytest.approx(_model_flops_per_s(rows[name]) / peak)
    # The same model FLOPs and step time: tf32 reads about twice the bf16 MFU, as its peak is about half.
    assert rows["tf32"]["compute"]["mfu"] == pytest.approx(rows["bf16"]["compute"]["mfu"] * 989 / 495)


def test_tf32_row_on_h100_sxm_is_model_flops_over_time_over_495_teraflops() -> None:
    results = _gpu_results([_row("tf32", "tf32", [0.5, 0.5, 0.5])])
    compute = results["rows"][0]["compute"]
    # make_job: 1.5 GMACs forward -> 9e9 training FLOPs per image, 8 images per step.
    assert compute["model_flops_per_step"] == pytest.approx(9e9 * 8)
    assert compute["mfu"] == pytest.approx(9e9 * 8 / 0.5 / 495e12)


@pytest.mark.parametrize("gpu", ["NVIDIA GH200 480GB", "NVIDIA L40S"])
def test_unknown_gpu_has_no_mfu_and_says_why(gpu: str) -> None:
    results = _gpu_results([_row("bf16", "bf16", [0.2, 0.2, 0.2])], gpu=gpu)
    assert results["device"]["peak_flops_per_s"] is None
    assert results["device"]["peak_flops_per_s_by_precision"] is None
    assert "unknown peak" in results["device"]["peak_source"]
    compute = results["rows"][0]["compute"]
    assert compute["mfu"] is None and compute["peak"]["flops_per_s"] is None
    assert "--peak-flops" in compute["peak"]["source"]
    assert compute["model_tflops_per_s"] is not None  # throughput needs no peak


def test_row_without_a_precision_gets_no_guessed_peak() -> None:
    compute = _gpu_results([_row("plain", None, [0.2, 0.2, 0.2])])["rows"][0]["compute"]
    assert compute["mfu"] is None and "names no precision" in compute["peak"]["source"]


def test_peak_flops_override_applies_to_every_row() -> None:
    times = [0.4, 0.4, 0.4]
    results = _gpu_results([_row("fp32", "fp32", times), _row("tf32", "tf32", times), _row("bf16", "bf16", times)],
                           peak_override=1e15)
    assert results["device"]["peak_flops_per_s"] == 1e15
    assert results["device"]["peak_flops_per_s_by_precision"] is None
    assert results["device"]["peak_source"] == PEAK_OVERRIDE_SOURCE
    for row in results["rows"]:
        assert row["compute"]["peak"]["flops_per_s"] == 1e15
        assert row["compute"]["peak"]["precision"] == row["name"]
        assert row["compute"]["mfu"] == pytest.approx(_model_flops_per_s(row) / 1e15)
    # Also on a GPU the table does not know.
    unknown = _gpu_results([_row("tf32", "tf32", times)], gpu="NVIDIA L4", peak_override=2e14)
    assert unknown["rows"][0]["compute"]["mfu"] == pytest.approx(_model_flops_per_s(unknown["rows"][0]) / 2e14)
    with pytest.raises(ValueError, match="must be positive"):
        device_block(gpu_key(H100_SXM, 1, 80 * 2**30, "12.8", "2.14.1"), 0.0)


def test_peak_flops_help_says_it_is_the_peak_of_every_row(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--peak-flops PEAK_FLOPS peak FLOP/s that every row's MFU is divided by", help_text)


def test_cpu_has_no_peak() -> None:
    document = make_results([make_job("a", times=[0.1, 0.1, 0.1], device_type="cpu")], "cpu")
    assert document["device"]["peak_flops_per_s_by_precision"] is None
    assert document["rows"][0]["compute"]["mfu"] is None


def test_encode_flops_are_reported_apart_and_stay_out_of_model_flops_and_mfu() -> None:
    times = [0.5, 0.5, 0.5]
    results = _gpu_results([_row("live", "tf32", times, encode_per_image=4e9), _row("cached", "tf32", times)])
    live, cached = results["rows"]
    assert live["compute"]["encode_flops_per_step"] == pytest.approx(4e9 * 8)
    assert cached["compute"]["encode_flops_per_step"] is None
    for key in ("model_flops_per_step", "model_tflops_per_s", "mfu"):
        assert live["compute"][key] == cached["compute"][key]
    assert "not in model FLOPs or MFU" in live["compute"]["note"]
    markdown = results_markdown(results)
    assert "- live: VAE encode 32 GFLOP per step, 0.064 TFLOP/s at the median step" in markdown
    assert "- cached: VAE encode" not in markdown
    # The table names the peak each MFU is of.
    live_line = next(line for line in markdown.splitlines() if line.startswith("| live |"))
    assert "| 495.0 (tf32) |" in live_line
    assert "MFU peaks: dense datasheet peaks of the H100 SXM" in markdown


def test_report_names_the_override_as_the_peak() -> None:
    results = _gpu_results([_row("bf16", "bf16", [0.3, 0.3, 0.3])], peak_override=1e15)
    line = next(line for line in results_markdown(results).splitlines() if line.startswith("| bf16 |"))
    assert "| 1,000.0 (--peak-flops) |" in line


def test_results_written_before_per_precision_peaks_still_load() -> None:
    # A stored baseline has no peak table, peak or encode fields; they are optional in schema version 2.
    stored = sorted(BASELINES.glob("*/*.json"))
    assert stored
    for path in stored:
        document = load_results(path)
        assert "peak_flops_per_s_by_precision" not in document["device"]


def _count_real_forward(autoencoder: AutoencoderKL, image_size: int) -> int:
    images = torch.randn(1, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        autoencoder.encode(images)
    return int(counter.get_total_flops())


def test_encoder_flops_on_fake_tensors_equal_a_real_forward_of_the_sd_vae() -> None:
    # 64 px keeps the real forward cheap; the mid-block attention (8x8 latent tokens) is in both counts.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sd_vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD_VAE_CONFIG_DIR))).eval()
    counted = flops.encoder_flops_per_image(sd_vae, 64)
    assert counted == _count_real_forward(sd_vae, 64)
    assert counted > 0


def test_live_row_describes_its_encode_flops_and_a_cached_row_none(tmp_path: Path) -> None:
    common = {"model": "DiT-S/2", "global_batch_size": 2, "device": "cpu"}
    live = TrainerWorkload.from_config_dict(train_config(switches=Switches(features="live"), **common).to_dict())
    info = live.describe()
    # The encoder the trainer's live source actually holds (the tiny VAE at this scale), at the row's size.
    vae = live.trainer.source.vae.model
    assert info["encode_flops_per_image"] == _count_real_forward(vae, live.cfg.image_size)
    assert info["train_flops_per_image"] == flops.train_flops_per_image(
        "DiT-S/2", live.trainer.model.input_size, live.trainer.model.in_channels, live.trainer.model.learn_sigma)

    build_cache(tmp_path / "cache")
    cached_cfg = train_config(switches=Switches(features="cached"), cache_dir=str(tmp_path / "cache"), **common)
    cached = TrainerWorkload.from_config_dict(cached_cfg.to_dict()).describe()
    assert cached["encode_flops_per_image"] is None
    assert cached["train_flops_per_image"] == info["train_flops_per_image"]
