"""Typed configuration: the model, the optimization switches and the training run.

Every field carries a docstring (the string literal under it). Cross-field rules live in
``__post_init__`` so that an impossible combination is refused before any work starts.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run, with the reason and what would be accepted."""


class Precision(str, enum.Enum):
    """Numeric precision of the training step (master weights always stay fp32)."""

    FP32 = "fp32"
    TF32 = "tf32"
    FP16 = "fp16"
    BF16 = "bf16"


class Checkpointing(str, enum.Enum):
    """Activation (gradient) checkpointing around transformer blocks."""

    NONE = "none"
    FULL = "full"
    EVERY_K = "every-k"


class CompileMode(str, enum.Enum):
    """``torch.compile`` mode, or ``off`` for eager execution."""

    OFF = "off"
    DEFAULT = "default"
    REDUCE_OVERHEAD = "reduce-overhead"
    MAX_AUTOTUNE = "max-autotune"


class CompileScope(str, enum.Enum):
    """What ``torch.compile`` wraps: the whole model or each block separately."""

    MODEL = "model"
    BLOCKS = "blocks"


class Features(str, enum.Enum):
    """Where the diffusion input comes from."""

    PIXELS = "pixels"
    LIVE = "live"
    CACHED = "cached"


class Distributed(str, enum.Enum):
    """Data parallelism."""

    NONE = "none"
    DDP = "ddp"


class Protocol(str, enum.Enum):
    """Training recipe (optimizer, learning rate, betas, weight decay, warm-up)."""

    DIT = "dit"
    UVIT = "uvit"


ATTENTION_CHOICES = ("auto", "math", "sdpa", "flash", "efficient", "cudnn", "xformers")


@dataclass(frozen=True)
class ProtocolRecipe:
    """The optimizer settings of one paper's training recipe."""

    lr: float
    """Peak learning rate of AdamW."""
    weight_decay: float
    """Decoupled weight decay of AdamW."""
    betas: tuple[float, float]
    """AdamW (beta1, beta2)."""
    warmup_steps: int
    """Linear warm-up length in optimizer steps (0 = constant learning rate)."""
    global_batch_size: int
    """The batch size the recipe was published with."""


PROTOCOLS: dict[Protocol, ProtocolRecipe] = {
    # DiT (Peebles & Xie): AdamW 1e-4, no weight decay, no warm-up, batch 256.
    Protocol.DIT: ProtocolRecipe(1e-4, 0.0, (0.9, 0.999), 0, 256),
    # U-ViT (Bao et al.) ImageNet-256 latent recipe.
    Protocol.UVIT: ProtocolRecipe(2e-4, 0.03, (0.99, 0.99), 5000, 1024),
}


