"""Attention backends as a registry: one enum member, one function and one check per backend.

``auto`` is the paper's "check then select": it probes the backends in order of preference for
the device and dtype at hand, takes the first that runs, and records why each one before it was
refused. A backend that is asked for by name and cannot run is an error, never a silent fallback.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel


class AttentionBackendUnavailable(RuntimeError):
    """A backend was requested by name on a device or dtype where it cannot run."""


class Backend(str, enum.Enum):
    """The attention implementations a model can be switched to."""

    MATH = "math"
    SDPA = "sdpa"
    FLASH = "flash"
    EFFICIENT = "efficient"
    CUDNN = "cudnn"
    XFORMERS = "xformers"


AUTO = "auto"

# Preference of check-then-select: fused kernels first, the explicit reference last.
AUTO_PREFERENCE = (Backend.FLASH, Backend.CUDNN, Backend.EFFICIENT, Backend.XFORMERS, Backend.SDPA, Backend.MATH)


# ----------------------------------------------------------------------------------------------
# Implementations. q, k, v: (batch, heads, tokens, head_dim) -> (batch, heads, tokens, head_dim)
# ----------------------------------------------------------------------------------------------


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Explicit softmax(q k^T / sqrt(d)) v, in the operation order of timm's unfused path."""
    scale = q.shape[-1] ** -0.5
    scores = (q * scale) @ k.transpose(-2, -1)  # (B, H, N, N)
    return scores.softmax(dim=-1) @ v  # (B, H, N, D)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """PyTorch's scaled_dot_product_attention with its own kernel dispatch."""
    return F.scaled_dot_product_attention(q, k, v)


def _forced_sdpa(kernel: SDPBackend) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(kernel):
            return F.scaled_dot_product_attention(q, k, v)

    run.__doc__ = f"scaled_dot_product_attention restricted to the {kernel.name} kernel."
    return run


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """xFormers' memory-efficient attention (it takes (batch, tokens, heads, head_dim))."""
    import xformers.ops  # imported lazily: optional dependency

    out = xformers.ops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


# ----------------------------------------------------------------------------------------------
# Checks: None when the backend can run, else the reason it cannot.
# ----------------------------------------------------------------------------------------------


