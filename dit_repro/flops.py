"""Analytic multiply-adds (MACs) of one forward pass, and model FLOPs for MFU.

The DiT papers report "Gflops" that are in fact multiply-adds; every field here names its unit.
Counted: every matrix product and convolution, including the attention score (q k^T) and value
(attn v) products. Not counted: norms, softmax, activations, additions (not multiply-adds).
Recompute from activation checkpointing is not model work and never enters these figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import parse_preset

MLP_RATIO = 4
DIT_FREQUENCY_EMBEDDING = 256

# Dense bf16 tensor-core peaks in FLOP/s, for MFU (datasheets). Checked in order: the PCIe H100
# (a lower clock and fewer SMs) must match before the SXM part's plain "H100".
PEAK_FLOPS_BF16 = {"H100 PCIE": 756e12, "A100": 312e12, "H100": 989e12, "H200": 989e12}


@dataclass(frozen=True)
class ForwardMacs:
    """Multiply-adds of one forward pass for one image, split by where they happen."""

    linear: int
    """Patch embedding, embedders, qkv, projections, MLPs, modulation, output layers."""
    attention: int
    """The two token-by-token products per block: q k^T and attn v."""

    @property
    def total(self) -> int:
        """All multiply-adds of the forward pass."""
        return self.linear + self.attention


def forward_macs(model_name: str, input_size: int, in_channels: int, learn_sigma: bool | None = None) -> ForwardMacs:
    """Multiply-adds of one forward pass per image for a preset at ``input_size`` (latent or pixel side)."""
    preset = parse_preset(model_name)
    d, p, c_in = preset.hidden_size, preset.patch_size, in_channels
    if learn_sigma is None:
        learn_sigma = preset.family == "dit"
    c_out = 2 * c_in if learn_sigma else c_in
    n = (input_size // p) ** 2  # patch tokens
    patch_embed = n * c_in * p * p * d
    mlp = 2 * MLP_RATIO * d * d  # per token
    if preset.family == "dit":
        t_embed = DIT_FREQUENCY_EMBEDDING * d + d * d
        per_block = n * (3 * d * d + d * d + mlp) + 6 * d * d  # qkv, proj, mlp per token + adaLN
        final = 2 * d * d + n * d * p * p * c_out
        linear = patch_embed + t_embed + preset.depth * per_block + final
        attention = preset.depth * 2 * n * n * d
    else:
        tokens = n + 2  # time and class tokens
        blocks = preset.depth + 1  # in + mid + out
        per_block = tokens * (3 * d * d + d * d + mlp)
        skips = (preset.depth // 2) * tokens * 2 * d * d
        decoder = tokens * d * p * p * c_out
        final_conv = input_size * input_size * c_out * c_out * 9
        linear = patch_embed + blocks * per_block + skips + decoder + final_conv
        attention = blocks * 2 * tokens * tokens * d
    return ForwardMacs(linear=linear, attention=attention)


def train_flops_per_image(model_name: str, input_size: int, in_channels: int, learn_sigma: bool | None = None) -> int:
    """Model FLOPs of one training step per image: forward + backward = 3 forwards, 2 FLOPs per MAC."""
    return 3 * 2 * forward_macs(model_name, input_size, in_channels, learn_sigma).total


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak of a GPU recognised in its name (A100, H100, H200), else None (CPUs included)."""
    upper = device_name.upper()
    for key, value in PEAK_FLOPS_BF16.items():
        if key in upper:
            return value
    return None


def mfu(model_flops_per_step: float, step_time_s: float, device_name: str) -> float | None:
    """Model FLOPs utilisation: model FLOPs per step / step time / the device's peak; None without a peak."""
    peak = peak_flops(device_name)
    if peak is None or step_time_s <= 0:
        return None
    return model_flops_per_step / step_time_s / peak
