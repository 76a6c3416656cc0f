"""The training loop: builds the model with every switch applied in one fixed order, and steps it.

Order of the switches, everywhere: precision, checkpointing, compile, DDP.

Randomness. The global RNGs of every library are seeded with ``seed + rank``. The draws that define
the maths of a step (timesteps, noise, label dropout) come from a generator seeded with
``(seed, step)`` over the *global* batch, and each process takes its interleaved share; the data
draws (flip, posterior noise) depend on ``(seed, epoch, index)``. So a run gives the same losses
whatever the number of processes, and resuming from a checkpoint continues the same sequence.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .atomic import write_json_atomic
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (
    Checkpointing,
    CompileMode,
    CompileScope,
    ConfigError,
    Distributed,
    Precision,
    ProtocolRecipe,
    TrainConfig,
)
from .data import build_feature_source
from .diffusion import create_diffusion
from .distributed import ProcessInfo, init_process_group, launched_process, mean_over_processes
from .envinfo import environment_fingerprint, resolve_device
from .models import build_model, set_attention_backend
from .precision import autocast_dtype, set_matmul_precision


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops rather than continue silently."""


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step produced."""

    step: int
    """The step number after this step (1 for the first)."""
    loss: float
    """Mean training loss over the global batch (all-reduced across processes)."""
    lr: float
    """Learning rate used by this step."""
    grad_scale_skipped: bool
    """fp16 only: the gradient scaler found inf/NaN gradients and skipped the update."""
    step_time_s: float
    """Wall time of the step on this process (data preparation, forward, backward, update)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """A well-mixed 63-bit seed for the draws of ``step`` under the global ``seed``."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


def checkpointed_blocks(mode: Checkpointing, every: int, num_blocks: int) -> frozenset[int]:
    """Indices of the blocks to checkpoint: none, all, or every k-th (0, k, 2k, ...)."""
    if mode is Checkpointing.NONE:
        return frozenset()
    if mode is Checkpointing.FULL:
        return frozenset(range(num_blocks))
    return frozenset(range(0, num_blocks, every))


def build_optimizer(model: nn.Module, recipe: ProtocolRecipe, device: torch.device) -> tuple[torch.optim.AdamW, str]:
    """AdamW with the protocol's settings; fused where the device supports it. Returns (optimizer, impl)."""
    params = [p for p in model.parameters() if p.requires_grad]
    kwargs = dict(lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    fused_devices = ("cuda", "cpu", "xpu", "mps")
    if device.type in fused_devices:
        return torch.optim.AdamW(params, fused=True, **kwargs), "fused"
    return torch.optim.AdamW(params, foreach=True, **kwargs), "foreach"


def warmup_schedule(warmup_steps: int):
    """Learning-rate multiplier: linear warm-up over ``warmup_steps``, then constant."""

    def factor(step: int) -> float:
        return 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)

    return factor


