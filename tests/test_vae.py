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


def test_single_safetensors_file_of_the_full_sd_architecture_loads_offline(tmp_path):
    full = load_vae(FULL_SIZE_RANDOM)
    assert full.fingerprint["note"] == RANDOM_WEIGHTS_NOTE
    assert list(full.model.config.block_out_channels) == [128, 256, 512, 512]
    path = tmp_path / "sd-vae.safetensors"
    save_file({k: v.contiguous() for k, v in full.model.state_dict().items()}, str(path))
    loaded = load_vae(str(path))
    assert loaded.fingerprint["weights_sha256"] == full.fingerprint["weights_sha256"]
    assert loaded.fingerprint["kind"] == "pretrained"
