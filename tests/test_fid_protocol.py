"""``dit-repro fid-protocol dit|uvit`` end to end at toy scale: a random small DiT, 8 images, proxy features.

The protocols' settings (dit: 250 DDPM steps, guidance 1.5 on 3 channels; uvit: DPM-Solver++ with 50
evaluations, guidance 1.4 on all channels) are the real ones; only the model, the VAE (tiny-random),
N and the feature extractor are toys.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dit_repro.cli import main
from dit_repro.commands.fid_protocol import RECORD_NAME
from dit_repro.diffusion import guided_model_output
from dit_repro.fid.protocols import PROTOCOLS
from dit_repro.models import build_model
from tests.helpers import perturb_

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("protocol")
    torch.manual_seed(0)
    model = perturb_(build_model("DiT-S/2", input_size=2, in_channels=4, num_classes=10), seed=0)
    checkpoint = folder / "DiT-S-2-16x16.pt"
    torch.save(model.state_dict(), checkpoint)  # DiT's release layout: a bare state dict
    reference = folder / "ref.npz"
    np.savez(reference, arr_0=np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    return checkpoint, reference


def protocol_argv(toy, out) -> list[str]:
    checkpoint, reference = toy
    return ["fid-protocol", "dit", "--checkpoint", str(checkpoint), "--model", "DiT-S/2", "--ref", str(reference),
            "--out", str(out), "--num-fid-samples", "8", "--vae", "tiny-random", "--extractor", "proxy",
            "--device", "cpu", "--per-proc-batch-size", "8", "--no-progress"]


def test_dit_protocol_samples_packs_scores_and_records(toy, tmp_path, capsys) -> None:
    out = tmp_path / "fid"
    assert main(protocol_argv(toy, out)) == 0
    printed = capsys.readouterr().out
    assert "proxy-FID" in printed and "not comparable with the published figure" in printed
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["settings"] == {"sampler": "ddpm", "steps": 250, "cfg_scale": 1.5, "cfg_channels": "first3",
                                  "precision": "tf32"}
    assert record["num_samples"] == 8 and record["comparable_with_published"] is False
    assert record["checkpoint"]["layout"] == "bare-state-dict" and len(record["checkpoint"]["sha256"]) == 64
    assert np.isfinite(record["fid"]["value"]) and record["fid"]["num_samples"] == 8
    with np.load(out / "samples_8x16x16x3.npz") as archive:
        assert archive["arr_0"].shape == (8, 16, 16, 3) and archive["arr_0"].dtype == np.uint8
    samples = json.loads((out / "samples.json").read_text())["settings"]
    assert (samples["sampler"], samples["steps"], samples["cfg_scale"], samples["cfg_channels"]) == ("ddpm", 250, 1.5, "first3")

    # Resumable: the same command again makes no image and gives the same FID.
    first = record["fid"]["value"]
    assert main(protocol_argv(toy, out)) == 0
    assert json.loads((out / RECORD_NAME).read_text())["fid"]["value"] == first


def uvit_argv(toy, out) -> list[str]:
    argv = protocol_argv(toy, out)
    argv[1] = "uvit"
    return argv


def test_uvit_protocol_samples_with_dpm_solver_and_records(toy, tmp_path, capsys) -> None:
    out = tmp_path / "uvit"
    assert main(uvit_argv(toy, out)) == 0
    assert "published: U-ViT-H/2" in capsys.readouterr().out
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["protocol"] == "uvit"
    assert record["settings"] == {"sampler": "dpm-solver", "steps": 50, "cfg_scale": 1.4, "cfg_channels": "all",
                                  "precision": "fp16"}
    assert np.isfinite(record["fid"]["value"]) and record["comparable_with_published"] is False
    samples = json.loads((out / "samples.json").read_text())["settings"]
    assert (samples["sampler"], samples["steps"], samples["cfg_scale"], samples["precision"]) == ("dpm-solver", 50, 1.4, "fp16")
    with np.load(out / "samples_8x16x16x3.npz") as archive:
        assert archive["arr_0"].shape == (8, 16, 16, 3)


def test_uvit_guidance_is_u_vits_scale_in_dits_convention() -> None:
    """U-ViT guides with eps_c + s (eps_c - eps_u), s = 0.4; the protocol's 1.4 is the same in DiT's form."""
    generator = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(2, 4, 2, 2, generator=generator, dtype=torch.float64)
    model = lambda x, t, y: torch.where((y == 10)[:, None, None, None], uncond, cond)  # noqa: E731
    guided = guided_model_output(model, torch.zeros(1, 4, 2, 2, dtype=torch.float64), torch.zeros(1), torch.tensor([3]),
                                 cfg_scale=PROTOCOLS["uvit"].cfg_scale, cfg_channels="all", null_label=10)
    # Two groupings of the same sum in float64 (and 1.4 - 1 is 0.4 only to rounding): a few ulps of the inputs.
    ulps = 16 * torch.finfo(torch.float64).eps * max(cond.abs().max().item(), uncond.abs().max().item())
    torch.testing.assert_close(guided[0], cond + 0.4 * (cond - uncond), rtol=0, atol=ulps)
    assert PROTOCOLS["uvit"].published.endswith("2.29") and "2.27" in PROTOCOLS["dit"].published


def test_uvit_without_its_vae_is_refused_naming_the_file(toy, tmp_path, capsys) -> None:
    argv = uvit_argv(toy, tmp_path / "uvit")
    del argv[argv.index("--vae"):argv.index("--vae") + 2]
    assert main(argv) == 2
    assert "autoencoder_kl_ema.pth" in capsys.readouterr().err
    assert not (tmp_path / "uvit").exists()


def test_a_missing_reference_is_refused_before_sampling(toy, tmp_path, capsys) -> None:
    argv = protocol_argv(toy, tmp_path / "out")
    argv[argv.index("--ref") + 1] = str(tmp_path / "VIRTUAL_imagenet256_labeled.npz")
    assert main(argv) == 2
    assert "--ref" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_junk_reference_is_refused_before_any_image_is_sampled(toy, tmp_path, capsys) -> None:
    junk = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    junk.write_bytes(b"not an npz")
    argv = protocol_argv(toy, tmp_path / "out")
    argv[argv.index("--ref") + 1] = str(junk)
    assert main(argv) == 2
    assert "not an .npz archive" in capsys.readouterr().err and not (tmp_path / "out").exists()
