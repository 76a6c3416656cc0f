"""The one scan for unreadable images that train and extract run before work, --strict, and extract's --out checks."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dit_repro import atomic
from dit_repro.checkpoint import CheckpointError
from dit_repro.cli import main
from dit_repro.commands import extract as extract_command
from dit_repro.config import Switches, TrainConfig
from dit_repro.data import extraction
from dit_repro.data.imagefolder import ImageFolderImages
from dit_repro.data.imagesource import DatasetError
from dit_repro.data.manifest import CacheError, CacheMismatchError
from dit_repro.data.scan import UnreadableImagesError, check_images, recorded_unreadable
from dit_repro.data.sources import build_feature_source
from dit_repro.data.synthetic import SyntheticImages
from dit_repro.train import check_same_data, dataset_identity
from tests.data_support import build_cache, train_config, write_image_folder

BROKEN = ["a/img_001.png", "b/img_000.png", "b/img_002.tiff"]
"""The unreadable files of :func:`damaged_folder`, sorted."""


def damaged_folder(root, side=(12, 10)):
    """Classes a (3 images) and b (3): one junk file, one truncated PNG, one float TIFF with values above 1."""
    write_image_folder(root, {"a": 3, "b": 3}, side=side)
    (root / "a" / "img_001.png").write_bytes(b"not a png at all")
    good = (root / "b" / "img_000.png").read_bytes()
    (root / "b" / "img_000.png").write_bytes(good[: len(good) // 2])
    (root / "b" / "img_002.png").unlink()
    Image.fromarray(np.full((10, 12), 2.0, dtype=np.float32)).save(root / "b" / "img_002.tiff")
    return root


def extract_cli(argv):
    """``dit-repro extract`` with only that subcommand registered."""
    parser = argparse.ArgumentParser(prog="dit-repro")
    extract_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["extract", *argv])
    return args.func(args)


# ------------------------------------------------------------------ the scan


def test_the_scan_finds_junk_truncated_and_refused_mode_files_and_the_rest_keep_their_labels(tmp_path, capsys):
    images = ImageFolderImages(damaged_folder(tmp_path / "data"), 8)
    found = check_images(images, progress=False)
    assert [entry["file"] for entry in found] == BROKEN
    reasons = [entry["reason"] for entry in found]
    assert "UnidentifiedImageError" in reasons[0] and "truncated" in reasons[1] and "mode 'F'" in reasons[2]
    assert images.files == ["a/img_000.png", "a/img_002.png", "b/img_001.png"] and images.labels == [0, 0, 1]
    assert images.unreadable == found and images.fingerprint()["unreadable"] == found
    warning = capsys.readouterr().err
    assert "warning: left out 3 unreadable image(s)" in warning and BROKEN[0] in warning and "--strict" in warning
    # The hash covers the files served: the same as a folder that never held the broken ones.
    clean = tmp_path / "clean"
    shutil.copytree(tmp_path / "data", clean)
    for name in BROKEN:
        (clean / name).unlink()
    assert images.fingerprint()["sha256"] == ImageFolderImages(clean, 8).fingerprint()["sha256"]
    images.scan = lambda *args, **kwargs: pytest.fail("a checked source was scanned again")
    assert check_images(images) == found


def test_shares_and_threads_find_the_same_files(tmp_path):
    images = ImageFolderImages(damaged_folder(tmp_path), 8)
    whole = images.scan()
    shares = images.scan(part=(0, 2)) + images.scan(part=(1, 2))
    assert [e["file"] for e in whole] == BROKEN and sorted(shares, key=lambda e: e["file"]) == whole
    assert images.scan(workers=3) == whole


def test_strict_refuses_naming_the_files_and_changes_nothing(tmp_path):
    images = ImageFolderImages(damaged_folder(tmp_path), 8)
    with pytest.raises(UnreadableImagesError, match=r"--strict: 3 unreadable image\(s\) in .*a/img_001\.png") as info:
        check_images(images, strict=True, progress=False)
    assert all(name in str(info.value) for name in BROKEN) and len(info.value.unreadable) == 3
    assert images.unreadable is None and len(images) == 6


def test_a_folder_with_no_readable_image_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="none of the 1 images .* can be read"):
        check_images(ImageFolderImages(tmp_path, 8), progress=False)


def test_generated_images_have_nothing_to_scan():
    images = SyntheticImages(8, 3, count=4)
    assert check_images(images) == [] and images.unreadable == [] and "unreadable" not in images.fingerprint()
    with pytest.raises(DatasetError, match="generated"):
        images.leave_out([{"file": "x", "reason": "y"}])


def test_a_recorded_scan_is_reused_only_for_the_same_files(tmp_path):
    root = damaged_folder(tmp_path)
    checked = ImageFolderImages(root, 8)
    check_images(checked, progress=False)
    recorded = checked.fingerprint()
    assert recorded_unreadable(recorded, ImageFolderImages(root, 8).fingerprint()) == checked.unreadable
    (root / "a" / "new.png").write_bytes((root / "a" / "img_000.png").read_bytes())
    assert recorded_unreadable(recorded, ImageFolderImages(root, 8).fingerprint()) is None
    assert recorded_unreadable({"files": []}, ImageFolderImages(root, 8).fingerprint()) is None  # an older manifest


# ------------------------------------------------------------------ extract


def test_extract_strict_refuses_unreadable_images_and_writes_nothing(tmp_path, capsys):
    data = damaged_folder(tmp_path / "data")
    out = tmp_path / "cache"
    argv = ["--data", str(data), "--vae", "tiny-random", "--image-size", "32", "--out", str(out), "--no-progress"]
    assert extract_cli([*argv, "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--strict: 3 unreadable image(s)" in err and all(name in err for name in BROKEN)
    assert "Traceback" not in err and not out.exists()


def test_a_resumed_extraction_reuses_the_recorded_scan(tmp_path, monkeypatch):
    data = damaged_folder(tmp_path / "data")
    # Shards are not what this test is about: a stub "writes" them, so no image is encoded.
    monkeypatch.setattr(extraction, "_write_shard", lambda *args: 0)
    first = build_cache(tmp_path / "cache", data=str(data), image_size=8, shard_size=2)
    assert first.images_skipped == 3

    def no_scan(*args, **kwargs):
        raise AssertionError("a resumed extraction of the same files scanned them again")

    monkeypatch.setattr(ImageFolderImages, "scan", no_scan)
    second = build_cache(tmp_path / "cache", data=str(data), image_size=8, shard_size=2)
    assert second.images_skipped == 3
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert [e["file"] for e in manifest["skipped"]] == BROKEN and manifest["num_items"] == 3
    # Another listing is scanned again (and is then another dataset for this cache).
    (data / "a" / "new.png").write_bytes((data / "a" / "img_000.png").read_bytes())
    with pytest.raises(AssertionError, match="scanned them again"):
        build_cache(tmp_path / "cache", data=str(data), image_size=8, shard_size=2)


@pytest.mark.parametrize("collision", ["file", "below_a_file", "not_a_cache", "other_cache"])
def test_extract_checks_out_before_loading_the_vae_and_writes_nothing(tmp_path, monkeypatch, capsys, collision):
    out = tmp_path / "out"
    if collision == "file":
        out.write_text("x")
    elif collision == "below_a_file":
        (tmp_path / "plain").write_text("x")
        out = tmp_path / "plain" / "cache"
    elif collision == "not_a_cache":
        out.mkdir()
        (out / "holiday.jpg").write_bytes(b"x")
    else:
        out.mkdir()
        (out / "manifest.json").write_text(json.dumps(
            {"format": "dit-repro-latent-cache", "format_version": 1, "vae": {}, "scale_factor": 0.18215,
             "image_size": 64, "crop": "synthetic-render", "latent_shape": [4, 8, 8], "dataset": {},
             "shard_size": 1024, "dtype": "float32"}))
    before = sorted(p.name for p in tmp_path.rglob("*"))

    def no_vae(*args, **kwargs):
        raise AssertionError("the VAE was loaded before --out was checked")

    monkeypatch.setattr(extract_command, "load_vae", no_vae)
    argv = ["--data", "synthetic:count=4", "--vae", "tiny-random", "--image-size", "32", "--out", str(out)]
    assert extract_cli(argv) == 2
    err = capsys.readouterr().err
    expected = {"file": "is a file, not a folder", "below_a_file": "is a file, not a folder",
                "not_a_cache": "is not empty (holiday.jpg)", "other_cache": "image_size: cache has 64, this run has 32"}
    assert expected[collision] in err and str(out) in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_extract_refuses_an_unwritable_out(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic.tempfile, "NamedTemporaryFile", refuse)
    with pytest.raises(CacheError, match=r"--out .*new: cannot write there \(Permission denied\)"):
        extraction.check_cache_folder(tmp_path / "new")
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------ train


def _folder_config(data, **overrides) -> TrainConfig:
    values = dict(model="DiT-S/2", data=str(data), image_size=8, global_batch_size=2, steps=1, seed=0)
    values.update(overrides)
    return TrainConfig(**values)


def test_train_leaves_out_unreadable_images_records_them_and_refuses_a_resume_on_other_data(tmp_path, capsys):
    data = damaged_folder(tmp_path / "data")
    source = build_feature_source(_folder_config(data))
    assert len(source.dataset) == 3 and "left out 3 unreadable image(s)" in capsys.readouterr().err
    record = source.describe()["dataset"]  # env.json's source.dataset
    assert [e["file"] for e in record["unreadable"]] == BROKEN and record["num_items"] == 3
    saved = dataset_identity(source)  # what a checkpoint records
    check_same_data("last.pt", saved, saved)
    check_same_data("last.pt", None, saved)  # a checkpoint from before the data was recorded
    # Repairing a file changes what the indices mean: the resume is refused, not silently shifted.
    (data / "a" / "img_001.png").write_bytes((data / "a" / "img_000.png").read_bytes())
    repaired = dataset_identity(build_feature_source(_folder_config(data)))
    with pytest.raises(CheckpointError, match=r"last.pt was trained on imagefolder data of 3 images .* this run serves 4"):
        check_same_data("last.pt", saved, repaired)


def test_train_strict_exits_2_naming_the_files_and_writes_nothing(tmp_path, capsys):
    data = damaged_folder(tmp_path / "data")
    code = main(["train", "--data", str(data), "--image-size", "8", "--batch-size", "2", "--steps", "1",
                 "--out", str(tmp_path / "run"), "--strict"])
    err = capsys.readouterr().err
    assert code == 2 and "--strict: 3 unreadable image(s)" in err and all(name in err for name in BROKEN)
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_a_cache_built_without_unreadable_images_trains_strict_refuses_it_and_other_folders_too(tmp_path, capsys):
    data = damaged_folder(tmp_path / "data")
    build_cache(tmp_path / "cache", data=str(data), image_size=8)
    cached = dict(data=str(data), image_size=8, switches=Switches(features="cached"), cache_dir=str(tmp_path / "cache"))
    source = build_feature_source(train_config(**cached))  # the dataset hash matches: the same files left out
    assert len(source.dataset) == 3 and source.describe()["skipped_images"] == 3
    assert "left out 3 unreadable image(s)" in capsys.readouterr().err
    with pytest.raises(UnreadableImagesError, match=r"--strict: the latent cache .* without 3 unreadable"):
        build_feature_source(train_config(strict_images=True, **cached))
    (data / "a" / "img_000.png").unlink()
    with pytest.raises(CacheMismatchError, match="dataset: cache has imagefolder with 3 images"):
        build_feature_source(train_config(**cached))


@pytest.mark.parametrize("flag, value", [("--batch-size", "0"), ("--shard-size", "-1"), ("--num-workers", "-1"),
                                         ("--max-shards", "0"), ("--image-size", "x")])
def test_extract_flags_are_validated_when_parsed(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as info:
        extract_cli(["--data", "digits", "--vae", "tiny-random", "--out", str(tmp_path / "c"), flag, value])
    assert info.value.code == 2 and f"argument {flag}: must be an integer" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
