"""The latent cache on disk: format, sharding, resume after a kill, refusals and bad input."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from dit_repro.atomic import TMP_PREFIX
from dit_repro.commands import extract as extract_command
from dit_repro.data import extraction
from dit_repro.data.images import build_image_source
from dit_repro.data.latents import LatentCache
from dit_repro.data.manifest import CacheCorruptError, CacheError, CacheMismatchError, shard_stem
from tests.data_support import IMAGE_SIZE, SYNTHETIC, build_cache, tiny_vae, write_image_folder


def _shard_rows(cache_dir):
    rows = {}
    for path in sorted(cache_dir.glob("shard-*.safetensors")):
        tensors = load_file(str(path))
        for row, index in enumerate(tensors["index"].tolist()):
            assert index not in rows, f"image {index} stored twice"
            rows[index] = {key: value[row] for key, value in tensors.items()}
    return rows


def cli_main(argv):
    """``dit-repro`` with only the extract subcommand registered (the other commands are not imported)."""
    parser = argparse.ArgumentParser(prog="dit-repro")
    extract_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def _cache_files(cache_dir):
    return {p.name: p.read_bytes() for p in sorted(cache_dir.iterdir())}


# ------------------------------------------------------------------ format


def test_cache_holds_both_orientations_of_every_image_and_a_complete_manifest(tmp_path):
    report = build_cache(tmp_path / "cache", batch_size=1)
    assert report.complete and report.images_encoded == 12 and report.shards_written == 3
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    vae = tiny_vae()
    assert manifest["vae"]["weights_sha256"] == vae.fingerprint["weights_sha256"]
    assert (
        manifest["vae"]["config"] == vae.fingerprint["config"] and manifest["vae"]["random_weights"] is True
    )
    assert (manifest["scale_factor"], manifest["image_size"], manifest["crop"]) == (
        0.18215,
        IMAGE_SIZE,
        "synthetic-render",
    )
    images = build_image_source(SYNTHETIC, IMAGE_SIZE, channels=3)
    assert manifest["dataset"]["sha256"] == images.fingerprint()["sha256"]
    assert [(s["start"], s["end"]) for s in manifest["shards"]] == [(0, 4), (4, 8), (8, 12)]
    for shard in manifest["shards"]:
        assert shard["file"] == shard_stem(shard["start"], shard["end"]) + ".safetensors"
        assert (
            shard["sha256"] == hashlib.sha256((tmp_path / "cache" / shard["file"]).read_bytes()).hexdigest()
        )
    rows = _shard_rows(tmp_path / "cache")
    assert sorted(rows) == list(range(12))
    # With batch_size=1 extraction encodes exactly [image, mirror]: the same call here must agree bit for bit.
    for index in (0, 7):
        image = images.load(index)
        mean, logvar = vae.encode_moments(torch.stack([image, image.flip(-1)]))
        assert torch.equal(rows[index]["mean"], mean) and torch.equal(rows[index]["logvar"], logvar)
        assert rows[index]["label"].item() == images.label(index)


def test_image_folder_cache_lists_the_sorted_files(tmp_path):
    write_image_folder(tmp_path / "images", {"dog": 2, "cat": 3})
    build_cache(tmp_path / "cache", data=str(tmp_path / "images"))
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["crop"] == "adm-center-crop"
    assert manifest["dataset"]["files"] == [
        "cat/img_000.png",
        "cat/img_001.png",
        "cat/img_002.png",
        "dog/img_000.png",
        "dog/img_001.png",
    ]
    assert manifest["dataset"]["classes"] == ["cat", "dog"]
    # Shard rows carry the labels of those files, in the same order.
    assert [row["label"].item() for _, row in sorted(_shard_rows(tmp_path / "cache").items())] == [
        0,
        0,
        0,
        1,
        1,
    ]


# ------------------------------------------------------------------ splitting and resuming


def test_ranks_write_disjoint_shards_and_together_equal_one_process(tmp_path):
    build_cache(tmp_path / "one")
    first = build_cache(tmp_path / "two", rank=1, world_size=2)
    assert not first.complete and first.shards_assigned == 1
    assert not json.loads((tmp_path / "two" / "manifest.json").read_text())["complete"]
    second = build_cache(tmp_path / "two", rank=0, world_size=2)
    assert second.complete and second.shards_assigned == 2
    assert _cache_files(tmp_path / "one") == _cache_files(tmp_path / "two")


def test_extraction_killed_mid_shard_resumes_without_duplicates_or_gaps(tmp_path, monkeypatch):
    build_cache(tmp_path / "whole", shard_size=3)
    real_write = extraction.atomic_write
    calls = []

    def killed_while_writing_third_shard(path, write):
        calls.append(path)
        if len(calls) == 3:
            # What SIGKILL leaves mid-write: half a temporary file (of a process now dead) and no shard.
            tmp = path.parent / f"{TMP_PREFIX}999999-{path.name}"
            write(tmp)
            tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
            raise KeyboardInterrupt
        real_write(path, write)

    monkeypatch.setattr(extraction, "atomic_write", killed_while_writing_third_shard)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tmp_path / "resumed", shard_size=3)
    monkeypatch.setattr(extraction, "atomic_write", real_write)
    assert not json.loads((tmp_path / "resumed" / "manifest.json").read_text())["complete"]
    assert len(list((tmp_path / "resumed").glob("shard-*.json"))) == 2
    assert len(list((tmp_path / "resumed").glob(f"{TMP_PREFIX}*"))) == 1
    report = build_cache(tmp_path / "resumed", shard_size=3)
    assert (report.shards_already_done, report.shards_written, report.complete) == (2, 2, True)
    assert sorted(_shard_rows(tmp_path / "resumed")) == list(range(12))
    assert _cache_files(tmp_path / "whole") == _cache_files(tmp_path / "resumed")
    assert not list((tmp_path / "resumed").glob(f"{TMP_PREFIX}*"))


def test_max_shards_stops_early_and_a_rerun_finishes(tmp_path):
    build_cache(tmp_path / "whole")
    partial = build_cache(tmp_path / "parts", max_shards=1)
    assert (partial.shards_written, partial.complete) == (1, False)
    with pytest.raises(CacheError, match="unfinished"):
        LatentCache.open(tmp_path / "parts")
    assert build_cache(tmp_path / "parts").complete
    assert _cache_files(tmp_path / "whole") == _cache_files(tmp_path / "parts")


@pytest.mark.slow
def test_extract_command_killed_with_sigkill_resumes_to_the_same_cache(tmp_path):
    args = [
        "extract",
        "--data",
        "synthetic:count=20,classes=3",
        "--vae",
        "tiny-random",
        "--image-size",
        "32",
        "--shard-size",
        "1",
        "--batch-size",
        "1",
        "--no-progress",
    ]
    command = [sys.executable, "-m", "dit_repro.cli", *args, "--out", str(tmp_path / "killed")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "killed").glob("shard-*.json"))) < 2:
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "no shard appeared"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    done = len(list((tmp_path / "killed").glob("shard-*.json")))
    assert 2 <= done < 20, f"the kill came too late to test anything ({done} of 20 shards)"
    assert not json.loads((tmp_path / "killed" / "manifest.json").read_text())["complete"]
    assert cli_main([*args, "--out", str(tmp_path / "killed")]) == 0
    assert cli_main([*args, "--out", str(tmp_path / "whole")]) == 0
    assert sorted(_shard_rows(tmp_path / "killed")) == list(range(20))
    assert _cache_files(tmp_path / "whole") == _cache_files(tmp_path / "killed")


# ------------------------------------------------------------------ refusals and bad input


def test_extraction_refuses_a_folder_with_a_cache_of_another_configuration(tmp_path):
    build_cache(tmp_path / "cache")
    with pytest.raises(CacheMismatchError) as info:
        build_cache(tmp_path / "cache", image_size=64)
    assert info.value.fields == ["image_size", "latent_shape"] and "cache has 32, this run has 64" in str(
        info.value
    )
    with pytest.raises(CacheMismatchError) as info:
        build_cache(tmp_path / "cache", data="synthetic:count=12,classes=3,seed=1")
    assert info.value.fields == ["dataset"]
    with pytest.raises(CacheMismatchError, match="shard_size"):
        build_cache(tmp_path / "cache", shard_size=5)


def test_extraction_refuses_a_non_empty_folder_that_is_not_a_cache(tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(CacheError, match="not empty .*holiday.jpg"):
        build_cache(tmp_path / "cache")


def test_unreadable_images_are_left_out_before_encoding_and_listed_with_their_reason(tmp_path, capsys):
    root = write_image_folder(tmp_path / "images", {"a": 3, "b": 3})
    (root / "a" / "img_001.png").write_bytes(b"definitely not a png")
    good = (root / "b" / "img_002.png").read_bytes()
    (root / "b" / "img_002.png").write_bytes(good[: len(good) // 2])  # truncated file
    report = build_cache(tmp_path / "cache", data=str(root), shard_size=2)
    assert report.complete and (report.images_encoded, report.images_skipped) == (4, 2)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    skipped = {entry["file"]: entry["reason"] for entry in manifest["skipped"]}
    assert sorted(skipped) == ["a/img_001.png", "b/img_002.png"] and manifest["num_latents"] == 4
    assert "UnidentifiedImageError" in skipped["a/img_001.png"] and "truncated" in skipped["b/img_002.png"]
    # The scan ran first: the dataset serves the four readable files, with their own labels, in
    # two full shards, and its hash covers exactly those.
    assert manifest["dataset"]["files"] == ["a/img_000.png", "a/img_002.png", "b/img_000.png", "b/img_001.png"]
    assert manifest["dataset"]["unreadable"] == manifest["skipped"] and manifest["num_items"] == 4
    assert [(s["start"], s["end"], s["count"]) for s in manifest["shards"]] == [(0, 2, 2), (2, 4, 2)]
    cache = LatentCache.open(tmp_path / "cache")
    assert [cache.row(r)[2:] for r in range(4)] == [(0, 0), (0, 1), (1, 2), (1, 3)]
    warning = capsys.readouterr().err
    assert "warning: left out 2 unreadable image(s)" in warning and "a/img_001.png" in warning


@pytest.mark.parametrize("damage", ["truncate", "modify", "delete"])
def test_damaged_shards_are_named_in_the_error(tmp_path, damage):
    build_cache(tmp_path / "cache")
    shard = tmp_path / "cache" / (shard_stem(4, 8) + ".safetensors")
    data = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(data[:-50])
    elif damage == "modify":
        shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        shard.unlink()
    expected = {"truncate": "is truncated", "modify": "fails its sha256 check", "delete": "is missing"}[
        damage
    ]
    with pytest.raises(CacheCorruptError, match=expected) as info:
        LatentCache.open(tmp_path / "cache")
    assert str(shard) in str(info.value)


# ------------------------------------------------------------------ the command


def test_extract_command_exit_codes_and_torchrun_environment(tmp_path, monkeypatch, capsys):
    common = [
        "extract",
        "--data",
        SYNTHETIC,
        "--vae",
        "tiny-random",
        "--image-size",
        "32",
        "--shard-size",
        "4",
        "--no-progress",
    ]
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert cli_main([*common, "--out", str(tmp_path / "cache")]) == 0
    assert sorted(p.name for p in (tmp_path / "cache").glob("shard-*.safetensors")) == [
        shard_stem(4, 8) + ".safetensors"
    ]
    assert "rank 1/3" in capsys.readouterr().out
    assert cli_main([*common, "--out", str(tmp_path / "cache"), "--rank", "0", "--world-size", "1"]) == 0
    assert "cache complete" in capsys.readouterr().out
    assert (
        cli_main(
            [
                "extract",
                "--data",
                str(tmp_path / "nowhere"),
                "--vae",
                "tiny-random",
                "--out",
                str(tmp_path / "c2"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "dit-repro extract: error:" in err and "nowhere" in err
    assert (
        cli_main(
            [
                *common,
                "--out",
                str(tmp_path / "cache"),
                "--image-size",
                "64",
                "--rank",
                "0",
                "--world-size",
                "1",
            ]
        )
        == 2
    )
    assert "image_size: cache has 32, this run has 64" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "shard-000000000-000000004.safetensors\x00x",
                                  "sub/shard-000000000-000000004.safetensors", None])
def test_a_manifest_shard_name_that_is_not_a_shard_file_is_refused_not_followed(tmp_path, name):
    cache_dir = tmp_path / "cache"
    build_cache(cache_dir)
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    manifest["shards"][0]["file"] = name
    (cache_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CacheCorruptError, match="lists a shard file"):
        LatentCache.open(cache_dir)
