"""The VAE loader: offline specs, clear errors, fingerprints, strict-fp32 encoding."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dit_repro.config import ConfigError
from dit_repro.data.vae import (
    FULL_SIZE_RANDOM,
    RANDOM_WEIGHTS_NOTE,
    SD_SCALE_FACTOR,
    TINY_RANDOM,
    VAEUnavailableError,
    load_vae,
    weights_sha256,
)
from tests.data_support import tiny_vae

_LDM_NAMES = [
    # (diffusers pattern, original Stable Diffusion / LDM replacement); applied in order.
    (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.(\d)\.", lambda m: f"{m[1]}.mid.block_{int(m[2]) + 1}."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_([qkv])\.", r"\1.mid.attn_1.\2."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out."),
    (r"^encoder\.down_blocks\.(\d)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"^encoder\.down_blocks\.(\d)\.resnets\.", r"encoder.down.\1.block."),
    # The decoder's up blocks are numbered from the lowest resolution in diffusers, the highest in LDM.
    (r"^decoder\.up_blocks\.(\d)\.upsamplers\.0\.", lambda m: f"decoder.up.{3 - int(m[1])}.upsample."),
    (r"^decoder\.up_blocks\.(\d)\.resnets\.", lambda m: f"decoder.up.{3 - int(m[1])}.block."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
]


def ldm_state_dict(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The SD VAE's state dict in the original LDM names and shapes (what U-ViT's autoencoder_kl_ema.pth holds).

    Written independently of diffusers' converter, which goes the other way; the attention
    projections are 1x1 convolutions in LDM, linears in diffusers.
    """
    import re

    converted = {}
    for name, tensor in diffusers_state.items():
        for pattern, replacement in _LDM_NAMES:
            name = re.sub(pattern, replacement, name)
        if ".mid.attn_1." in name and name.endswith("weight") and tensor.dim() == 2:
            tensor = tensor[:, :, None, None]
        converted[name] = tensor
    return converted


def test_tiny_random_vae_is_seeded_labelled_and_has_sd_latent_geometry():
    first, second = load_vae(TINY_RANDOM), load_vae(TINY_RANDOM)
    assert first.fingerprint == second.fingerprint
    assert first.fingerprint["random_weights"] is True and first.fingerprint["note"] == RANDOM_WEIGHTS_NOTE
    assert first.fingerprint["kind"] == TINY_RANDOM
    assert first.scale_factor == SD_SCALE_FACTOR
    assert first.latent_shape(32) == (4, 4, 4) and first.latent_shape(64) == (4, 8, 8)
    assert not any(p.requires_grad for p in first.model.parameters()) and not first.model.training
    with pytest.raises(ConfigError, match="multiple of the VAE's downsampling factor 8"):
        first.latent_shape(30)


def test_fingerprint_changes_with_the_weights():
    vae = load_vae(TINY_RANDOM)
    before = vae.fingerprint["weights_sha256"]
    with torch.no_grad():
        next(vae.model.parameters()).view(-1)[0] += 1e-3
    assert weights_sha256(vae.model) != before


def test_encoding_is_fp32_and_ignores_autocast():
    vae = tiny_vae()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    mean, logvar = vae.encode_moments(images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean_autocast, logvar_autocast = vae.encode_moments(images)
    assert mean.dtype == torch.float32 and mean.shape == (2, 4, 4, 4)
    assert torch.equal(mean, mean_autocast) and torch.equal(logvar, logvar_autocast)
    assert logvar.min() >= -30 and logvar.max() <= 20


def test_diffusers_folder_loads_offline_with_the_same_fingerprint(tmp_path):
    source = tiny_vae()
    source.model.save_pretrained(tmp_path / "vae")
    loaded = load_vae(str(tmp_path / "vae"))
    assert loaded.fingerprint["kind"] == "pretrained" and loaded.fingerprint["random_weights"] is False
    assert loaded.fingerprint["weights_sha256"] == source.fingerprint["weights_sha256"]
    assert loaded.fingerprint["config"] == source.fingerprint["config"]
    # A pipeline folder with a vae/ sub-folder is accepted too.
    assert load_vae(str(tmp_path)).fingerprint["weights_sha256"] == source.fingerprint["weights_sha256"]


# diffusers' offline hub lookup warns about an argument it passes itself; the warning is not ours.
@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated:UserWarning")
@pytest.mark.parametrize("spec", ["/no/such/sd-vae", "stabilityai/sd-vae-ft-ema", "folder-without-config"])
def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch, spec):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder-without-config").mkdir()
    with pytest.raises(VAEUnavailableError) as info:
        load_vae(spec)
    message = str(info.value)
    assert "huggingface-cli download stabilityai/sd-vae-ft-ema" in message and "--vae PATH" in message


def test_a_file_that_is_not_a_vae_is_refused_clearly(tmp_path):
    bogus = tmp_path / "weights.safetensors"
    save_file({"unrelated": torch.zeros(3)}, str(bogus))
    with pytest.raises(
        VAEUnavailableError, match="cannot read .*weights.safetensors as a Stable Diffusion VAE"
    ):
        load_vae(str(bogus))
    (tmp_path / "weights.txt").write_text("x")
    with pytest.raises(VAEUnavailableError, match="not a VAE weights file"):
        load_vae(str(tmp_path / "weights.txt"))


def test_a_bare_state_dict_in_the_original_ldm_names_loads_as_u_vits_vae_file(tmp_path):
    """U-ViT decodes with assets/stable-diffusion/autoencoder_kl_ema.pth, a torch.save of the SD VAE's
    weights under the original LDM names: `--vae that.pth` must load the same weights."""
    full = load_vae(FULL_SIZE_RANDOM)
    state = ldm_state_dict(full.model.state_dict())
    assert "encoder.down.0.block.0.conv1.weight" in state and "decoder.up.3.upsample.conv.weight" in state
    assert tuple(state["encoder.mid.attn_1.q.weight"].shape) == (512, 512, 1, 1)
    path = tmp_path / "autoencoder_kl_ema.pth"
    torch.save(state, path)
    loaded = load_vae(str(path))
    assert loaded.fingerprint["weights_sha256"] == full.fingerprint["weights_sha256"]


def test_single_safetensors_file_of_the_full_sd_architecture_loads_offline(tmp_path):
    full = load_vae(FULL_SIZE_RANDOM)
    assert full.fingerprint["note"] == RANDOM_WEIGHTS_NOTE
    assert list(full.model.config.block_out_channels) == [128, 256, 512, 512]
    path = tmp_path / "sd-vae.safetensors"
    save_file({k: v.contiguous() for k, v in full.model.state_dict().items()}, str(path))
    loaded = load_vae(str(path))
    assert loaded.fingerprint["weights_sha256"] == full.fingerprint["weights_sha256"]
    assert loaded.fingerprint["kind"] == "pretrained"
