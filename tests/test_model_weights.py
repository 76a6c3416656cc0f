"""Checkpoints users have: DiT's and U-ViT's releases (bare state dicts), DiT/fast-DiT training files, this project's own.

The three layouts of one set of weights must sample bitwise-equal images: the files differ only
in how the tensors are packed, and this project's DiT uses DiT's parameter names
(``test_models.test_dit_state_dict_names_and_shapes_match_release`` pins them), so a state dict
saved by DiT's own code has the keys and shapes of the one saved here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from dit_repro.checkpoint import CheckpointError, save_checkpoint
from dit_repro.config import ConfigError, Switches, TrainConfig
from dit_repro.fid.layout import SAMPLES_RECORD, image_name
from dit_repro.model_weights import read_model_weights
from dit_repro.models import build_model
from dit_repro.sampling import SamplingRequest, run_sampling
from tests.helpers import perturb_

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL_ARGS = {"input_size": 2, "in_channels": 4, "num_classes": 10, "learn_sigma": True}
"""A DiT-S/2 on 2x2 latents: 16 px images through the tiny VAE."""


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The same EMA weights in the three layouts (raw weights differ, so EMA-by-default is visible)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    raw = perturb_(build_model("DiT-S/2", **MODEL_ARGS), seed=1)
    ema = perturb_(build_model("DiT-S/2", **MODEL_ARGS), seed=2)
    config = TrainConfig(
        model="DiT-S/2", data="digits", image_size=16, num_classes=10, vae="tiny-random", switches=Switches(features="live")
    )
    paths = {name: folder / f"{name}.pt" for name in ("own", "dit", "bare")}
    save_checkpoint(
        paths["own"],
        {"model": raw.state_dict(), "ema": ema.state_dict(), "step": 7, "config": config.to_dict(), "model_args": MODEL_ARGS},
    )
    optimizer = torch.optim.AdamW(raw.parameters(), lr=1e-4)
    dit_args = argparse.Namespace(model="DiT-S/2", image_size=16, num_classes=10, vae="ema", global_batch_size=256)
    torch.save({"model": raw.state_dict(), "ema": ema.state_dict(), "opt": optimizer.state_dict(), "args": dit_args}, paths["dit"])
    torch.save(ema.state_dict(), paths["bare"])
    return paths


def sample(path: Path, out: Path, **overrides) -> bytes:
    settings = dict(num=2, seed=3, sampler="ddpm", steps=2, cfg_channels="first3", batch_size=2, device="cpu",
                    progress=False, vae="tiny-random")
    settings.update(overrides)
    report = run_sampling(SamplingRequest(checkpoint=str(path), out_dir=str(out), **settings))
    assert report.generated == [0, 1]
    return b"".join((out / image_name(i)).read_bytes() for i in range(2))


def test_three_layouts_of_one_model_sample_bitwise_equal_images(files, tmp_path) -> None:
    own = sample(files["own"], tmp_path / "own")
    assert sample(files["dit"], tmp_path / "dit") == own
    assert sample(files["bare"], tmp_path / "bare", model="DiT-S/2") == own


def test_ema_weights_are_the_default_and_raw_ones_are_taken_on_request(files) -> None:
    for layout in ("own", "dit"):
        ema, raw = read_model_weights(files[layout]), read_model_weights(files[layout], weights="raw")
        assert ema.weights == "ema" and raw.weights == "raw"
        bare = read_model_weights(files["bare"], model="DiT-S/2").state_dict
        assert all(torch.equal(ema.state_dict[k], bare[k]) for k in bare)
        assert not torch.equal(raw.state_dict["blocks.0.attn.qkv.weight"], bare["blocks.0.attn.qkv.weight"])


def test_bare_state_dict_shapes_give_the_model_arguments(files) -> None:
    read = read_model_weights(files["bare"], model="DiT-S/2")
    assert read.layout == "bare-state-dict" and read.weights == "ema" and read.step is None
    assert read.model_args == MODEL_ARGS
    assert read.config.image_size == 16 and read.config.switches.features.value == "live"
    # DiT's release names no VAE: sd-vae-ft-ema, the VAE of its FID-50K figures.
    assert read.config.vae == "stabilityai/sd-vae-ft-ema"


def test_dit_training_checkpoint_takes_model_and_vae_from_its_args(files, tmp_path) -> None:
    read = read_model_weights(files["dit"])
    assert read.layout == "dit-training" and read.config.model == "DiT-S/2"
    assert read.config.vae == "stabilityai/sd-vae-ft-ema"  # args.vae == "ema"
    named = tmp_path / "0050000.pt"
    named.write_bytes(files["dit"].read_bytes())
    assert read_model_weights(named).step == 50000


def test_samples_record_names_the_layout(files, tmp_path) -> None:
    import json

    sample(files["bare"], tmp_path / "out", model="DiT-S/2")
    record = json.loads((tmp_path / "out" / SAMPLES_RECORD).read_text())
    assert record["checkpoint"]["layout"] == "bare-state-dict" and record["checkpoint"]["step"] is None


@pytest.mark.parametrize(
    ("layout", "kwargs", "message"),
    [
        ("bare", {}, "does not name its model: pass --model"),
        ("bare", {"weights": "raw"}, "--weights raw cannot be honoured"),
        ("bare", {"model": "DiT-S/4"}, "pass the preset with /2"),
        ("dit", {"model": "DiT-B/2"}, "holds a DiT-S/2 .its args.model., but --model is DiT-B/2; pass --model DiT-S/2"),
        ("own", {"model": "DiT-B/2"}, "holds a DiT-S/2, but --model is DiT-B/2; pass --model DiT-S/2"),
        ("bare", {"model": "DiT-B/2"}, "width 384 and depth 12, but --model DiT-B/2 has 768 and 12; pass --model DiT-S/2"),
    ],
)
def test_contradictions_are_refused_by_name(files, layout, kwargs, message) -> None:
    with pytest.raises((ConfigError, CheckpointError), match=message):
        read_model_weights(files[layout], **kwargs)


class NotAWeight:
    """A class pickled into a checkpoint: loading it would import and run code."""


def test_a_file_needing_pickle_beyond_tensors_is_refused_with_the_reason(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "ema": {}, "args": NotAWeight()}, path)
    with pytest.raises(CheckpointError) as caught:
        read_model_weights(path)
    message = str(caught.value)
    assert "NotAWeight" in message and "would run code" in message
    assert "weights_only" not in message  # torch's advice to drop the safeguard is not passed on


def test_junk_and_foreign_dicts_are_named(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a file written by torch.save"):
        read_model_weights(junk)
    other = tmp_path / "other.pt"
    torch.save({"weights": {"a": torch.zeros(1)}, "epoch": 3}, other)
    with pytest.raises(CheckpointError, match="match no known layout"):
        read_model_weights(other)


def test_train_init_from_starts_from_the_file_s_weights(tmp_path) -> None:
    from dit_repro.train import Trainer

    pixel_args = {"input_size": 8, "in_channels": 1, "num_classes": 10, "learn_sigma": True}
    source = perturb_(build_model("DiT-S/2", **pixel_args), seed=3)
    bare = tmp_path / "start.pt"
    torch.save(source.state_dict(), bare)
    trainer = Trainer(TrainConfig(model="DiT-S/2", data="digits", image_size=8, steps=0, device="cpu", init_from=str(bare)))
    expected = source.state_dict()
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert torch.equal(trainer.ema.module.state_dict()["pos_embed"], expected["pos_embed"])  # EMA starts there too
    assert trainer.run_record()["initial_weights"]["layout"] == "bare-state-dict"


def test_train_init_from_refuses_another_shape_naming_both(tmp_path) -> None:
    from dit_repro.train import Trainer

    other = build_model("DiT-S/2", input_size=8, in_channels=1, num_classes=5)
    path = tmp_path / "five-classes.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(ConfigError, match="'num_classes': 5.*'num_classes': 10"):
        Trainer(TrainConfig(model="DiT-S/2", data="digits", image_size=8, steps=0, device="cpu", init_from=str(path)))
    with pytest.raises(ConfigError, match="give one of them"):
        TrainConfig(init_from=str(path), resume=str(path))


# ---------------------------------------------------------------- U-ViT's release

UVIT_RELEASE_ARGS = {"input_size": 2, "in_channels": 4, "num_classes": 10, "learn_sigma": False, "conv": False,
                     "mlp_time_embed": False}
"""A U-ViT-S/2 on 2x2 latents built as U-ViT's ImageNet configs build theirs (no final conv, no time MLP)."""


