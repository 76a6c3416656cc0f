"""Quick in-process checks that a switch keeps the training loss: the paper's "identical patterns".

Each check trains the smallest preset (DiT-S/2) for a step or a few on tiny seeded data, with
and without the switch, on the CPU:

* checkpointing: the recompute runs the same kernels on the same inputs, so the loss and every
  gradient must be bitwise equal;
* mixed precision (bf16 autocast, the CPU's): every step's loss within one bf16 unit of
  roundoff (2^-8, relative) of the fp32 loss, and not identical to it (the switch took effect);
* cached features: latents drawn from the cache's stored posterior moments with the same seed
  as live encoding, so the losses of the same batches and steps must be bitwise equal (forward
  only: the update that follows is the same code on the same numbers).

The weights get seeded noise first: DiT's adaLN-Zero start makes every block the identity and
the output zero, which would make any two runs agree trivially. The tests under ``tests/``
check the same properties more thoroughly; these are the verifier's own, short versions.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dit_repro.config import Switches, TrainConfig
from dit_repro.data.extraction import extract_latent_cache
from dit_repro.data.images import build_image_source
from dit_repro.data.vae import TINY_RANDOM, load_vae
from dit_repro.train import Trainer

BF16_EPS = 2.0**-8
"""Unit roundoff of bfloat16 (8 significant bits)."""
PERTURB_STD = 0.02
PERTURB_SEED = 11


@dataclass(frozen=True)
class EquivalenceResult:
    """The outcome of one equivalence check."""

    holds: bool
    """True when the switch kept the loss as the check requires."""
    summary: str
    """One line: what was compared and what came out."""
    setup: str
    """Model, data and steps."""


def _perturb(model: nn.Module) -> None:
    gen = torch.Generator().manual_seed(PERTURB_SEED)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen).to(p) * PERTURB_STD)


def _trainer(**kwargs) -> Trainer:
    switches = kwargs.pop("switches")
    defaults = dict(model="DiT-S/2", data="digits", image_size=8, global_batch_size=8, steps=0, seed=7, device="cpu")
    trainer = Trainer(TrainConfig(**{**defaults, **kwargs}, switches=Switches(**switches)))
    _perturb(trainer.model)
    return trainer


def _loss_curve(trainer: Trainer, steps: int) -> list[float]:
    """Losses of ``steps`` consecutive steps; the last one is only evaluated (its update would not be seen)."""
    losses = [trainer.train_step(trainer.next_batch()).loss for _ in range(steps - 1)]
    with torch.no_grad():
        losses.append(trainer.compute_loss(trainer.next_batch(), trainer.step).item())
    return losses


def _forward_losses(trainer: Trainer, steps: int) -> list[float]:
    with torch.no_grad():
        return [trainer.compute_loss(trainer.next_batch(), step).item() for step in range(steps)]


def checkpointing_equivalence() -> EquivalenceResult:
    """Loss and gradients of one step, plain against every block checkpointed: bitwise equal."""
    plain = _trainer(switches={"attention": "math"})
    checkpointed = _trainer(switches={"attention": "math", "checkpointing": "full"})
    batch = plain.next_batch()
    results = []
    for trainer in (plain, checkpointed):
        trainer.model.zero_grad(set_to_none=True)
        loss = trainer.compute_loss(batch, step=0)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    unequal = [n for n in grads_a if n not in grads_b or not torch.equal(grads_a[n], grads_b[n])]
    same_loss = torch.equal(loss_a, loss_b)
    holds = same_loss and not unequal and grads_a.keys() == grads_b.keys()
    return EquivalenceResult(
        holds,
        f"loss {'bitwise equal' if same_loss else f'{loss_a.item()!r} vs {loss_b.item()!r}'}; "
        f"{len(grads_a) - len(unequal)} of {len(grads_a)} gradients bitwise equal",
        "DiT-S/2 (weights perturbed), digits 8x8, batch 8, one step, fp32 on the CPU, math attention",
    )


def amp_equivalence(steps: int = 2) -> EquivalenceResult:
    """fp32 against bf16 autocast over ``steps`` steps: every loss within one bf16 unit of roundoff."""
    curves = {p: _loss_curve(_trainer(switches={"precision": p}), steps) for p in ("fp32", "bf16")}
    deviations = [abs(b - f) / f for f, b in zip(curves["fp32"], curves["bf16"], strict=True)]
    worst = max(deviations)
    changed = curves["fp32"] != curves["bf16"]
    return EquivalenceResult(
        worst <= BF16_EPS and changed,
        f"largest relative loss difference {worst:.2e} ({'<=' if worst <= BF16_EPS else '>'} 2^-8 = {BF16_EPS:.2e})"
        + ("" if changed else "; the curves are identical, so autocast did not take effect"),
        f"DiT-S/2 (weights perturbed), digits 8x8, batch 8, the losses of {steps} consecutive steps (the last "
        f"after {steps - 1} update(s)), fp32 against bf16 autocast on the CPU",
    )


def features_equivalence(steps: int = 2) -> EquivalenceResult:
    """Live VAE encoding against the latent cache, same seed: the losses of ``steps`` batches are bitwise equal."""
    data, image_size, batch = "synthetic:count=8,classes=2", 32, 8
    with tempfile.TemporaryDirectory(prefix="dit-repro-verify-cache-") as tmp:
        cache = Path(tmp) / "cache"
        images = build_image_source(data, image_size, channels=3)
        extract_latent_cache(images, load_vae(TINY_RANDOM, "cpu"), cache, batch_size=batch, shard_size=batch,
                             progress=False)
        common = dict(data=data, image_size=image_size, global_batch_size=batch, vae=TINY_RANDOM)
        live = _forward_losses(_trainer(switches={"features": "live"}, **common), steps)
        cached = _forward_losses(_trainer(switches={"features": "cached"}, cache_dir=str(cache), **common), steps)
    holds = live == cached
    return EquivalenceResult(
        holds,
        f"{steps} losses {'bitwise equal' if holds else f'differ: live {live} cached {cached}'}",
        f"DiT-S/2 (weights perturbed), synthetic {image_size} px through the tiny random VAE, batch {batch}, "
        f"{steps} batches and steps, forward only, on the CPU (the VAE's weights do not matter: both paths use the "
        "same VAE)",
    )


CHECKS = {"checkpointing": checkpointing_equivalence, "amp": amp_equivalence, "features": features_equivalence}
"""The switches with an equivalence check, by the name claims.json uses."""