class Trainer:
    """One training run: data source, model with switches, optimizer, EMA, and the step."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        switches = cfg.switches
        self.device = resolve_device(cfg.device)
        self.process = self._join_processes()
        if cfg.global_batch_size % self.process.world_size:
            raise ConfigError(
                f"global_batch_size {cfg.global_batch_size} is not divisible by the {self.process.world_size} processes; "
                f"use a multiple of {self.process.world_size}"
            )
        self.local_batch_size = cfg.global_batch_size // self.process.world_size
        seed_everything(cfg.seed + self.process.rank)

        self.source = build_feature_source(cfg, self.process.rank, self.process.world_size)
        self.model = build_model(
            cfg.model,
            input_size=self.source.input_size,
            in_channels=self.source.in_channels,
            num_classes=self.source.num_classes,
        ).to(self.device)
        self.model_args = {
            "input_size": self.source.input_size,
            "in_channels": self.source.in_channels,
            "num_classes": self.source.num_classes,
            "learn_sigma": self.model.learn_sigma,
        }
        self.diffusion = create_diffusion(learn_sigma=self.model.learn_sigma)
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.ema.module.requires_grad_(False)

        # 1. precision
        set_matmul_precision(switches.precision)
        self.autocast_dtype = autocast_dtype(switches.precision)
        selection = set_attention_backend(
            self.model, switches.attention, self.device, self.autocast_dtype or torch.float32
        )
        set_attention_backend(self.ema.module, switches.attention, self.device, torch.float32)
        self.resolved_attention = selection.to_dict()
        # 2. checkpointing
        self.model.set_checkpointing(
            checkpointed_blocks(switches.checkpointing, switches.checkpoint_every, len(self.model.transformer_blocks))
        )
        # 3. compile
        self.forward_module: nn.Module = self._apply_compile(self.model, switches.compile, switches.compile_scope)
        # 4. DDP
        if switches.distributed is Distributed.DDP:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_module = DistributedDataParallel(self.forward_module, device_ids=device_ids)

        recipe = cfg.recipe
        self.optimizer, self.optimizer_impl = build_optimizer(self.model, recipe, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_schedule(recipe.warmup_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=switches.precision is Precision.FP16)
        self.step = 0
        self.skipped_steps = 0
        self.history: list[StepResult] = []
        self._batches = None
        self._epoch = 0
        if cfg.resume:
            self.load(cfg.resume)

    # ------------------------------------------------------------------ switches

    def _join_processes(self) -> ProcessInfo:
        if self.cfg.switches.distributed is not Distributed.DDP:
            if launched_process().world_size > 1:
                raise ConfigError(
                    "this process was started by a launcher with WORLD_SIZE > 1 but distributed=none: "
                    "add --distributed ddp, or the processes would train independently"
                )
            return ProcessInfo(0, 1, 0)
        info = init_process_group(self.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", info.local_rank)
            torch.cuda.set_device(self.device)
        return info

    @staticmethod
    def _apply_compile(model: nn.Module, mode: CompileMode, scope: CompileScope) -> nn.Module:
        if mode is CompileMode.OFF:
            return model
        kwargs = {} if mode is CompileMode.DEFAULT else {"mode": mode.value}
        if scope is CompileScope.MODEL:
            return torch.compile(model, **kwargs)
        for block in model.transformer_blocks:
            block.compile(**kwargs)  # in place: parameter names stay as they are
        return model

    # ------------------------------------------------------------------ data

    def next_batch(self) -> dict[str, torch.Tensor]:
        """The next local batch, starting a new epoch (with new shuffling and draws) when one ends."""
        while True:
            if self._batches is None:
                self._batches = iter(self._epoch_loader(self._epoch))
            try:
                return next(self._batches)
            except StopIteration:
                self._batches = None
                self._epoch += 1

    def _epoch_loader(self, epoch: int, skip_batches: int = 0) -> DataLoader:
        dataset = self.source.dataset
        dataset.set_epoch(epoch)
        sampler = DistributedSampler(
            dataset,
            num_replicas=self.process.world_size,
            rank=self.process.rank,
            shuffle=True,
            seed=self.cfg.seed,
            drop_last=True,
        )
        sampler.set_epoch(epoch)
        indices = list(sampler)
        n_batches = len(indices) // self.local_batch_size
        if n_batches == 0:
            raise ConfigError(
                f"the dataset has {len(dataset)} items, fewer than one global batch of {self.cfg.global_batch_size}"
            )
        batches = [
            indices[i * self.local_batch_size : (i + 1) * self.local_batch_size] for i in range(skip_batches, n_batches)
        ]
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.cfg.num_workers,
            pin_memory=self.device.type == "cuda",
        )

    @property
    def batches_per_epoch(self) -> int:
        """Optimizer steps in one pass over the data."""
        per_rank = len(self.source.dataset) // self.process.world_size
        return per_rank // self.local_batch_size

    # ------------------------------------------------------------------ the step

    def step_draws(self, step: int, sample_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Timesteps, noise and label-dropout mask of this process's share of the global batch at ``step``."""
        gen = torch.Generator(device=self.device).manual_seed(step_seed(self.cfg.seed, step))
        n = self.cfg.global_batch_size
        t = torch.randint(0, self.diffusion.num_timesteps, (n,), generator=gen, device=self.device)
        noise = torch.randn((n, *sample_shape), generator=gen, device=self.device)
        drop = torch.rand(n, generator=gen, device=self.device) < self.model.class_dropout_prob
        share = slice(self.process.rank, None, self.process.world_size)  # matches DistributedSampler's interleave
        return t[share], noise[share], drop[share]

    def compute_loss(self, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """The mean training loss of this process's batch at ``step`` (forward only; runs under the precision switch)."""
        x0, y = self.source.prepare(batch, self.device)
        t, noise, drop = self.step_draws(step, tuple(x0.shape[1:]))
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            losses = self.diffusion.training_losses(
                self.forward_module, x0, t, {"y": y, "force_drop_ids": drop}, noise
            )
        return losses["loss"].mean()

    def train_step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        """One optimizer step on ``batch``; raises NonFiniteLossError on a NaN/inf loss (except fp16 overflow)."""
        start = time.perf_counter()
        self.forward_module.train()
        lr = self.optimizer.param_groups[0]["lr"]
        loss = self.compute_loss(batch, self.step)
        logged = mean_over_processes(loss.detach()).item()
        fp16 = self.scaler.is_enabled()
        if not np.isfinite(logged) and not fp16:
            raise NonFiniteLossError(
                f"loss is {logged} at step {self.step + 1}; switches {self.cfg.switches.to_dict()}; training stopped"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        scale_before = self.scaler.get_scale() if fp16 else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = fp16 and self.scaler.get_scale() < scale_before
        self.skipped_steps += int(skipped)
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        result = StepResult(self.step, logged, lr, bool(skipped), time.perf_counter() - start)
        self.history.append(result)
        return result

    # ------------------------------------------------------------------ the run

    def fit(self) -> list[StepResult]:
        """Train until ``cfg.steps``, with a progress bar, metrics.jsonl and checkpoints in ``out_dir``."""
        out = Path(self.cfg.out_dir) if self.cfg.out_dir else None
        main_process = self.process.rank == 0
        if out and main_process:
            self.write_run_record(out)
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not main_process, unit="step", desc=self.cfg.model)
        window: list[StepResult] = []
        metrics = (out / "metrics.jsonl").open("a") if out and main_process else None
        try:
            while self.step < self.cfg.steps:
                result = self.train_step(self.next_batch())
                window.append(result)
                bar.update(1)
                bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{result.lr:.2e}")
                if metrics and (self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps):
                    metrics.write(json.dumps(self._metrics_record(window)) + "\n")
                    metrics.flush()
                    window = []
                if out and self.cfg.checkpoint_every_steps and self.step % self.cfg.checkpoint_every_steps == 0:
                    self.save(out / "checkpoints" / f"step-{self.step:07d}.pt")
            if out:
                self.save(out / "checkpoints" / "last.pt")
        finally:
            bar.close()
            if metrics:
                metrics.close()
        return self.history

    def _metrics_record(self, window: list[StepResult]) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self._epoch,
            "loss": float(np.mean([r.loss for r in window])),
            "lr": window[-1].lr,
            "step_time_s": float(np.median([r.step_time_s for r in window])),
            "grad_scaler_skips": self.skipped_steps,
        }

    def run_record(self) -> dict[str, Any]:
        """What this run is, beyond its config: resolved switches, environment, data source, world size."""
        return {
            "environment": environment_fingerprint(self.device, self.autocast_dtype or torch.float32),
            "attention": self.resolved_attention,
            "source": self.source.describe(),
            "model_args": self.model_args,
            "optimizer": self.optimizer_impl,
            "world_size": self.process.world_size,
            "local_batch_size": self.local_batch_size,
            "checkpointed_blocks": sorted(self.model.checkpointed),
        }

    def write_run_record(self, out: Path) -> None:
        """config.json (the resolved configuration) and env.json (environment and resolved switches)."""
        write_json_atomic(out / "config.json", self.cfg.to_dict())
        write_json_atomic(out / "env.json", self.run_record())

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume or to sample."""
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "config": self.cfg.to_dict(),
            "model_args": self.model_args,
        }

    def save(self, path: Path) -> None:
        """Write a checkpoint (main process only) atomically."""
        if self.process.rank == 0:
            save_checkpoint(path, self.state_dict())

    def load(self, path: str | Path) -> None:
        """Resume from a checkpoint of the same model and data shape."""
        state = load_checkpoint(path, map_location=self.device)
        saved_model = state["config"].get("model")
        if saved_model != self.cfg.model or state.get("model_args") != self.model_args:
            raise CheckpointError(
                f"checkpoint {path} is for {saved_model} {state.get('model_args')}, this run is {self.cfg.model} {self.model_args}"
            )
        self.model.load_state_dict(state["model"])
        self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
        # Continue mid-epoch exactly where the saved run was.
        self._epoch, offset = divmod(self.step, self.batches_per_epoch)
        self._batches = iter(self._epoch_loader(self._epoch, skip_batches=offset))
