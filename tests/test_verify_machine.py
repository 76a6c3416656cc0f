"""Machine-independent facts: parameter counts, recompute FLOPs, the VAE's latent shape."""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from dit_repro.models import build_model
from dit_repro.models.attention import Attention, Backend, Selection
from dit_repro.verify.machine import latent_shape, param_count, training_step_flops


def test_parameter_counts_of_the_paper_s_models() -> None:
    assert param_count("DiT-XL/2") == 675_129_632
    assert param_count("DiT-L/2") == 458_102_816
    assert param_count("DiT-B/2") == 130_512_416
    assert param_count("U-ViT-H/2") == 500_832_164
    assert param_count("U-ViT-L/2") == 286_763_172


def test_checkpointing_adds_exactly_one_forward_of_every_block() -> None:
    plain, recompute = training_step_flops("DiT-S/2", False), training_step_flops("DiT-S/2", True)
    with FakeTensorMode(allow_non_fake_inputs=True):
        net = build_model("DiT-S/2", input_size=32, in_channels=4, num_classes=1000)
        for module in net.modules():  # selected directly: the availability probe would add its own FLOPs
            if isinstance(module, Attention):
                module.selection = Selection(Backend.MATH.value, Backend.MATH)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            for block in net.blocks:
                block(torch.randn(1, 256, 384), torch.randn(1, 384))
    print(f"plain {plain}, with recompute {recompute}, one forward of the blocks {counter.get_total_flops()}")
    assert recompute - plain == counter.get_total_flops()


def test_the_sd_vae_latent_of_a_256_px_image_is_4x32x32() -> None:
    assert latent_shape(256) == (4, 32, 32)
    assert latent_shape(512) == (4, 64, 64)
