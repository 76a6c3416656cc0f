"""Model presets: DiT-{S,B,L,XL}/{2,4,8} and U-ViT-{S,M,L,H}/{2,4}, built by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .attention import AUTO, Attention, set_attention_backend
from .dit import DIT_PATCHES, DIT_SIZES, DiT
from .uvit import UVIT_PATCHES, UVIT_SIZES, UViT

__all__ = ["PRESETS", "Preset", "build_model", "is_latent_preset", "parse_preset", "Attention", "set_attention_backend"]


@dataclass(frozen=True)
class Preset:
    """The architecture of one named model."""

    name: str
    """The preset name, e.g. DiT-XL/2."""
    family: str
    """``dit`` or ``uvit``."""
    depth: int
    """DiT: number of blocks. U-ViT: in-blocks plus out-blocks (one mid-block comes on top)."""
    hidden_size: int
    """Token width."""
    num_heads: int
    """Attention heads."""
    patch_size: int
    """Side of a square patch in input pixels/latent cells."""


PRESETS: dict[str, Preset] = {
    **{
        f"DiT-{size}/{patch}": Preset(f"DiT-{size}/{patch}", "dit", depth, hidden, heads, patch)
        for size, (depth, hidden, heads) in DIT_SIZES.items()
        for patch in DIT_PATCHES
    },
    **{
        f"U-ViT-{size}/{patch}": Preset(f"U-ViT-{size}/{patch}", "uvit", depth, hidden, heads, patch)
        for size, (hidden, depth, heads) in UVIT_SIZES.items()
        for patch in UVIT_PATCHES
    },
}


def is_latent_preset(name: str) -> bool:
    """Whether the preset's paper trains it on VAE latents: every DiT, and U-ViT's /2 presets
    (U-ViT-L/2, H/2 on ImageNet 256/512 latents; its /4 presets model 64 px ImageNet in pixels)."""
    preset = parse_preset(name)
    return preset.family == "dit" or preset.patch_size == 2


def parse_preset(name: str) -> Preset:
    """The preset called ``name``, or an error listing every valid name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}") from None


UVIT_OPTIONS = ("conv", "mlp_time_embed", "timestep_offset")
"""Constructor options of U-ViT that a file of U-ViT's release fixes (see :func:`build_model`)."""


def build_model(
    name: str,
    *,
    input_size: int,
    in_channels: int,
    num_classes: int,
    learn_sigma: bool | None = None,
    attention: str = AUTO,
    class_dropout_prob: float = 0.1,
    **uvit_options: Any,
) -> nn.Module:
    """Build a preset for a square input of ``input_size`` (latent cells, or pixels in pixel space).

    ``learn_sigma`` None keeps each family's published choice: DiT learns the variance, U-ViT not.
    ``uvit_options`` (U-ViT presets only): ``conv`` (the final 3x3 convolution), ``mlp_time_embed``
    and ``timestep_offset``, which describe a file of U-ViT's release (see :mod:`dit_repro.models.uvit`).
    """
    preset = parse_preset(name)
    if input_size % preset.patch_size:
        allowed = ", ".join(str(preset.patch_size * k) for k in range(1, 9))
        raise ValueError(
            f"{name} cannot tile an input of {input_size}x{input_size} with {preset.patch_size}x{preset.patch_size} "
            f"patches; use a multiple of {preset.patch_size} (e.g. {allowed}, ...)"
        )
    common = dict(
        input_size=input_size,
        patch_size=preset.patch_size,
        in_channels=in_channels,
        depth=preset.depth,
        num_heads=preset.num_heads,
        num_classes=num_classes,
        class_dropout_prob=class_dropout_prob,
        attention=attention,
        preset_name=name,
    )
    if uvit_options and preset.family != "uvit":
        raise ValueError(f"{name}: options {sorted(uvit_options)} are U-ViT's; DiT presets take none of them")
    unknown = sorted(set(uvit_options) - set(UVIT_OPTIONS))
    if unknown:
        raise ValueError(f"{name}: options {unknown} are not accepted; U-ViT presets take {', '.join(UVIT_OPTIONS)}")
    if preset.family == "dit":
        return DiT(hidden_size=preset.hidden_size, learn_sigma=True if learn_sigma is None else learn_sigma, **common)
    return UViT(embed_dim=preset.hidden_size, learn_sigma=bool(learn_sigma), **common, **uvit_options)
