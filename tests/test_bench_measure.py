"""Measurement inside a worker: warm-up until steady, saved-activation bytes, the trainer workload."""

from __future__ import annotations

from collections.abc import Iterable
from types import SimpleNamespace

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from dit_repro import flops
from dit_repro.bench import measure
from dit_repro.bench.measure import RowSession, count_saved_activations
from dit_repro.bench.stats import WarmupPolicy
from dit_repro.bench.workload import TrainerWorkload, build_workload
from dit_repro.config import TrainConfig


class VirtualClock:
    """A clock that moves only when a workload spends time on it, plus one tick per read.

    Standing in for both of the session's clocks, it makes a timing test independent of the
    machine and of its load: the tick lets a busy-wait on it end, and bounds how far one overshoots.
    """

    TICK = 1e-6

    def __init__(self) -> None:
        self.now = 0.0

    def read(self) -> float:
        self.now += self.TICK
        return self.now

    def spend(self, seconds: float) -> None:
        self.now += seconds


class ScriptedWorkload:
    """Spends a scripted virtual time per step: a compile-like transient that settles at 2 ms."""

    device = torch.device("cpu")

    def __init__(self, clock: VirtualClock | None = None) -> None:
        self.clock = clock or VirtualClock()
        self.calls = 0

    def step(self) -> None:
        self.clock.spend(0.002 + (0.03 if self.calls < 4 else 0.0))
        self.calls += 1

    def settle(self) -> None:
        self.settled_at = self.calls

    def persistent_tensors(self) -> Iterable[torch.Tensor]:
        return []


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    """A virtual clock standing in for both of the session's clocks."""
    virtual = VirtualClock()
    monkeypatch.setattr(measure, "time", SimpleNamespace(perf_counter=virtual.read, process_time=virtual.read))
    return virtual


def test_warmup_runs_past_the_transient_then_timing_appends_every_step(clock: VirtualClock) -> None:
    workload = ScriptedWorkload(clock)
    session = RowSession(workload, WarmupPolicy(window=3, rel_tol=0.5, min_steps=4, max_steps=40))
    record = session.warmup()
    # Steps 0-3 take 32 ms: two windows of the settled 2 ms steps are needed after them.
    assert record["steady"] and record["steps"] == workload.calls >= 4 + 2 * 3 - 1
    assert min(record["step_times_s"][:4]) > 0.03
    assert workload.settled_at == record["steps"]  # the warm-up's steps are read back after it, untimed
    block = session.time_block(5)
    assert block.wall == session.times.wall and len(session.times.wall) == 5
    assert workload.settled_at == workload.calls  # and each block's after it
    session.time_block(2)
    assert len(session.times.wall) == len(session.times.cpu) == 7 and workload.calls == record["steps"] + 7
    assert session.clock == "perf_counter"
    assert min(session.times.cpu) >= 0.002 and min(session.times.wall) >= 0.002


class AlternatingWorkload:
    """Spends 2 ms and 6 ms of virtual time by turns: a stretch taken from any typical step would miss both."""

    device = torch.device("cpu")

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.calls = 0

    def step(self) -> None:
        self.clock.spend(0.002 if self.calls % 2 == 0 else 0.006)
        self.calls += 1

    def settle(self) -> None:
        pass

    def persistent_tensors(self) -> Iterable[torch.Tensor]:
        return []


def test_injected_slowdown_stretches_every_timed_step_by_the_factor_of_its_own_time(clock: VirtualClock) -> None:
    # The injection busy-waits until the process has used half of what the step itself took, so a
    # 2 ms step costs 3 ms and a 6 ms step 9 ms; a stretch from the warm-up median (4 ms) would
    # make them 4 ms and 8 ms.
    policy = WarmupPolicy(window=4, rel_tol=0.5, min_steps=4, max_steps=40)
    by_length = []
    for factor in (None, 1.5):
        session = RowSession(AlternatingWorkload(clock), policy, inject_slowdown=factor)
        first = session.warmup()["steps"] % 2  # index of the first timed 2 ms step
        session.time_block(20)
        assert session.times.cpu is not None
        by_length.append((session.times.cpu[first::2], session.times.cpu[1 - first::2]))
    (plain_short, plain_long), (short, long) = by_length
    # Each step costs its own time plus a few clock reads; the wait overshoots by at most one tick.
    overhead = 10 * VirtualClock.TICK
    for plain_steps, slowed_steps, cost in ((plain_short, short, 0.002), (plain_long, long, 0.006)):
        assert all(cost <= t <= cost + overhead for t in plain_steps), plain_steps
        assert all(1.5 * cost <= t <= 1.5 * (cost + overhead) for t in slowed_steps), slowed_steps
    with pytest.raises(ValueError, match="inject_slowdown"):
        RowSession(ScriptedWorkload(), WarmupPolicy(), inject_slowdown=0.9)


