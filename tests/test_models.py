"""DiT and U-ViT: presets, parameter counts, checkpoint names, backends agreeing end to end."""

from __future__ import annotations

import pytest
import timm.layers
import torch

from dit_repro.models import PRESETS, build_model, set_attention_backend
from dit_repro.models.attention import Attention, Backend, unavailable_reason
from tests.helpers import GRADIENT_ERROR_MULTIPLE, assert_close_to_reference, perturb_


def meta_model(name: str, input_size: int = 32, **kw):
    with torch.device("meta"):
        return build_model(name, input_size=input_size, in_channels=4, num_classes=1000, **kw)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_dit_xl2_parameter_count_matches_release() -> None:
    # The original release at 256 px (4x32x32 latents, 1000 classes + null), fixed position embedding included.
    assert count(meta_model("DiT-XL/2")) == 675_129_632


# The DiT paper's Table 1 sizes, in millions (patch size changes the count by < 1M).
@pytest.mark.parametrize("size, millions", [("S", 33), ("B", 130), ("L", 458), ("XL", 675)])
@pytest.mark.parametrize("patch", [2, 4, 8])
def test_dit_parameter_counts_match_paper(size: str, patch: int, millions: int) -> None:
    assert abs(count(meta_model(f"DiT-{size}/{patch}")) / 1e6 - millions) < 1.0


@pytest.mark.parametrize("name, millions", [("U-ViT-H/2", 501), ("U-ViT-L/2", 287)])
def test_uvit_parameter_counts_match_paper(name: str, millions: int) -> None:
    assert round(count(meta_model(name)) / 1e6) == millions


def test_all_presets_exist_with_published_shapes() -> None:
    dit = {f"DiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8)}
    uvit = {f"U-ViT-{s}/{p}" for s in ("S", "M", "L", "H") for p in (2, 4)}
    assert set(PRESETS) == dit | uvit
    assert (PRESETS["DiT-XL/2"].depth, PRESETS["DiT-XL/2"].hidden_size, PRESETS["DiT-XL/2"].num_heads) == (28, 1152, 16)
    assert (PRESETS["DiT-B/4"].depth, PRESETS["DiT-B/4"].hidden_size, PRESETS["DiT-B/4"].num_heads) == (12, 768, 12)
    assert (PRESETS["U-ViT-M/2"].depth, PRESETS["U-ViT-M/2"].hidden_size, PRESETS["U-ViT-M/2"].num_heads) == (16, 768, 12)
    uvit_h = meta_model("U-ViT-H/2")
    assert (len(uvit_h.in_blocks), len(uvit_h.out_blocks)) == (14, 14)
    assert uvit_h.in_blocks[0].attn.qkv.bias is None


def test_dit_state_dict_names_and_shapes_match_release() -> None:
    shapes = {k: tuple(v.shape) for k, v in meta_model("DiT-XL/2").state_dict().items()}
    expected = {
        "x_embedder.proj.weight": (1152, 4, 2, 2),
        "x_embedder.proj.bias": (1152,),
        "t_embedder.mlp.0.weight": (1152, 256),
        "t_embedder.mlp.2.weight": (1152, 1152),
        "y_embedder.embedding_table.weight": (1001, 1152),
        "pos_embed": (1, 256, 1152),
        "blocks.27.attn.qkv.weight": (3456, 1152),
        "blocks.27.attn.proj.weight": (1152, 1152),
        "blocks.27.mlp.fc1.weight": (4608, 1152),
        "blocks.27.mlp.fc2.weight": (1152, 4608),
        "blocks.27.adaLN_modulation.1.weight": (6912, 1152),
        "final_layer.linear.weight": (32, 1152),
        "final_layer.adaLN_modulation.1.weight": (2304, 1152),
    }
    for key, shape in expected.items():
        assert shapes[key] == shape, key
    prefixes = {k.split(".")[0] for k in shapes}
    assert prefixes == {"x_embedder", "t_embedder", "y_embedder", "pos_embed", "blocks", "final_layer"}
    assert not meta_model("DiT-XL/2").pos_embed.requires_grad


def test_uvit_state_dict_names_and_shapes_match_u_vits_release() -> None:
    """U-ViT-H/2 as U-ViT's configs/imagenet256_uvit_huge.py builds it (conv=False, no time MLP, 1001 labels):
    every tensor name of its libs/uvit.py, and no other, with the release's shapes."""
    model = meta_model("U-ViT-H/2", conv=False, mlp_time_embed=False, timestep_offset=1)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    block = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "norm2.weight",
             "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"]
    expected_names = {"patch_embed.proj.weight", "patch_embed.proj.bias", "label_emb.weight", "pos_embed",
                      "norm.weight", "norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    expected_names |= {f"mid_block.{name}" for name in block}
    for i in range(14):
        expected_names |= {f"in_blocks.{i}.{name}" for name in block}
        expected_names |= {f"out_blocks.{i}.{name}" for name in [*block, "skip_linear.weight", "skip_linear.bias"]}
    assert set(shapes) == expected_names
    expected_shapes = {
        "patch_embed.proj.weight": (1152, 4, 2, 2),
        "label_emb.weight": (1001, 1152),
        "pos_embed": (1, 2 + 256, 1152),
        "in_blocks.13.attn.qkv.weight": (3456, 1152),
        "out_blocks.0.skip_linear.weight": (1152, 2304),
        "mid_block.mlp.fc1.weight": (4608, 1152),
        "decoder_pred.weight": (16, 1152),
    }
    for key, shape in expected_shapes.items():
        assert shapes[key] == shape, key
    # conv=True adds U-ViT's final 3x3 convolution; mlp_time_embed its time MLP.
    conv = meta_model("U-ViT-S/2", conv=True, mlp_time_embed=True).state_dict()
    assert tuple(conv["final_layer.weight"].shape) == (4, 4, 3, 3) and "time_embed.0.weight" in conv


def test_a_timestep_offset_shifts_the_timesteps_the_model_sees() -> None:
    kwargs = {"input_size": 4, "in_channels": 4, "num_classes": 10}
    plain = perturb_(build_model("U-ViT-S/2", **kwargs), seed=1).eval()
    shifted = build_model("U-ViT-S/2", timestep_offset=1, **kwargs).eval()
    shifted.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 4, 4, 4), torch.tensor([0.0, 979.02]), torch.tensor([1, 10])
    with torch.no_grad():
        assert torch.equal(shifted(x, t, y), plain(x, t + 1, y))


