"""Sampling: per-image seeds, rank sharding without gaps or duplicates, extension N -> M, file layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from dit_repro.checkpoint import save_checkpoint
from dit_repro.config import ConfigError, Switches, TrainConfig
from dit_repro.diffusion import create_diffusion
from dit_repro.fid.layout import SAMPLES_RECORD, image_name
from dit_repro.models import build_model
from dit_repro.sampling import (
    SamplesMismatchError,
    SamplingRequest,
    generate,
    image_generator,
    image_label,
    missing_indices,
    pack_npz,
    rank_indices,
    run_sampling,
    to_uint8,
    write_image,
)

SHAPE = (1, 8, 8)
NUM_CLASSES = 10


pytestmark = pytest.mark.usefixtures("one_thread")


class ElementwiseDenoiser(nn.Module):
    """A stand-in model whose output for one image depends only on that image (no batch reductions).

    Elementwise arithmetic gives bit-identical results whatever the batch, so per-image
    determinism can be asserted with equality.
    """

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = NUM_CLASSES
        self.in_channels = SHAPE[0]
        self.learn_sigma = False
        self.gain = nn.Parameter(torch.tensor(0.3))
        self.class_shift = nn.Parameter(torch.linspace(-1.0, 1.0, NUM_CLASSES + 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        timestep = (t.float() / 1000.0).view(-1, 1, 1, 1)
        return self.gain * x + self.class_shift[y].view(-1, 1, 1, 1) * timestep  # (B, C, H, W)


def sample_images(indices, *, seed=0, batch_size=4, sampler="ddpm", **kwargs) -> dict[int, np.ndarray]:
    model = ElementwiseDenoiser().eval()
    diffusion = create_diffusion(learn_sigma=False)
    out = {}
    for chunk, images in generate(
        model,
        diffusion,
        indices,
        seed=seed,
        sample_shape=SHAPE,
        sampler=sampler,
        steps=kwargs.pop("steps", 10),
        batch_size=batch_size,
        **kwargs,
    ):
        out.update(zip(chunk, images, strict=True))
    return out


@pytest.mark.parametrize("num", [1, 7, 100])
@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_rank_shares_cover_every_index_once(num: int, world_size: int) -> None:
    shares = [list(rank_indices(num, rank, world_size)) for rank in range(world_size)]
    flat = [index for share in shares for index in share]
    assert sorted(flat) == list(range(num))
    assert len(flat) == len(set(flat))


def test_bad_rank_or_count_is_refused() -> None:
    with pytest.raises(ConfigError, match="rank must be"):
        rank_indices(10, 2, 2)
    with pytest.raises(ConfigError, match="number of samples"):
        rank_indices(0, 0, 1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm-solver"])
def test_image_depends_only_on_seed_and_index(sampler: str) -> None:
    """Same image for an index whatever the batch size, batch order or company it is generated in."""
    all_at_once = sample_images(range(6), batch_size=6, sampler=sampler)
    one_by_one = sample_images(range(6), batch_size=1, sampler=sampler)
    reordered = sample_images([5, 3, 1], batch_size=2, sampler=sampler)
    for index in range(6):
        np.testing.assert_array_equal(all_at_once[index], one_by_one[index])
    for index in (5, 3, 1):
        np.testing.assert_array_equal(all_at_once[index], reordered[index])
    # Image i of seed s is image i - 1 of seed s + 1 (both use generator seed s + i)...
    shifted = sample_images([0], seed=1, sampler=sampler)
    np.testing.assert_array_equal(shifted[0], all_at_once[1])
    # ...and different indices give different images.
    assert not np.array_equal(all_at_once[0], all_at_once[1])


def test_labels_are_uniform_draws_from_the_image_generator() -> None:
    labels = [image_label(image_generator(0, index), NUM_CLASSES) for index in range(2000)]
    assert labels == [image_label(image_generator(0, index), NUM_CLASSES) for index in range(2000)]
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    # Chi-square goodness of fit to uniform, 9 degrees of freedom: the 0.999 quantile is 27.88.
    chi2 = float(((counts - 200.0) ** 2 / 200.0).sum())
    print(f"label counts {counts.tolist()}, chi2 {chi2:.2f}")
    assert chi2 < 27.88


def test_to_uint8_maps_minus_one_to_one_onto_0_255() -> None:
    x = torch.tensor([-2.0, -1.0, -1.0 + 1 / 127.5, 0.0, 1.0, 3.0]).view(1, 1, 1, 6)
    assert to_uint8(x).reshape(-1).tolist() == [0, 0, 1, 128, 255, 255]


def test_shards_and_extension_reproduce_a_single_run(tmp_path) -> None:
    """Three ranks writing into one folder, then extending 6 -> 9, equal one process making 9."""
    reference = sample_images(range(9))
    shared = tmp_path / "shared"
    shared.mkdir()
    for rank in range(3):
        for index, image in sample_images(rank_indices(6, rank, 3)).items():
            write_image(shared, index, image)
    before = {index: (shared / image_name(index)).stat().st_mtime_ns for index in range(6)}
    todo = missing_indices(shared, range(9))
    assert todo == [6, 7, 8]
    for index, image in sample_images(todo).items():
        write_image(shared, index, image)
    assert {index: (shared / image_name(index)).stat().st_mtime_ns for index in range(6)} == before
    assert sorted(p.name for p in shared.iterdir()) == [image_name(i) for i in range(9)]
    for index in range(9):
        np.testing.assert_array_equal(
            np.asarray(Image.open(shared / image_name(index)))[..., None], reference[index]
        )


def test_pack_npz_writes_the_adm_layout(tmp_path) -> None:
    images = sample_images(range(5))
    for index in range(4):
        write_image(tmp_path, index, images[index])
    assert pack_npz(tmp_path, 5) is None, "an incomplete set is not packed"
    write_image(tmp_path, 4, images[4])
    path = pack_npz(tmp_path, 5)
    assert path.name == "samples_5x8x8x3.npz"
    with np.load(path) as archive:
        arr = archive["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (5, 8, 8, 3)
    for index in range(5):
        np.testing.assert_array_equal(arr[index], np.repeat(images[index], 3, axis=-1))


# ----------------------------------------------------------------------------------------------
# From a checkpoint: a real DiT (one 8x8 patch, so it is cheap) saved as training saves it
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    config = TrainConfig(model="DiT-S/8", data="digits", image_size=8)
    model_args = {"input_size": 8, "in_channels": 1, "num_classes": NUM_CLASSES, "learn_sigma": True}
    torch.manual_seed(0)
    model = build_model(config.model, **model_args)
    # DiT starts as the identity (zeroed output layers); perturb so that the samples depend on the weights.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    ema = {name: value + 0.01 for name, value in model.state_dict().items()}
    path = tmp_path_factory.mktemp("ckpt") / "last.pt"
    save_checkpoint(
        path,
        {
            "model": model.state_dict(),
            "ema": ema,
            "step": 5,
            "config": config.to_dict(),
            "model_args": model_args,
        },
    )
    return str(path)


def request(checkpoint: str, out_dir, **overrides) -> SamplingRequest:
    settings = dict(
        num=6, seed=0, sampler="ddim", steps=4, cfg_scale=1.5, batch_size=1, device="cpu", progress=False
    )
    settings.update(overrides)
    return SamplingRequest(checkpoint=checkpoint, out_dir=str(out_dir), **settings)


def test_run_sampling_records_and_extends(tmp_path, checkpoint) -> None:
    out = tmp_path / "samples"
    first = run_sampling(request(checkpoint, out, num=4, image_format="npz"))
    assert first.generated == [0, 1, 2, 3] and first.kept == 0
    record = json.loads((out / SAMPLES_RECORD).read_text())
    assert record["seed"] == 0 and record["num"] == 4 and record["checkpoint"]["step"] == 5
    assert len(record["checkpoint"]["sha256"]) == 64
    assert record["settings"]["sampler"] == "ddim" and record["settings"]["weights"] == "ema"
    assert record["settings"]["decoder"] == {"kind": "pixels"}
    assert record["image"] == {"height": 8, "width": 8, "channels": 1}
    assert first.npz and first.npz.endswith("samples_4x8x8x3.npz")

    extended = run_sampling(request(checkpoint, out, num=6))
    assert extended.generated == [4, 5] and extended.kept == 4
    assert json.loads((out / SAMPLES_RECORD).read_text())["num"] == 6

    with pytest.raises(SamplesMismatchError, match="steps"):
        run_sampling(request(checkpoint, out, num=8, steps=5))


def test_ranks_split_a_run_without_gaps_or_duplicates(tmp_path, checkpoint) -> None:
    single, split = tmp_path / "single", tmp_path / "split"
    run_sampling(request(checkpoint, single))
    generated = [run_sampling(request(checkpoint, split, rank=r, world_size=2)).generated for r in range(2)]
    assert sorted(generated[0] + generated[1]) == list(range(6))
    for index in range(6):
        assert (single / image_name(index)).read_bytes() == (split / image_name(index)).read_bytes()


def test_raw_and_ema_weights_give_different_samples(tmp_path, checkpoint) -> None:
    run_sampling(request(checkpoint, tmp_path / "ema", num=2))
    run_sampling(request(checkpoint, tmp_path / "raw", num=2, weights="raw"))
    assert (tmp_path / "ema" / image_name(0)).read_bytes() != (tmp_path / "raw" / image_name(0)).read_bytes()
    assert json.loads((tmp_path / "raw" / SAMPLES_RECORD).read_text())["settings"]["weights"] == "raw"


def test_latent_model_decodes_with_the_checkpoint_vae(tmp_path) -> None:
    """A latent DiT trained with features=live decodes through the VAE named in its config (tiny-random here)."""
    config = TrainConfig(
        model="DiT-S/2", data="digits", image_size=16, vae="tiny-random", switches=Switches(features="live")
    )
    model_args = {"input_size": 2, "in_channels": 4, "num_classes": NUM_CLASSES, "learn_sigma": True}
    model = build_model(config.model, **model_args)
    state = model.state_dict()
    path = tmp_path / "latent.pt"
    save_checkpoint(
        path, {"model": state, "ema": state, "step": 1, "config": config.to_dict(), "model_args": model_args}
    )
    report = run_sampling(
        request(str(path), tmp_path / "out", num=2, cfg_channels="first3", image_format="npz")
    )
    settings = report.record["settings"]
    assert settings["decoder"]["kind"] == "vae" and settings["decoder"]["spec"] == "tiny-random"
    assert settings["cfg_channels"] == "first3"
    assert report.record["image"] == {"height": 16, "width": 16, "channels": 3}
    with np.load(report.npz) as archive:
        assert archive["arr_0"].shape == (2, 16, 16, 3)