def _always(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def _needs_cuda(device: torch.device, dtype: torch.dtype) -> str | None:
    return None if device.type == "cuda" else f"needs a CUDA device, this is {device.type}"


def _needs_xformers(device: torch.device, dtype: torch.dtype) -> str | None:
    if importlib.util.find_spec("xformers") is None:
        return "xformers is not installed (pip install xformers)"
    return _needs_cuda(device, dtype)


@dataclass(frozen=True)
class BackendSpec:
    """One registry entry."""

    backend: Backend
    """The backend's name."""
    run: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    """The implementation, (B, H, N, D) in and out."""
    precheck: Callable[[torch.device, torch.dtype], str | None]
    """Cheap static check (device type, installed package) done before the probe."""
    description: str
    """One line for ``dit-repro env``."""


REGISTRY: dict[Backend, BackendSpec] = {
    spec.backend: spec
    for spec in (
        BackendSpec(Backend.MATH, math_attention, _always, "explicit softmax attention (the reference)"),
        BackendSpec(Backend.SDPA, sdpa_attention, _always, "torch scaled_dot_product_attention, default dispatch"),
        BackendSpec(Backend.FLASH, _forced_sdpa(SDPBackend.FLASH_ATTENTION), _always, "SDPA forced to FlashAttention"),
        BackendSpec(
            Backend.EFFICIENT, _forced_sdpa(SDPBackend.EFFICIENT_ATTENTION), _needs_cuda, "SDPA forced to memory-efficient"
        ),
        BackendSpec(Backend.CUDNN, _forced_sdpa(SDPBackend.CUDNN_ATTENTION), _needs_cuda, "SDPA forced to cuDNN"),
        BackendSpec(Backend.XFORMERS, xformers_attention, _needs_xformers, "xFormers memory_efficient_attention"),
    )
}


@functools.cache
def unavailable_reason(name: str, device: str, dtype: torch.dtype, head_dim: int = 64) -> str | None:
    """Why ``name`` cannot run on ``device`` in ``dtype`` at this head size, or None if it can.

    After the static check, a tiny forward and backward is run: kernels have constraints (dtype,
    head size, GPU generation) that only the kernel itself knows.
    """
    spec = REGISTRY[parse_backend(name)]
    dev = torch.device(device)
    reason = spec.precheck(dev, dtype)
    if reason is not None:
        return reason
    try:
        # The probe must not inherit the caller's grad mode or autocast state.
        with torch.enable_grad(), torch.autocast(dev.type, enabled=False):
            probe = torch.randn(1, 1, 8, head_dim, device=dev, dtype=dtype, requires_grad=True)
            spec.run(probe, probe, probe).sum().backward()
    except Exception as exc:  # the kernel's own refusal is the reason we report
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"the kernel refused {dtype} head_dim={head_dim} on {dev.type}: {first_line}"
    return None


def parse_backend(name: str | Backend) -> Backend:
    """The Backend member for a name, or an error listing the valid names."""
    try:
        return Backend(name)
    except ValueError:
        valid = ", ".join([AUTO] + [b.value for b in Backend])
        raise ValueError(f"unknown attention backend {name!r}; choose one of {valid}") from None


@dataclass(frozen=True)
class Selection:
    """The outcome of resolving a requested backend for one device/dtype/head size."""

    requested: str
    """What was asked for (``auto`` or a backend name)."""
    backend: Backend
    """What runs."""
    refused: dict[str, str] = field(default_factory=dict)
    """For ``auto``: each preferred backend that was passed over, with the reason."""

    def to_dict(self) -> dict[str, object]:
        """JSON-ready record for run metadata."""
        return {"requested": self.requested, "backend": self.backend.value, "refused": dict(self.refused)}


def select_backend(
    requested: str, device: torch.device | str, dtype: torch.dtype = torch.float32, head_dim: int = 64
) -> Selection:
    """Resolve ``requested`` (``auto`` or a name) for this device, dtype and head size.

    A named backend that cannot run raises AttentionBackendUnavailable with the reason.
    """
    device_str = str(torch.device(device))
    if requested != AUTO:
        backend = parse_backend(requested)
        reason = unavailable_reason(backend.value, device_str, dtype, head_dim)
        if reason is not None:
            raise AttentionBackendUnavailable(f"attention backend {backend.value!r} is unavailable: {reason}")
        return Selection(requested, backend)
    refused: dict[str, str] = {}
    for backend in AUTO_PREFERENCE:
        reason = unavailable_reason(backend.value, device_str, dtype, head_dim)
        if reason is None:
            return Selection(AUTO, backend, refused)
        refused[backend.value] = reason
    raise AttentionBackendUnavailable(f"no attention backend can run here: {refused}")  # math always can


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Backend | str = Backend.MATH) -> torch.Tensor:
    """Run one backend on (B, H, N, D) tensors. No availability check: see select_backend."""
    return REGISTRY[parse_backend(backend)].run(q, k, v)


# ----------------------------------------------------------------------------------------------
# The module the models use
# ----------------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with the parameter names of timm's ``Attention`` (qkv, proj)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, backend: str = AUTO) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.requested_backend = backend
        self.selection: Selection | None = None
        """Set by set_attention_backend (or on the first call when left on auto)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, D)
        q, k, v = qkv.unbind(0)  # each (B, H, N, D)
        if self.selection is None:
            self.selection = select_backend(self.requested_backend, x.device, q.dtype, self.head_dim)
        x = attention(q, k, v, self.selection.backend)  # (B, H, N, D)
        x = x.transpose(1, 2).reshape(B, N, C)  # (B, N, C)
        return self.proj(x)  # (B, N, C)


def set_attention_backend(
    model: nn.Module, requested: str, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> Selection:
    """Resolve ``requested`` for the compute dtype and switch every Attention in ``model`` to it.

    ``dtype`` is the dtype attention will see (the autocast dtype under mixed precision).
    Returns the selection (the first module's; all modules share head size in these models).
    """
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    if not modules:
        raise ValueError(f"{type(model).__name__} has no dit_repro Attention modules")
    selection = select_backend(requested, device, dtype, modules[0].head_dim)
    for module in modules:
        module.requested_backend = requested
        module.selection = selection
    return selection


def backend_report(device: torch.device | str, dtype: torch.dtype = torch.float32, head_dim: int = 64) -> dict:
    """Every backend with its availability and reason, plus what ``auto`` picks (for ``dit-repro env``)."""
    device_str = str(torch.device(device))
    backends = {}
    for backend, spec in REGISTRY.items():
        reason = unavailable_reason(backend.value, device_str, dtype, head_dim)
        backends[backend.value] = {"available": reason is None, "reason": reason, "description": spec.description}
    return {"device": device_str, "dtype": str(dtype).removeprefix("torch."), "head_dim": head_dim,
            "backends": backends, "auto": select_backend(AUTO, device, dtype, head_dim).to_dict()}
