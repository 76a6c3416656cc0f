"""What a benchmark row runs: a full training step of the trainer, or a small matmul step.

The matmul workload is the quick real workload of the gate's self-test and of the runner's
protocol tests: it exercises the same clocks, processes and statistics without building a model.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import torch

from dit_repro import flops
from dit_repro.config import Features, TrainConfig


class TrainerWorkload:
    """One optimizer step of :class:`dit_repro.train.Trainer` per call, its batch fetched inside."""

    def __init__(self, trainer: Any, cfg: TrainConfig) -> None:
        self.trainer = trainer
        """The trainer (switches applied in its fixed order)."""
        self.cfg = cfg
        """The row's configuration."""
        self.device: torch.device = trainer.device
        """Where the step runs."""

    @classmethod
    def from_config_dict(cls, config: dict[str, Any]) -> TrainerWorkload:
        """Build the trainer of a row from its TrainConfig dict."""
        from dit_repro.train import Trainer  # imported here: building it is the expensive part

        cfg = TrainConfig.from_dict(config)
        return cls(Trainer(cfg), cfg)

    def step(self) -> None:
        """One training step, data loading and (with live features) VAE encoding included; reads nothing back."""
        self.trainer.advance(self.trainer.next_batch())

    def settle(self) -> None:
        """Read back the steps run so far (outside any timed region): a NaN loss fails the row here."""
        self.trainer.read_back()

    @property
    def split_memory_at_ready_batch(self) -> Callable[[Callable[[], None] | None], None] | None:
        """Live-features rows: installs (or, with None, removes) a callback run when the encoded batch is
        ready, so that the encode's memory is told apart from the DiT step's; None for other rows."""
        if self.cfg.switches.features is not Features.LIVE:
            return None

        def install(callback: Callable[[], None] | None) -> None:
            self.trainer.after_prepare = callback

        return install

    def fixed_costs(self) -> dict[str, float]:
        """Seconds the trainer spent before its first step: data source (``data_s``) and model build (``build_s``)."""
        return dict(self.trainer.setup_times)

    def persistent_tensors(self) -> Iterable[torch.Tensor]:
        """The model's parameters and buffers (saved for backward, but not activations)."""
        model = self.trainer.model
        return itertools.chain(model.parameters(), model.buffers())

    def describe(self) -> dict[str, Any]:
        """Resolved configuration, attention backend in use, the model's analytic work per image and,
        for a live-feature row, the VAE encode's FLOPs per image (None otherwise), kept apart from
        the model's: the encode runs inside the step but is not model work."""
        model = self.trainer.model
        macs = flops.forward_macs(self.cfg.model, model.input_size, model.in_channels, model.learn_sigma)
        encode_flops = None
        vae = getattr(self.trainer.source, "vae", None)
        if self.cfg.switches.features == "live" and vae is not None:
            # The VAE this row encodes with (tiny-random at the CPU smoke scale, the SD VAE on a GPU).
            encode_flops = float(flops.encoder_flops_per_image(vae.model, self.cfg.image_size))
        return {
            "switches": self.cfg.switches.to_dict(),
            "config": self.cfg.to_dict(),
            "attention": dict(self.trainer.resolved_attention),
            "forward_gmacs_per_image": macs.total / 1e9,
            "train_flops_per_image": float(
                flops.train_flops_per_image(self.cfg.model, model.input_size, model.in_channels, model.learn_sigma)
            ),
            "encode_flops_per_image": encode_flops,
            "images_per_step": self.cfg.global_batch_size,
        }


class MatmulWorkload:
    """A linear layer's forward and backward on fixed random data: a real, quick, model-free step."""

    def __init__(self, size: int = 256, batch: int = 64, device: str = "cpu", seed: int = 0) -> None:
        if size < 1 or batch < 1:
            raise ValueError(f"matmul workload needs size >= 1 and batch >= 1, got size={size}, batch={batch}")
        self.device = torch.device(device)
        """Where the step runs."""
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self.weight = torch.randn(size, size, generator=generator, device=self.device).requires_grad_()
        """The one parameter."""
        self.inputs = torch.randn(batch, size, generator=generator, device=self.device)
        """The fixed batch."""
        self.batch = batch
        """Rows per step."""

    def step(self) -> None:
        """Forward, ReLU, sum, backward; the gradient is dropped so memory stays flat."""
        (self.inputs @ self.weight).relu().sum().backward()
        self.weight.grad = None

    def settle(self) -> None:
        """Nothing is pending: the step keeps no results."""

    def fixed_costs(self) -> dict[str, float]:
        """No data source and no model to build."""
        return {}

    def persistent_tensors(self) -> Iterable[torch.Tensor]:
        """The weight."""
        return [self.weight]

    def describe(self) -> dict[str, Any]:
        """Its shape; no model, so no attention backend and no FLOP model."""
        return {"switches": {}, "config": None, "attention": None, "forward_gmacs_per_image": None,
                "train_flops_per_image": None, "images_per_step": self.batch}


def build_workload(spec: dict[str, Any]) -> TrainerWorkload | MatmulWorkload:
    """The workload a row's ``workload`` block names: ``{"kind": "trainer", "config": {...}}`` or
    ``{"kind": "matmul", "size": N, "batch": B, "device": D}``."""
    kind = spec.get("kind")
    if kind == "trainer":
        return TrainerWorkload.from_config_dict(spec["config"])
    if kind == "matmul":
        return MatmulWorkload(**{k: v for k, v in spec.items() if k != "kind"})
    raise ValueError(f"unknown workload kind {kind!r}; expected 'trainer' or 'matmul'")
