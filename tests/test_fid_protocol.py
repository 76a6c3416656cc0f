"""``dit-repro fid-protocol dit`` end to end at toy scale: a random small DiT, 8 images, proxy features.

The protocol's settings (250 DDPM steps, guidance 1.5 on 3 channels) are the real ones; only the
model, the VAE (tiny-random), N and the feature extractor are toys.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dit_repro.cli import main
from dit_repro.commands.fid_protocol import RECORD_NAME
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
    assert record["settings"] == {"sampler": "ddpm", "steps": 250, "cfg_scale": 1.5, "cfg_channels": "first3"}
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


def test_uvit_protocol_is_listed_and_refused_with_the_reason(toy, tmp_path, capsys) -> None:
    argv = protocol_argv(toy, tmp_path / "uvit")
    argv[1] = "uvit"
    assert main(argv) == 2
    assert "DPM-Solver" in capsys.readouterr().err
    assert not (tmp_path / "uvit").exists()
    assert PROTOCOLS["uvit"].published.endswith("2.29") and "2.27" in PROTOCOLS["dit"].published


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
