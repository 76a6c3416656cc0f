"""What a benchmark row costs before its first timed step, and what it no longer pays for.

A paper-scale row spent most of its time outside the model's step: a full-size VAE built for
cached rows, synthetic images rendered every step, a long warm-up. These tests show each cost is
gone or recorded, on quantities that do not depend on the machine's speed.
"""

from __future__ import annotations

import pytest
import torch

from dit_repro.bench.matrices import build_matrix
from dit_repro.bench.plan import PAPER_SCALE, SMOKE_SCALE, BenchRequest
from dit_repro.bench.report import fixed_cost_table
from dit_repro.bench.runner import fixed_cost_split, format_fixed_cost
from dit_repro.bench.workload import TrainerWorkload
from dit_repro.config import Features, TrainConfig
from dit_repro.data import synthetic
from dit_repro.data.synthetic import SyntheticImages


def test_the_fixed_cost_is_the_workers_own_split_plus_the_warm_up() -> None:
    cost = fixed_cost_split({"import_s": 4.5, "data_s": 1.5, "build_s": 6.0}, warmup_s=8.5)
    assert cost == {"import_s": 4.5, "data_s": 1.5, "build_s": 6.0, "warmup_s": 8.5, "total_s": 20.5}
    # A worker that could not tell its import time (not started by this runner) counts it as 0.
    assert fixed_cost_split({"import_s": None}, warmup_s=1.0)["total_s"] == 1.0
    assert format_fixed_cost(cost) == "20.5 s (import 4.5, data 1.5, build 6.0, warm-up 8.5)"


def test_the_report_prints_each_rows_fixed_cost() -> None:
    rows = [
        {"name": "gcp", "fixed_cost": {"import_s": 4.5, "data_s": 1.5, "build_s": 6.0, "warmup_s": 8.5, "total_s": 20.5},
         "warmup": {"steps": 6}},
        {"name": "gcp+amp", "fixed_cost": None, "warmup": None},
    ]
    table = fixed_cost_table(rows)
    assert "| gcp | 20.5 | 4.5 | 1.5 | 6.0 | 8.5 | 6 |" in table
    assert "| gcp+amp | - | - | - | - | - | - |" in table


@pytest.mark.parametrize("scale", [PAPER_SCALE, SMOKE_SCALE], ids=["paper", "smoke"])
def test_cached_rows_name_no_vae_and_live_rows_do(scale) -> None:
    request = BenchRequest(build_matrix("table4", "cpu"), scale, "cpu")
    for row in request.matrix.rows:
        cfg = request.row_config(row.switches, cache_dir="/nonexistent")
        live = cfg.switches.features is Features.LIVE
        assert cfg.vae == (scale.vae if live else None), row.name


def test_the_paper_scale_warm_up_suits_eager_gpu_rows() -> None:
    policy = PAPER_SCALE.warmup
    assert policy.min_steps >= 5 and 2 * policy.window <= policy.min_steps
    # A row that is steady from its first step stops at the minimum.
    assert policy.is_done([1.0] * policy.min_steps) and not policy.is_done([1.0] * (policy.min_steps - 1))


def test_synthetic_images_are_rendered_once_per_item(monkeypatch: pytest.MonkeyPatch) -> None:
    images = SyntheticImages(16, count=4, classes=2)
    rendered: list[int] = []
    render = images._render
    monkeypatch.setattr(images, "_render", lambda index: rendered.append(index) or render(index))
    first = [images.load(i) for i in range(4)]
    first[0].fill_(0.0)  # a caller modifying its copy must not change the kept image
    again = [images.load(i) for i in range(4)]
    assert rendered == [0, 1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(again[1:], first[1:], strict=True))
    assert torch.equal(again[0], SyntheticImages(16, count=4, classes=2).load(0))


def test_rendering_stops_keeping_images_at_the_byte_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    one_image = 3 * 16 * 16 * 4
    monkeypatch.setattr(synthetic, "RENDER_CACHE_BYTES", 2 * one_image)
    images = SyntheticImages(16, count=4, classes=2)
    for index in range(4):
        images.load(index)
    assert sorted(images._rendered) == [0, 1]


def test_a_live_row_tells_the_encode_phase_from_the_dit_step() -> None:
    # The CPU twin of the CUDA memory split: the callback runs once per step, after the batch is
    # encoded and before the model's forward; cached rows have no split.
    cfg = TrainConfig(model="DiT-S/2", data="synthetic:count=8,classes=2", image_size=16, global_batch_size=2, steps=0,
                      seed=0, device="cpu", vae="tiny-random", switches={"features": "live"})
    workload = TrainerWorkload.from_config_dict(cfg.to_dict())
    order: list[str] = []
    forward = workload.trainer.forward_module.forward
    workload.trainer.forward_module.forward = lambda *a, **k: order.append("forward") or forward(*a, **k)
    split = workload.split_memory_at_ready_batch
    assert split is not None
    split(lambda: order.append("ready"))
    workload.step()
    workload.step()
    split(None)
    workload.step()
    workload.settle()
    assert order == ["ready", "forward", "ready", "forward", "forward"]
    assert set(workload.fixed_costs()) == {"data_s", "build_s"}
    pixels = TrainerWorkload.from_config_dict({**cfg.to_dict(), "switches": {"features": "pixels"}, "vae": None})
    assert pixels.split_memory_at_ready_batch is None
