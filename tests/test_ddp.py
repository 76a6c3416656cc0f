"""DDP: two gloo processes follow the one-process loss curve; the logged loss is all-reduced."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dit_repro.config import Switches, TrainConfig
from dit_repro.train import Trainer

# fp32 reduction-order rounding: DDP averages two half-batch gradients where one process takes
# one full-batch mean. Over 4 Adam steps that moves the loss by ~1e-6 relative; a process-count
# bug (loss divided by the world size, draws not shared) moves it by far more than 1e-3.
RELATIVE_TOLERANCE = 1e-4
ARGS = ["--model", "DiT-S/2", "--data", "digits", "--image-size", "8", "--batch-size", "8", "--steps", "4",
        "--seed", "7", "--log-every", "1", "--device", "cpu"]


def torchrun(out_dir, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "dit_repro.cli", "train", *ARGS, "--distributed", "ddp", "--out", str(out_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def logged_losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """One 2-process torchrun training, shared by the tests that compare with it."""
    out = tmp_path_factory.mktemp("torchrun")
    proc = torchrun(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.mark.equivalence
@pytest.mark.slow
def test_two_gloo_processes_follow_one_process_curve(torchrun_run) -> None:
    single = Trainer(TrainConfig(model="DiT-S/2", data="digits", image_size=8, global_batch_size=8, steps=4, seed=7,
                                 switches=Switches()))
    single_losses = [r.loss for r in single.fit()]
    env = json.loads((torchrun_run / "env.json").read_text())
    assert env["world_size"] == 2 and env["local_batch_size"] == 4  # really two processes, not two 1-process runs
    ddp_losses = logged_losses(torchrun_run)
    print(f"1 process: {single_losses}\n2 processes: {ddp_losses}")
    assert len(ddp_losses) == 4
    for one, two in zip(single_losses, ddp_losses, strict=True):
        assert abs(one - two) <= RELATIVE_TOLERANCE * abs(one)


def test_batch_not_divisible_by_process_count_is_refused_before_joining(monkeypatch) -> None:
    """What each of two launched processes sees: WORLD_SIZE=2 and a batch of 7, refused before any process group."""
    from dit_repro.config import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="--batch-size 7 .the global batch. is not divisible by the 2 processes"):
        Trainer(TrainConfig(model="DiT-S/2", data="digits", image_size=8, global_batch_size=7, steps=0, device="cpu",
                            switches=Switches(distributed="ddp")))


@pytest.mark.slow
def test_accelerate_launch_trains_as_torchrun_does(torchrun_run, tmp_path) -> None:
    """fast-DiT's launcher: `accelerate launch --multi_gpu` starts the same two gloo processes on CPUs
    (--device cpu), so the losses are those of torchrun, bit for bit (same code, same draws)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "dit_repro.cli", "train", *ARGS, "--distributed", "ddp", "--out", str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "env.json").read_text())["world_size"] == 2
    assert logged_losses(tmp_path) == logged_losses(torchrun_run)