@pytest.fixture(scope="module")
def uvit_release(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A file in the layout of U-ViT's nnet_ema.pth (a bare state dict in U-ViT's names), and its model."""
    model = perturb_(build_model("U-ViT-S/2", **UVIT_RELEASE_ARGS), seed=4).eval()
    path = tmp_path_factory.mktemp("uvit") / "nnet_ema.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_u_vits_release_is_read_with_its_timesteps_and_schedule(uvit_release) -> None:
    path, original = uvit_release
    read = read_model_weights(path, model="U-ViT-S/2", vae="tiny-random")
    assert read.layout == "bare-state-dict" and read.noise_schedule == "scaled-linear"
    assert read.model_args == UVIT_RELEASE_ARGS | {"timestep_offset": 1}
    loaded = build_model("U-ViT-S/2", **read.model_args).eval()
    loaded.load_state_dict(read.state_dict, strict=True)
    # It sees U-ViT's numbering: this project's step k is U-ViT's k + 1.
    x, t, y = torch.randn(2, 4, 2, 2), torch.tensor([0.0, 998.5]), torch.tensor([3, 10])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), original(x, t + 1, y))


def test_u_vits_release_samples_on_its_own_schedule(uvit_release, tmp_path) -> None:
    from dit_repro.diffusion.schedule import beta_schedule
    from dit_repro.sampling import load_sampling_model

    path, _ = uvit_release
    loaded = load_sampling_model(path, model_name="U-ViT-S/2", vae="tiny-random")
    assert loaded.noise_schedule == "scaled-linear" and loaded.model.timestep_offset == 1
    assert (loaded.diffusion.betas == beta_schedule("scaled-linear")).all()
    sample(path, tmp_path / "uvit", model="U-ViT-S/2", sampler="dpm-solver", steps=3, cfg_channels="all")
    record = json.loads((tmp_path / "uvit" / SAMPLES_RECORD).read_text())
    assert record["settings"]["noise_schedule"] == "scaled-linear" and record["settings"]["sampler"] == "dpm-solver"


def test_a_u_vit_file_with_a_dit_preset_is_refused_naming_the_family(uvit_release, files) -> None:
    with pytest.raises(ConfigError, match="holds a U-ViT .patch_embed.proj.weight tensors., but --model is DiT-S/2"):
        read_model_weights(uvit_release[0], model="DiT-S/2")
    with pytest.raises(ConfigError, match="holds a DiT .x_embedder.proj.weight tensors., but --model is U-ViT-S/2"):
        read_model_weights(files["bare"], model="U-ViT-S/2")
    with pytest.raises(ConfigError, match="width 512 and depth 12, but --model U-ViT-M/2 has 768 and 16"):
        read_model_weights(uvit_release[0], model="U-ViT-M/2", vae="tiny-random")


def test_u_vits_release_needs_its_vae_named(uvit_release) -> None:
    with pytest.raises(ConfigError, match="name the VAE it decodes with, --vae autoencoder_kl_ema.pth"):
        read_model_weights(uvit_release[0], model="U-ViT-S/2")


def test_u_vits_continuous_time_releases_are_refused(tmp_path) -> None:
    """U-ViT's files with the final convolution (conv=True) come from its continuous-time training (a VP-SDE),
    which is not the process this project samples: refused, not sampled on the wrong schedule."""
    path = tmp_path / "imagenet256_uvit_large.pth"
    torch.save(build_model("U-ViT-S/2", **(UVIT_RELEASE_ARGS | {"conv": True})).state_dict(), path)
    with pytest.raises(CheckpointError, match="continuous-time models"):
        read_model_weights(path, model="U-ViT-S/2", vae="tiny-random")


def test_training_from_u_vits_release_is_refused_with_the_reason(uvit_release) -> None:
    from dit_repro.model_weights import load_initial_weights

    path, model = uvit_release
    with pytest.raises(ConfigError, match="scaled-linear noise schedule with timesteps 1..N"):
        load_initial_weights(model, path, "U-ViT-S/2", UVIT_RELEASE_ARGS)
