"""Per-GPU memory of one training step, counted tensor by tensor without a GPU.

The step runs on fake tensors (``FakeTensorMode``: shapes and dtypes, no data, no arithmetic),
so DiT-XL/2 at the paper's batch costs seconds on a CPU. A dispatch mode registers the storage
of every tensor an operation returns and a finalizer that fires when the storage is freed
(saved activations included: autograd keeps their storages alive); the peak of the live bytes
over the step is the tensor memory a GPU would have to hold.

Modelled: fp32 weights, their gradients, AdamW's two moments, an EMA copy, DDP's gradient
buckets, the VAE's weights and its encoding of the batch (live features), the batch itself,
saved activations (with or without checkpointing), autocast's half-precision weight copies and
activations under mixed precision, the optimizer step and the EMA update.

Not modelled, so the figure is a lower bound of what ``nvidia-smi`` shows: the CUDA context,
cuBLAS/cuDNN workspaces, NCCL buffers, and the caching allocator's rounding and fragmentation.
Mixed precision runs CPU autocast in float16 as a stand-in for CUDA autocast; the two policies
differ in a few ops (CUDA keeps softmax in fp32), which matters only for the attention
probabilities of non-checkpointed math attention.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from dit_repro.config import Checkpointing, Precision
from dit_repro.data.vae import LATENT_CHANNELS, SD_SCALE_FACTOR, SD_VAE_CONFIG_DIR
from dit_repro.data.vae import VAE_DOWNSAMPLE as LATENT_DOWNSAMPLE
from dit_repro.diffusion import create_diffusion
from dit_repro.models import PRESETS, build_model
from dit_repro.models.attention import Backend
from dit_repro.precision import autocast_dtype
from dit_repro.switches import apply_checkpointing, diffusion_loss, force_attention

FAMILY_ATTENTION = {"dit": Backend.MATH, "uvit": Backend.FLASH}
"""The attention each code base ran in the paper: DiT the conventional math, U-ViT FlashAttention (§4.2)."""


@dataclass(frozen=True)
class MemorySpec:
    """One training configuration on one GPU."""

    model: str
    """Model preset, e.g. DiT-XL/2."""
    per_gpu_batch: int
    """Images per GPU per step (global batch / GPUs)."""
    checkpointing: str
    """``none`` or ``full``."""
    precision: str
    """fp32, tf32 (same tensors as fp32), fp16 or bf16 (autocast)."""
    features: str
    """``live`` (the VAE encodes every batch on the GPU) or ``cached``."""
    image_size: int = 256
    """Image side in pixels."""
    num_classes: int = 1000
    """Label classes (ImageNet)."""
    ddp: bool = True
    """DDP's gradient buckets are held (DiT's script wraps the model in DDP at every GPU count)."""

    def __post_init__(self) -> None:
        if self.model not in PRESETS:
            raise ValueError(f"unknown model preset {self.model!r}")
        if self.per_gpu_batch < 1:
            raise ValueError(f"per_gpu_batch must be >= 1, got {self.per_gpu_batch}")
        if self.checkpointing not in ("none", "full"):
            raise ValueError(f"checkpointing must be none or full, got {self.checkpointing!r}")
        if self.precision not in {p.value for p in Precision}:
            raise ValueError(f"precision must be fp32, tf32, fp16 or bf16, got {self.precision!r}")
        if self.features not in ("live", "cached"):
            raise ValueError(f"features must be live or cached, got {self.features!r}")

    @property
    def tensor_key(self) -> tuple[Any, ...]:
        """Configurations with equal keys hold identical tensors (TF32 changes kernels, not tensors)."""
        precision = "fp32" if self.precision == "tf32" else self.precision
        return (self.model, self.per_gpu_batch, self.checkpointing, precision, self.features, self.image_size,
                self.num_classes, self.ddp)


@dataclass(frozen=True)
class MemoryEstimate:
    """The modelled memory of one training step."""

    spec: MemorySpec
    """What was modelled."""
    peak_bytes: int
    """Peak of the live tensor bytes over the step (a lower bound of the GPU's figure)."""
    resident_bytes: int
    """Held before the step starts: weights, EMA, optimizer moments, DDP buckets, VAE weights."""
    components: dict[str, int] = field(default_factory=dict)
    """Resident bytes by kind."""

    @property
    def peak_mib(self) -> float:
        """The peak in MiB (the paper's unit)."""
        return self.peak_bytes / 2**20


class _LiveStorages(TorchDispatchMode):
    """Counts the bytes of every live storage an operation created, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live: set[int] = set()
        """Keys of the storages counted and not yet freed."""
        self.current = 0
        """Bytes of those storages."""
        self.peak = 0
        """Largest ``current`` seen."""

    def track(self, tensor: torch.Tensor) -> None:
        """Count ``tensor``'s storage until it is freed (once per storage, views share it)."""
        storage = tensor.untyped_storage()
        key = storage._cdata  # the C++ storage's address: one key per storage whatever Python wrapper it has
        if key in self.live:
            return
        size = storage.nbytes()
        self.live.add(key)
        self.current += size
        self.peak = max(self.peak, self.current)
        finalizer = weakref.finalize(storage, self._freed, key, size)
        finalizer.atexit = False

    def _freed(self, key: int, size: int) -> None:
        if key in self.live:
            self.live.discard(key)
            self.current -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        """Run the operation, then count every storage it returned."""
        out = func(*args, **(kwargs or {}))
        for item in tree_leaves(out):
            if isinstance(item, torch.Tensor):
                self.track(item)
        return out


class MemoryModel:
    """Builds fake models once and models training steps on them; results are cached per tensor key."""

    def __init__(self) -> None:
        self._mode = FakeTensorMode(allow_non_fake_inputs=True)
        self._models: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer, list[torch.Tensor], list[torch.Tensor]]] = {}
        self._vae: torch.nn.Module | None = None
        self._cache: dict[tuple[Any, ...], MemoryEstimate] = {}

    def estimate(self, spec: MemorySpec) -> MemoryEstimate:
        """The peak tensor memory of one steady-state training step of ``spec``."""
        if spec.tensor_key not in self._cache:
            self._cache[spec.tensor_key] = self._run(spec)
        cached = self._cache[spec.tensor_key]
        return MemoryEstimate(spec, cached.peak_bytes, cached.resident_bytes, dict(cached.components))

    def cached(self, spec: MemorySpec) -> MemoryEstimate | None:
        """The estimate of ``spec`` if a configuration with the same tensors was already modelled, else None."""
        found = self._cache.get(spec.tensor_key)
        return None if found is None else MemoryEstimate(spec, found.peak_bytes, found.resident_bytes, dict(found.components))

    # ------------------------------------------------------------------ fake models

    def _model(self, spec: MemorySpec):
        key = f"{spec.model}@{spec.image_size}/{spec.num_classes}"
        if key not in self._models:
            family = PRESETS[spec.model].family
            latent = spec.image_size // LATENT_DOWNSAMPLE
            model = build_model(spec.model, input_size=latent, in_channels=LATENT_CHANNELS, num_classes=spec.num_classes)
            force_attention(model, FAMILY_ATTENTION[family])
            params = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
            for p in params:  # one zero step creates AdamW's moments, as after the first real step
                p.grad = torch.zeros_like(p)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            ema = [t.detach().clone() for t in (*model.parameters(), *model.buffers())]
            buckets = [torch.zeros_like(p) for p in params]
            self._models[key] = (model, optimizer, ema, buckets)
        return self._models[key]

    def _vae_model(self) -> torch.nn.Module:
        if self._vae is None:
            self._vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(SD_VAE_CONFIG_DIR)))
            self._vae.requires_grad_(False)
        return self._vae

    # ------------------------------------------------------------------ one step

    def _run(self, spec: MemorySpec) -> MemoryEstimate:
        with self._mode:
            model, optimizer, ema, buckets = self._model(spec)
            vae = self._vae_model() if spec.features == "live" else None
            apply_checkpointing(model, Checkpointing(spec.checkpointing))
            diffusion = create_diffusion(learn_sigma=model.learn_sigma)
            moments = [s for state in optimizer.state.values() for s in state.values() if isinstance(s, torch.Tensor)]
            resident = {
                "weights": list(model.parameters()) + list(model.buffers()),
                "ema": ema,
                "optimizer": moments,
                "ddp_buckets": buckets if spec.ddp else [],
                "vae_weights": list(vae.parameters()) if vae is not None else [],
            }
            tracker = _LiveStorages()
            with tracker:
                components = {}
                for name, tensors in resident.items():
                    before = tracker.current
                    for tensor in tensors:
                        tracker.track(tensor)
                    components[name] = tracker.current - before
                resident_bytes = tracker.current
                tracker.peak = resident_bytes
                self._step(spec, model, optimizer, ema, vae, diffusion)
            return MemoryEstimate(spec, tracker.peak, resident_bytes, components)

    @staticmethod
    def _step(spec: MemorySpec, model, optimizer, ema, vae, diffusion) -> None:
        b, latent = spec.per_gpu_batch, spec.image_size // LATENT_DOWNSAMPLE
        if vae is not None:
            images = torch.randn(b, 3, spec.image_size, spec.image_size)
            with torch.no_grad():  # both papers' scripts encode in fp32 outside autocast
                posterior = vae.encode(images).latent_dist
                x0 = (posterior.mean + posterior.std * torch.randn_like(posterior.mean)) * SD_SCALE_FACTOR
            del images, posterior
        else:
            x0 = torch.randn(b, LATENT_CHANNELS, latent, latent)
        t = torch.randint(0, diffusion.num_timesteps, (b,))
        y = torch.randint(0, spec.num_classes, (b,))
        noise = torch.randn_like(x0)
        loss = diffusion_loss(model, diffusion, x0, t, {"y": y}, noise, autocast_dtype(Precision(spec.precision)))
        loss.backward()
        del loss, x0, noise
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            torch._foreach_lerp_(ema, [*model.parameters(), *model.buffers()], 1e-4)


@functools.cache
def shared_memory_model() -> MemoryModel:
    """One memory model per process: the verification's claims and the general rules model the paper's
    setups once between them (each DiT-XL/2 configuration takes seconds)."""
    return MemoryModel()