def test_saved_activation_bytes_are_exact_for_a_linear_chain_and_fall_with_checkpointing() -> None:
    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    x = torch.randn(32, 64, requires_grad=True)
    activation = 32 * 64 * 4  # one fp32 (32, 64) tensor

    def plain_step() -> None:
        h = x
        for _ in range(4):
            h = layers(h)
        h.sum().backward()

    def checkpointed_step() -> None:
        h = x
        for _ in range(4):
            h = checkpoint(layers, h, use_reentrant=False)
        h.sum().backward()

    plain = count_saved_activations(plain_step, layers.parameters())
    # Per application: the first Linear's input, the GELU input, the second Linear's input.
    assert plain["bytes"] == 4 * 3 * activation
    assert plain["storages"] == 12
    checkpointed = count_saved_activations(checkpointed_step, layers.parameters())
    # Only each checkpointed region's input stays alive.
    assert checkpointed["bytes"] == 4 * activation
    # Parameters are saved for backward too, but are not counted.
    with_params = count_saved_activations(plain_step, [])
    assert with_params["bytes"] > plain["bytes"]


def _trainer_workload(checkpointing: str) -> TrainerWorkload:
    cfg = TrainConfig(model="DiT-S/2", data="synthetic:count=8,classes=2", image_size=8, global_batch_size=2,
                      device="cpu", switches={"checkpointing": checkpointing})
    return TrainerWorkload.from_config_dict(cfg.to_dict())


@pytest.mark.slow
def test_trainer_workload_describes_itself_and_checkpointing_cuts_saved_activations() -> None:
    plain, checkpointed = _trainer_workload("none"), _trainer_workload("full")
    info = plain.describe()
    assert info["switches"]["checkpointing"] == "none" and info["images_per_step"] == 2
    assert info["attention"]["backend"] == plain.trainer.resolved_attention["backend"]
    assert info["train_flops_per_image"] == flops.train_flops_per_image("DiT-S/2", 8, 3, True)
    assert info["forward_gmacs_per_image"] == flops.forward_macs("DiT-S/2", 8, 3, True).total / 1e9
    saved = {name: count_saved_activations(w.step, w.persistent_tensors())["bytes"]
             for name, w in (("none", plain), ("full", checkpointed))}
    assert 0 < saved["full"] < saved["none"] / 2


def test_unknown_workload_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown workload kind"):
        build_workload({"kind": "gpu-burner"})


@pytest.mark.gpu
def test_cuda_session_times_with_events_and_reads_per_step_peaks() -> None:
    workload = build_workload({"kind": "matmul", "size": 2048, "batch": 4096, "device": "cuda"})
    session = RowSession(workload, WarmupPolicy(window=3, rel_tol=0.5, min_steps=6, max_steps=30))
    session.warmup()
    times = session.time_block(8)
    assert session.clock == "cuda-events" and len(times.wall) == 8 and min(times.wall) > 0
    assert times.cpu is None
    memory = session.memory_record()
    assert memory["kind"] == "cuda" and len(memory["per_step_max_allocated_bytes"]) == 8
    # The step holds at least the weight, its gradient, the input and the (4096, 2048) output.
    assert memory["max_allocated_bytes"] >= (2 * 2048 * 2048 + 2 * 4096 * 2048) * 4
    assert memory["max_reserved_bytes"] >= memory["max_allocated_bytes"]
    assert memory["num_ooms"] == 0


@pytest.mark.gpu
def test_cuda_injected_slowdown_falls_inside_the_event_window(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stall busy-waits on the host after the GPU is idle and before the end event is recorded,
    # so every timed step's event time must be at least its stall: a bound by construction, not a
    # timing band that a busy machine could break.
    stalls: list[float] = []
    stall = measure._stall
    monkeypatch.setattr(measure, "_stall", lambda seconds, clock: stalls.append(seconds) or stall(seconds, clock))
    policy = WarmupPolicy(window=3, rel_tol=0.5, min_steps=6, max_steps=30)
    session = RowSession(build_workload({"kind": "matmul", "size": 2048, "batch": 4096, "device": "cuda"}), policy,
                         inject_slowdown=1.5)
    session.warmup()
    assert stalls == []  # the warm-up is never slowed
    times = session.time_block(5)
    assert len(stalls) == 5 and all(s > 0 for s in stalls)
    assert all(event >= stalled for event, stalled in zip(times.wall, stalls, strict=True)), (times.wall, stalls)
