"""The training step reads nothing back to the host: losses are read once per logging window.

On a GPU every ``.item()``, ``float(tensor)``, ``.tolist()`` or ``torch.cuda.synchronize`` inside
the step makes the host wait for the device, which biases the rows bound by launch overhead. The
CPU mirror counts those calls over a short run: CPU tensors make them cheap, but the count is the
same as on a GPU.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from dit_repro.config import Switches, TrainConfig
from dit_repro.train import Trainer

SYNC_CALLS = (
    (torch.Tensor, "item"),
    (torch.Tensor, "__float__"),
    (torch.Tensor, "tolist"),
    (torch.cuda, "synchronize"),
)
"""The calls that wait for the device when the tensor lives there."""

ALLOWED_FIXED = 2
"""Reads allowed on top of one per logged step (e.g. the final window of a run that does not end on a log step)."""


def count_host_syncs(monkeypatch: pytest.MonkeyPatch, trainer: Trainer) -> Counter[str]:
    """Wrap every call of :data:`SYNC_CALLS`, counting them by name; returns the live counter.

    Calls made while the trainer fetches a batch are not counted: the data pipeline draws its
    per-item randomness on the host, from host tensors, on a GPU machine too.
    """
    calls: Counter[str] = Counter()
    fetching = [False]
    for owner, name in SYNC_CALLS:
        original = getattr(owner, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            if not fetching[0]:
                calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    next_batch = trainer.next_batch

    def fetch():
        fetching[0] = True
        try:
            return next_batch()
        finally:
            fetching[0] = False

    monkeypatch.setattr(trainer, "next_batch", fetch)
    return calls


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_twenty_steps_read_back_once_per_logged_step(monkeypatch: pytest.MonkeyPatch, precision: str) -> None:
    cfg = TrainConfig(model="DiT-S/2", data="digits", image_size=8, global_batch_size=8, steps=20, log_every=10,
                      seed=0, device="cpu", switches=Switches(precision=precision))
    trainer = Trainer(cfg)
    calls = count_host_syncs(monkeypatch, trainer)
    history = trainer.fit()
    logged_steps = 20 // cfg.log_every
    print(f"{precision}: host reads during 20 steps: {dict(calls)}")
    assert len(history) == 20 and [r.step for r in history] == list(range(1, 21))
    assert sum(calls.values()) <= logged_steps + ALLOWED_FIXED


def test_read_back_names_the_first_non_finite_step_of_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(model="DiT-S/2", data="digits", image_size=8, global_batch_size=8, steps=10, log_every=5,
                      seed=0, device="cpu", switches=Switches(checkpointing="full"))
    trainer = Trainer(cfg)
    for _ in range(2):
        trainer.advance(trainer.next_batch())
    with torch.no_grad():
        trainer.model.final_layer.linear.bias.fill_(float("nan"))
    trainer.advance(trainer.next_batch())
    with pytest.raises(Exception, match=r"loss is nan at step 3; switches .*'checkpointing': 'full'.*steps 1-3"):
        trainer.read_back()