@dataclass
class Switches:
    """The optimizations the paper studies, one field each.

    They are applied in one fixed order by :mod:`dit_repro.switches`: precision, attention, checkpointing, compile, DDP.
    """

    attention: str = "auto"
    """Attention backend: auto (check-then-select), math, sdpa, flash, efficient, cudnn, xformers."""
    precision: Precision = Precision.FP32
    """fp32, tf32 (matmul precision flags), fp16 (autocast + grad scaler) or bf16 (autocast)."""
    checkpointing: Checkpointing = Checkpointing.NONE
    """Non-reentrant activation checkpointing: none, every block (full), or every k-th block."""
    checkpointing_k: int = 2
    """k for ``checkpointing=every-k``: blocks 0, k, 2k, ... are activation-checkpointed (the paper's
    GCP). Saving the run is ``TrainConfig.save_every``: no field named "checkpoint" means both."""
    compile: CompileMode = CompileMode.OFF
    """torch.compile mode, or off."""
    compile_scope: CompileScope = CompileScope.MODEL
    """Compile the whole model or each transformer block."""
    features: Features = Features.PIXELS
    """pixels (no VAE), live (VAE encode every step) or cached (latent cache)."""
    distributed: Distributed = Distributed.NONE
    """none, or ddp (launched by torchrun / accelerate launch)."""
    protocol: Protocol = Protocol.DIT
    """Training recipe: dit or uvit; any model can run under either."""

    def __post_init__(self) -> None:
        for name, kind in (
            ("precision", Precision),
            ("checkpointing", Checkpointing),
            ("compile", CompileMode),
            ("compile_scope", CompileScope),
            ("features", Features),
            ("distributed", Distributed),
            ("protocol", Protocol),
        ):
            setattr(self, name, _coerce_enum(kind, getattr(self, name), name))
        if self.attention not in ATTENTION_CHOICES:
            raise ConfigError(
                f"unknown attention backend {self.attention!r}; choose one of {', '.join(ATTENTION_CHOICES)}"
            )
        if self.checkpointing_k < 1:
            raise ConfigError(f"--checkpointing-k must be >= 1, got {self.checkpointing_k}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready view (enum members become their string values)."""
        return _plain(dataclasses.asdict(self))


@dataclass
class TrainConfig:
    """One training run: model, data, switches and bookkeeping."""

    model: str = "DiT-S/2"
    """Model preset, e.g. DiT-XL/2 or U-ViT-H/2 (``dit-repro info --list`` lists them)."""
    data: str = "digits"
    """Dataset: ``digits`` (shipped with scikit-learn), ``synthetic``, or an ImageFolder path."""
    image_size: int = 16
    """Side length in pixels of the images fed to the VAE or, with features=pixels, to the model."""
    num_classes: int | None = None
    """Number of class labels; None takes it from the dataset."""
    cache_dir: str | None = None
    """Latent cache made by ``dit-repro extract`` (required with features=cached)."""
    vae: str | None = None
    """VAE weights: a local folder or file of the SD ft-EMA/ft-MSE VAE, or ``tiny-random`` (tests only)."""
    global_batch_size: int = 32
    """Images per optimizer step summed over all processes."""
    steps: int = 200
    """Number of optimizer steps to run (counted from the start, resumed runs included)."""
    lr: float | None = None
    """Learning-rate override; None takes the protocol's."""
    warmup_steps: int | None = None
    """Warm-up override; None takes the protocol's."""
    ema_decay: float = 0.9999
    """Decay of the exponential moving average of the weights."""
    seed: int = 0
    """Global seed. Each process seeds the global generators with seed + rank; the draws that define
    the maths (data flips and posterior noise per item, timesteps/noise/label dropout per step) use
    seed alone over global indices, so results do not depend on the process count."""
    device: str = "auto"
    """``auto`` (cuda if present, else cpu), ``cpu`` or ``cuda``/``cuda:N``."""
    num_workers: int = 0
    """DataLoader worker processes."""
    out_dir: str | None = None
    """Run directory for config.json, env.json, metrics.jsonl and checkpoints; None writes nothing."""
    log_every: int = 10
    """Steps between metrics.jsonl records."""
    save_every: int = 0
    """Steps between saved checkpoints (0: only at the end, when out_dir is set)."""
    resume: str | None = None
    """Checkpoint file to resume from."""
    init_from: str | None = None
    """Weights to start from (this project's, DiT's or fast-DiT's checkpoint, or DiT's release; the EMA
    weights where the file has both); the optimizer, EMA and step start fresh. Not with ``resume``."""
    overwrite: bool = False
    """Replace a non-empty ``out_dir`` (without it, a run folder that holds anything is refused unless
    the run resumes)."""
    strict_fp32_encode: bool = False
    """features=live: encode with TF32 forbidden. By default the encode runs under the precision
    switch's TF32 flags (allowed under tf32, fp16 and bf16), as DiT's train.py does; strict fp32 is
    what the latent cache is extracted with, and what the cached-vs-live equivalence compares."""
    strict_images: bool = False
    """Refuse the run when the image folder holds unreadable images (or, with features=cached, when the
    cache was extracted without some). By default they are left out, with a warning, and listed in
    env.json."""
    switches: Switches = field(default_factory=Switches)
    """The optimization switches."""

    def __post_init__(self) -> None:
        if isinstance(self.switches, dict):
            self.switches = Switches(**_renamed(self.switches, LEGACY_SWITCH_KEYS))
        if self.global_batch_size < 1:
            raise ConfigError(f"global_batch_size must be >= 1, got {self.global_batch_size}")
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name, minimum in (("log_every", 1), ("num_workers", 0), ("save_every", 0), ("image_size", 1)):
            if getattr(self, name) < minimum:
                raise ConfigError(f"{name} must be >= {minimum}, got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.init_from and self.resume:
            raise ConfigError("--init-from starts a new run from weights, --resume continues one; give one of them")
        if self.switches.features is Features.CACHED and not self.cache_dir:
            raise ConfigError("--features cached needs a latent cache: pass --cache DIR, made by `dit-repro extract` "
                              "(TrainConfig.cache_dir)")
        if self.switches.features is Features.LIVE and not self.vae:
            raise ConfigError("--features live needs a VAE: pass --vae PATH, a local weights folder or file, or tiny-random "
                              "for tests (TrainConfig.vae)")

    @property
    def recipe(self) -> ProtocolRecipe:
        """The protocol's recipe with this run's overrides applied."""
        base = PROTOCOLS[self.switches.protocol]
        return dataclasses.replace(
            base,
            lr=self.lr if self.lr is not None else base.lr,
            warmup_steps=self.warmup_steps if self.warmup_steps is not None else base.warmup_steps,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready view of the resolved configuration."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        data = _renamed(data, LEGACY_CONFIG_KEYS)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown TrainConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)


LEGACY_SWITCH_KEYS = {"checkpoint_every": "checkpointing_k"}
"""Switch names of earlier versions, read from stored configs and results under their new names."""
LEGACY_CONFIG_KEYS = {"checkpoint_every_steps": "save_every"}
"""Config names of earlier versions, read from stored configs under their new names."""


def _renamed(data: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    """``data`` with the keys of earlier versions renamed (files written before a rename stay readable)."""
    return {renames.get(key, key): value for key, value in data.items()}


def _coerce_enum(kind: type[enum.Enum], value: Any, name: str) -> enum.Enum:
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ConfigError(f"unknown {name} {value!r}; choose one of {choices}") from None


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