def test_uvit_options_are_refused_for_dit_and_unknown_ones_for_both() -> None:
    with pytest.raises(ValueError, match="are U-ViT's; DiT presets take none of them"):
        build_model("DiT-S/2", input_size=4, in_channels=4, num_classes=10, conv=False)
    with pytest.raises(ValueError, match="not accepted; U-ViT presets take conv, mlp_time_embed, timestep_offset"):
        build_model("U-ViT-S/2", input_size=4, in_channels=4, num_classes=10, qk_scale=2.0)


@pytest.mark.equivalence
@pytest.mark.parametrize("name", ["DiT-S/2", "U-ViT-S/2"])
def test_state_dict_round_trips(name: str, tmp_path) -> None:
    model = perturb_(build_model(name, input_size=8, in_channels=4, num_classes=10), seed=1).eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    clone = build_model(name, input_size=8, in_channels=4, num_classes=10).eval()
    clone.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([3, 900]), torch.tensor([1, 10])
    with torch.no_grad():
        assert torch.equal(model(x, t, y), clone(x, t, y))


def _forward_backward(model, x, t, y):
    model.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_(True)
    out = model(x, t, y)
    out.square().mean().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.detach(), grads


@pytest.mark.equivalence
@pytest.mark.parametrize("name", ["DiT-S/2", "U-ViT-S/2"])
def test_whole_model_backends_agree(name: str) -> None:
    """Forward and every parameter gradient, each backend vs a float64 math reference."""
    torch.manual_seed(0)
    model = perturb_(build_model(name, input_size=8, in_channels=4, num_classes=10, class_dropout_prob=0.0), 2).eval()
    gen = torch.Generator().manual_seed(3)
    x, t, y = torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([10, 700]), torch.tensor([4, 7])

    reference = build_model(name, input_size=8, in_channels=4, num_classes=10, class_dropout_prob=0.0).double().eval()
    reference.load_state_dict(model.state_dict())
    set_attention_backend(reference, "math", "cpu", torch.float64)
    ref = _forward_backward(reference, x.double(), t, y)
    set_attention_backend(model, "math", "cpu")
    plain = _forward_backward(model, x, t, y)
    for backend in Backend:
        if unavailable_reason(backend.value, "cpu", torch.float32, model.blocks[0].attn.head_dim):
            continue
        set_attention_backend(model, backend.value, "cpu")
        got = _forward_backward(model, x, t, y)
        assert_close_to_reference(f"{name} {backend.value} out", got[0], plain[0], ref[0], torch.float32)
        assert_close_to_reference(
            f"{name} {backend.value} dx", got[1], plain[1], ref[1], torch.float32, GRADIENT_ERROR_MULTIPLE
        )
        for key in ref[2]:
            assert_close_to_reference(
                f"{name} {backend.value} d{key}", got[2][key], plain[2][key], ref[2][key], torch.float32,
                GRADIENT_ERROR_MULTIPLE,
            )


@pytest.mark.equivalence
@pytest.mark.parametrize("fused", [False, True])
def test_timm_attention_agrees_with_ours(fused: bool) -> None:
    torch.manual_seed(0)
    theirs = timm.layers.Attention(96, num_heads=4, qkv_bias=True).eval()
    theirs.fused_attn = fused
    ours = Attention(96, num_heads=4, qkv_bias=True, backend="sdpa" if fused else "math").eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 17, 96)
    with torch.no_grad():
        # Same operations in the same order: the results are bit-identical.
        assert torch.equal(ours(x), theirs(x))


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model preset 'DiT-XXL/2'; valid presets: DiT-S/2, DiT-S/4"):
        build_model("DiT-XXL/2", input_size=32, in_channels=4, num_classes=10)


def test_untileable_size_names_allowed_sizes() -> None:
    with pytest.raises(ValueError, match=r"cannot tile an input of 30x30 .* multiple of 4 \(e\.g\. 4, 8, 12"):
        build_model("DiT-S/4", input_size=30, in_channels=4, num_classes=10)


@pytest.mark.parametrize("name", ["DiT-S/2", "U-ViT-S/2"])
def test_wrong_input_shape_names_expected_shape(name: str) -> None:
    model = build_model(name, input_size=8, in_channels=4, num_classes=10)
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 4, 8, 8\), got \(2, 3, 8, 8\)"):
        model(torch.randn(2, 3, 8, 8), torch.tensor([1, 2]), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"timesteps t of shape \(2,\)"):
        model(torch.randn(2, 4, 8, 8), torch.tensor([1]), torch.tensor([1, 2]))
