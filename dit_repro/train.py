"""The training loop: builds the model, applies the switches (:mod:`dit_repro.switches`), and steps it.

The step reads nothing back to the host; losses are read, all-reduced and checked once per
logging window (:meth:`Trainer.read_back`).

Randomness. The global RNGs of every library are seeded with ``seed + rank``. The draws that define
the maths of a step (timesteps, noise, label dropout) come from a generator seeded with
``(seed, step)`` over the *global* batch, and each process takes its interleaved share; the data
draws (flip, posterior noise) depend on ``(seed, epoch, index)``. So a run gives the same losses
whatever the number of processes, and resuming from a checkpoint continues the same sequence.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .atomic import writable_target, write_json_atomic
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (
    ConfigError,
    Distributed,
    Precision,
    ProtocolRecipe,
    TrainConfig,
)
from .data import FeatureSource, build_feature_source
from .diffusion import create_diffusion
from .distributed import ProcessInfo, init_process_group, launched_process, mean_over_processes
from .envinfo import environment_fingerprint
from .model_weights import load_initial_weights
from .models import build_model
from .switches import apply_attention, apply_switches, diffusion_loss, resolve_device


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stops rather than continue silently."""


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step produced, as read back at the end of its logging window."""

    step: int
    """The step number after this step (1 for the first)."""
    loss: float
    """Mean training loss over the global batch (all-reduced across processes)."""
    lr: float
    """Learning rate used by this step."""
    grad_scale_skipped: bool
    """fp16 only: the gradient scaler found inf/NaN gradients and skipped the update."""
    step_time_s: float
    """Mean wall time per step of the window this step was read back with (the steps run
    asynchronously on a GPU, so only a window's time, closed by the read-back, is a real duration)."""


@dataclass(frozen=True)
class _PendingStep:
    """A step whose loss is still on the device: read back with its window, never one by one."""

    step: int
    loss: torch.Tensor
    lr: float
    skipped: torch.Tensor | None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_seed(seed: int, step: int) -> int:
    """A well-mixed 63-bit seed for the draws of ``step`` under the global ``seed``."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


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


MAY_CHANGE_ON_RESUME = ("steps", "log_every", "save_every", "out_dir", "resume", "overwrite", "init_from",
                        "num_workers", "device", "strict_images")
"""Settings a resumed run may give differently from its checkpoint: how long, how often it logs and saves,
where it writes, where it runs, and whether unreadable images are refused (a check, not a setting of the
run). Any other difference would change the run and is refused."""


def check_run_folder(cfg: TrainConfig) -> None:
    """Refuse a non-empty ``cfg.out_dir`` unless the run resumes or may overwrite it; refuse an out_dir that is a file."""
    if not cfg.out_dir:
        return
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; name a new or empty folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    writable_target(out, "--out", folder=True)
    if held and not cfg.resume and not cfg.overwrite:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise ConfigError(f"run folder {out} is not empty ({shown}); pass --resume {out / 'checkpoints' / 'last.pt'} "
                          "to continue that run, --overwrite to replace it, or another --out")


def dataset_identity(source: FeatureSource) -> dict[str, Any]:
    """Kind, item count and sha256 of the data ``source`` serves (for folders: the readable files)."""
    dataset = source.describe().get("dataset", {})
    return {key: dataset.get(key) for key in ("kind", "num_items", "sha256")}


def check_same_data(path: str | Path, saved: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """Refuse a resume whose data differs from the checkpoint's: the item indices would mean other images.

    ``saved`` and ``now`` come from :func:`dataset_identity`; checkpoints written before the data
    was recorded carry none and are not checked.
    """
    if saved is None or saved.get("sha256") == now["sha256"]:
        return
    raise CheckpointError(
        f"checkpoint {path} was trained on {saved.get('kind')} data of {saved.get('num_items')} images (sha256 "
        f"{str(saved.get('sha256'))[:12]}), this run serves {now['num_items']} (sha256 {str(now['sha256'])[:12]}): "
        "files were added, removed, or became readable or unreadable since. Resume with the same data, or start a "
        "new run"
    )


def _flat_config(config: dict[str, Any]) -> dict[str, Any]:
    switches = config.get("switches", {})
    return {**{k: v for k, v in config.items() if k != "switches"}, **{f"switches.{k}": v for k, v in switches.items()}}


class Trainer:
    """One training run: data source, model with switches, optimizer, EMA, and the step."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        switches = cfg.switches
        self.setup_times: dict[str, float] = {}
        """Seconds spent building the data source (``data_s``) and the model with its switches,
        optimizer and EMA (``build_s``): the fixed cost of a run before its first step."""
        check_run_folder(cfg)
        self.device = resolve_device(cfg.device)
        # Checked from the launcher's WORLD_SIZE before joining: a bad batch fails at once, in every process.
        launched = launched_process().world_size if switches.distributed is Distributed.DDP else 1
        if cfg.global_batch_size % launched:
            raise ConfigError(
                f"--batch-size {cfg.global_batch_size} (the global batch) is not divisible by the {launched} processes; "
                f"use a multiple of {launched}"
            )
        self.process = self._join_processes()
        self.local_batch_size = cfg.global_batch_size // self.process.world_size
        seed_everything(cfg.seed + self.process.rank)

        began = time.perf_counter()
        self.source = build_feature_source(cfg, self.process.rank, self.process.world_size)
        self.dataset_identity = dataset_identity(self.source)
        """Kind, count and hash of the data served (saved with every checkpoint; computed once: a folder's
        hash covers its whole file list)."""
        self.setup_times["data_s"] = time.perf_counter() - began
        began = time.perf_counter()
        # Built where it trains: on a GPU the initialisation runs there, with no host copy of the
        # weights; on a CPU this is the same computation as building and then moving.
        with torch.device(self.device):
            self.model = build_model(
                cfg.model,
                input_size=self.source.input_size,
                in_channels=self.source.in_channels,
                num_classes=self.source.num_classes,
            )
        self.model_args = {
            "input_size": self.source.input_size,
            "in_channels": self.source.in_channels,
            "num_classes": self.source.num_classes,
            "learn_sigma": self.model.learn_sigma,
        }
        self.initial_weights: dict[str, Any] | None = None
        """Where ``init_from``'s weights came from (path, SHA-256, layout, which weights)."""
        if cfg.init_from:
            self.initial_weights = load_initial_weights(self.model, cfg.init_from, cfg.model, self.model_args)
        self.diffusion = create_diffusion(learn_sigma=self.model.learn_sigma)
        self.ema = ModelEmaV3(self.model, decay=cfg.ema_decay)
        self.ema.module.requires_grad_(False)

        applied = apply_switches(self.model, switches, self.device)
        apply_attention(self.ema.module, switches.attention, self.device, None)  # the EMA is evaluated in fp32
        self.forward_module: nn.Module = applied.forward_module
        self.autocast_dtype = applied.autocast_dtype
        self.resolved_attention = applied.attention.to_dict()

        recipe = cfg.recipe
        self.optimizer, self.optimizer_impl = build_optimizer(self.model, recipe, self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, warmup_schedule(recipe.warmup_steps))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=switches.precision is Precision.FP16)
        self.setup_times["build_s"] = time.perf_counter() - began
        self.step = 0
        self.skipped_steps = 0
        self.history: list[StepResult] = []
        self._pending: list[_PendingStep] = []
        self.after_prepare: Callable[[], None] | None = None
        """Called once the batch is on the device (after the VAE encode of live features), before the
        model's forward: the bench splits a live row's memory into the encode phase and the DiT step here."""
        self._window_started = time.perf_counter()
        self._batches = None
        self._epoch = 0
        self.resume_changes: list[dict[str, Any]] = []
        """Settings that differ from the resumed checkpoint's (only those that may), with the step."""
        if cfg.resume:
            self.load(cfg.resume)

    # ------------------------------------------------------------------ processes

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
            self.device = resolve_device("cuda", info.local_rank)
            torch.cuda.set_device(self.device)
        return info

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
        if self.after_prepare is not None:
            self.after_prepare()
        t, noise, drop = self.step_draws(step, tuple(x0.shape[1:]))
        return diffusion_loss(
            self.forward_module, self.diffusion, x0, t, {"y": y, "force_drop_ids": drop}, noise, self.autocast_dtype
        )

    def advance(self, batch: dict[str, torch.Tensor]) -> None:
        """One optimizer step on ``batch`` that reads nothing back to the host.

        The loss (and, under fp16, whether the scaler skipped the update) stays on the device
        until :meth:`read_back`, so that on a GPU the host keeps queueing work while the device
        runs: no ``.item()``, no scale read, no synchronize, as DiT and nanoGPT read only at their
        log interval.
        """
        self.forward_module.train()
        lr = self.optimizer.param_groups[0]["lr"]
        loss = self.compute_loss(batch, self.step)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # The scaler halves its scale exactly when it skips a step; comparing its scale tensor
        # before and after on the device counts skips without reading the scale every step.
        scale_before = self.scaler._scale.clone() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = None if scale_before is None else self.scaler._scale < scale_before
        self.scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        self._pending.append(_PendingStep(self.step, loss.detach(), lr, skipped))

    def read_back(self) -> list[StepResult]:
        """Read the pending steps' losses in one transfer (one all-reduce across processes) and check them.

        Raises NonFiniteLossError naming the first step whose loss is NaN or infinite (fp16
        overflow excepted: the scaler skips those); so a NaN stops a run at most one logging
        window after it appears.
        """
        if not self._pending:
            return []
        pending, self._pending = self._pending, []
        losses = mean_over_processes(torch.stack([p.loss.float() for p in pending]))
        flags = [p.skipped for p in pending]
        if self.scaler.is_enabled():
            values = torch.cat([losses, torch.stack(flags).float()]).tolist()  # type: ignore[arg-type]
            losses_read, skipped = values[: len(pending)], [bool(v) for v in values[len(pending):]]
        else:
            losses_read, skipped = losses.tolist(), [False] * len(pending)
        elapsed = (time.perf_counter() - self._window_started) / len(pending)
        self._window_started = time.perf_counter()
        self.skipped_steps += sum(skipped)
        if not self.scaler.is_enabled():
            for p, value in zip(pending, losses_read, strict=True):
                if not np.isfinite(value):
                    raise NonFiniteLossError(
                        f"loss is {value} at step {p.step}; switches {self.cfg.switches.to_dict()}; training stopped "
                        f"(read back with steps {pending[0].step}-{pending[-1].step})"
                    )
        results = [
            StepResult(p.step, value, p.lr, skip, elapsed)
            for p, value, skip in zip(pending, losses_read, skipped, strict=True)
        ]
        self.history.extend(results)
        return results

    def train_step(self, batch: dict[str, torch.Tensor]) -> StepResult:
        """One optimizer step on ``batch``, read back at once (for callers that want every step's loss).

        Training loops and benchmarks call :meth:`advance` and read back once per window instead.
        """
        self.advance(batch)
        return self.read_back()[-1]

    # ------------------------------------------------------------------ the run

    def fit(self) -> list[StepResult]:
        """Train until ``cfg.steps``, with a progress bar, metrics.jsonl and checkpoints in ``out_dir``."""
        out = Path(self.cfg.out_dir) if self.cfg.out_dir else None
        main_process = self.process.rank == 0
        if out and main_process and self.cfg.overwrite and not self.cfg.resume and out.is_dir() and any(out.iterdir()):
            # Move the old run aside in one rename, then delete it: never a folder half old, half new.
            aside = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            out.rename(aside)
            shutil.rmtree(aside)
        if out and main_process:
            self.write_run_record(out)
        bar = tqdm(total=self.cfg.steps, initial=self.step, disable=not main_process, unit="step", desc=self.cfg.model)
        metrics = (out / "metrics.jsonl").open("a") if out and main_process else None
        self._window_started = time.perf_counter()
        try:
            while self.step < self.cfg.steps:
                self.advance(self.next_batch())
                bar.update(1)
                saving = bool(out and self.cfg.save_every and self.step % self.cfg.save_every == 0)
                if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps or saving:
                    window = self.read_back()
                    bar.set_postfix(loss=f"{window[-1].loss:.4f}", lr=f"{window[-1].lr:.2e}")
                    if metrics:
                        metrics.write(json.dumps(self._metrics_record(window)) + "\n")
                        metrics.flush()
                if saving:
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
            "resumed_from": self.cfg.resume,
            "initial_weights": self.initial_weights,
            "changes_at_resume": self.resume_changes,
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
            "dataset": self.dataset_identity,
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
        saved = _flat_config(TrainConfig.from_dict(state["config"]).to_dict())
        now = _flat_config(self.cfg.to_dict())
        differing = {key: (saved.get(key), value) for key, value in now.items() if saved.get(key) != value}
        refused = {key: pair for key, pair in differing.items() if key not in MAY_CHANGE_ON_RESUME}
        if refused:
            listed = "; ".join(f"{key}: checkpoint {old!r}, this run {new!r}" for key, (old, new) in refused.items())
            raise CheckpointError(f"resuming {path} with other settings would change the run: {listed}. Give the "
                                  "checkpoint's values (or leave the flags out), or start a new run")
        check_same_data(path, state.get("dataset"), self.dataset_identity)
        self.resume_changes = [{"step": int(state["step"]), "field": key, "from": old, "to": new}
                               for key, (old, new) in differing.items() if key not in ("resume", "overwrite")]
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
