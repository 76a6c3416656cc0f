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


@pytest.mark.equivalence
@pytest.mark.slow
def test_two_gloo_processes_follow_one_process_curve(tmp_path) -> None:
    single = Trainer(TrainConfig(model="DiT-S/2", data="digits", image_size=8, global_batch_size=8, steps=4, seed=7,
                                 switches=Switches()))
    single_losses = [r.loss for r in single.fit()]
    proc = torchrun(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["world_size"] == 2 and env["local_batch_size"] == 4  # really two processes, not two 1-process runs
    ddp_losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    print(f"1 process: {single_losses}\n2 processes: {ddp_losses}")
    assert len(ddp_losses) == 4
    for one, two in zip(single_losses, ddp_losses, strict=True):
        assert abs(one - two) <= RELATIVE_TOLERANCE * abs(one)


@pytest.mark.slow
def test_batch_not_divisible_by_process_count_is_refused(tmp_path) -> None:
    proc = torchrun(tmp_path, "--batch-size", "7")
    assert proc.returncode != 0
    assert "global_batch_size 7 is not divisible by the 2 processes" in proc.stderr
