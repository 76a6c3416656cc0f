"""Analytic multiply-adds (MACs) of one forward pass, and model FLOPs for MFU.

The DiT papers report "Gflops" that are in fact multiply-adds; every field here names its unit.
Counted: every matrix product and convolution, including the attention score (q k^T) and value
(attn v) products. Not counted: norms, softmax, activations, additions (not multiply-adds).
Recompute from activation checkpointing is not model work and never enters these figures.

MFU divides by the GPU's dense datasheet peak at the row's precision: a tf32 row by the TF32
tensor-core rate, an fp32 row (TF32 forbidden) by the CUDA cores' FP32 rate, fp16 and bf16 rows by
the 16-bit tensor-core rate. The VAE encode of live-feature rows is counted apart
(:func:`encoder_flops_per_image`): it is not model work either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .models import parse_preset

MLP_RATIO = 4
DIT_FREQUENCY_EMBEDDING = 256

PRECISIONS = ("fp32", "tf32", "fp16", "bf16")
"""The precision switch's values (dit_repro.config.Precision), each with its own peak."""


@dataclass(frozen=True)
class DevicePeaks:
    """Dense peak FLOP/s of one GPU for each precision switch, and the datasheet they come from.

    Dense means without 2:4 structured sparsity: NVIDIA's Hopper datasheets print the sparse
    tensor-core figures (twice the dense ones) with a footnote, and training is dense.
    """

    part: str
    """The product the figures are for, e.g. "H100 SXM"."""
    fp32: float
    """FP32 on the CUDA cores: precision fp32 forbids TF32, so no tensor core does the math."""
    tf32: float
    """TF32 tensor cores: fp32 matmuls and convolutions with TF32 allowed."""
    bf16: float
    """BF16 tensor cores; FP16 has the same peak on every part here."""
    source: str
    """The datasheet the figures are read from."""

    def for_precision(self, precision: str) -> float:
        """The peak a row of ``precision`` (fp32, tf32, fp16 or bf16) is measured against."""
        precision = _precision_value(precision)
        if precision == "fp32":
            return self.fp32
        if precision == "tf32":
            return self.tf32
        return self.bf16  # fp16 and bf16 autocast: the same tensor-core rate on these parts

    def by_precision(self) -> dict[str, float]:
        """Every precision's peak, keyed by the switch's value."""
        return {precision: self.for_precision(precision) for precision in PRECISIONS}


# Datasheet figures, in FLOP/s, dense. The Hopper datasheets print tensor-core rates with sparsity;
# the dense rate is half of that (H100 SXM: TF32 989 -> 495, BF16 1,979 -> 989; the H100 architecture
# whitepaper gives the dense rates as 494.7 and 989.4). FP32 is the datasheet's non-tensor "FP32" line.
_A100_SOURCE = "NVIDIA A100 Tensor Core GPU datasheet (SXM and PCIe columns agree)"
_H100_SOURCE = "NVIDIA H100 Tensor Core GPU datasheet"
_H200_SOURCE = "NVIDIA H200 Tensor Core GPU datasheet"
A100_PEAKS = DevicePeaks("A100", fp32=19.5e12, tf32=156e12, bf16=312e12, source=_A100_SOURCE)
"""A100 SXM4 and PCIe, 40 and 80 GB: the same boost clock and SM count, so the same peaks."""
H100_SXM_PEAKS = DevicePeaks("H100 SXM", fp32=67e12, tf32=495e12, bf16=989e12, source=_H100_SOURCE)
"""H100 SXM5 (the name torch reports is "NVIDIA H100 80GB HBM3")."""
H100_PCIE_PEAKS = DevicePeaks("H100 PCIe", fp32=51e12, tf32=378e12, bf16=756e12, source=_H100_SOURCE)
"""H100 PCIe: fewer SMs and a lower clock than the SXM part."""
# The H100 NVL column prints TF32 835 and BF16 1,671 TFLOPS, both with sparsity: dense TF32 is half
# the dense BF16 rate (417.5), the same 1:2 ratio as on the SXM and PCIe parts.
H100_NVL_PEAKS = DevicePeaks("H100 NVL", fp32=60e12, tf32=417.5e12, bf16=835e12, source=_H100_SOURCE)
"""H100 NVL, per GPU (the datasheet's per-GPU column)."""
H200_PEAKS = DevicePeaks("H200 SXM", fp32=67e12, tf32=495e12, bf16=989e12, source=_H200_SOURCE)
"""H200 SXM: the H100 SXM's compute with more and faster memory."""
H200_NVL_PEAKS = DevicePeaks("H200 NVL", fp32=60e12, tf32=417.5e12, bf16=835e12, source=_H200_SOURCE)
"""H200 NVL: the datasheet's NVL column, the same compute as the H100 NVL."""

DEVICE_PEAKS: tuple[tuple[str, DevicePeaks], ...] = (
    (r"\bA100\b", A100_PEAKS),
    (r"\bH100\b.*\bNVL\b", H100_NVL_PEAKS),
    (r"\bH100\b.*\bPCIE\b", H100_PCIE_PEAKS),
    (r"\bH100\b", H100_SXM_PEAKS),
    (r"\bH200\b.*\bNVL\b", H200_NVL_PEAKS),
    (r"\bH200\b", H200_PEAKS),
)
"""Patterns over the upper-cased ``torch.cuda.get_device_name``, tried in order, with their peaks.

The NVL and PCIe variants come before the plain name, which is the SXM part ("NVIDIA H100 80GB
HBM3"). Word boundaries keep other products out: "GH200" or "A100X" match nothing and get no peak
rather than a neighbour's.
"""


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


def device_peaks(device_name: str) -> DevicePeaks | None:
    """The dense peaks of a GPU recognised in its name (see :data:`DEVICE_PEAKS`), else None (CPUs included)."""
    upper = device_name.upper()
    for pattern, peaks in DEVICE_PEAKS:
        if re.search(pattern, upper):
            return peaks
    return None


def peak_flops(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a recognised GPU at a row's precision (fp32, tf32, fp16, bf16), else None."""
    peaks = device_peaks(device_name)
    return None if peaks is None else peaks.for_precision(precision)


def mfu(model_flops_per_step: float, step_time_s: float, device_name: str, precision: str) -> float | None:
    """Model FLOPs utilisation: model FLOPs per step / step time / the device's peak at ``precision``.

    None without a peak for the device, or without a positive step time.
    """
    peak = peak_flops(device_name, precision)
    if peak is None or step_time_s <= 0:
        return None
    return model_flops_per_step / step_time_s / peak


def encoder_flops_per_image(autoencoder: Any, image_size: int, channels: int = 3) -> int:
    """FLOPs of one forward of an ``AutoencoderKL``'s encode (encoder and quant conv) on one image.

    Counted by ``FlopCounterMode`` over fake tensors, so nothing runs and the weights stay where
    they are. Attention is forced onto the math backend for the count: the counter has no formula
    for every fused kernel (the CPU flash kernel among them), while the math backend's matmuls it
    sees; the products are the same whichever kernel computes them.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    device = next(autoencoder.parameters()).device
    with FakeTensorMode(allow_non_fake_inputs=True):
        images = torch.empty(1, channels, image_size, image_size, device=device)
        with FlopCounterMode(display=False) as counter, torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
            autoencoder.encode(images)
    return int(counter.get_total_flops())


def _precision_value(precision: Any) -> str:
    # Accepts the config's Precision enum as well as its string value.
    value = str(getattr(precision, "value", precision))
    if value not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    return value
