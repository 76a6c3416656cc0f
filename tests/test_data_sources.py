"""build_feature_source: shapes, prepare, run records, and the refusals that stop training before it starts."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch.utils.data import default_collate

from dit_repro.config import ConfigError, Switches
from dit_repro.data.latents import LatentCache
from dit_repro.data.manifest import CacheCorruptError, CacheMismatchError, shard_stem
from dit_repro.data.sources import build_feature_source
from dit_repro.data.vae import VAEHandle, load_vae
from tests.data_support import build_cache, tiny_vae, train_config


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A cache of the default synthetic set with the tiny VAE."""
    path = tmp_path_factory.mktemp("sources") / "cache"
    build_cache(path)
    return path


def _batch(source, rows=(0, 1, 2)):
    return default_collate([source.dataset[r] for r in rows])


def test_pixel_source_trains_on_the_flipped_images():
    source = build_feature_source(train_config(data="digits", image_size=16, vae=None))
    assert (source.num_classes, source.in_channels, source.input_size) == (10, 1, 16)
    batch = _batch(source)
    x, y = source.prepare(batch, "cpu")
    assert x.shape == (3, 1, 16, 16) and torch.equal(x, batch["x"]) and y.dtype == torch.long
    record = source.describe()
    assert record["features"] == "pixels" and record["dataset"]["kind"] == "digits"
    assert record["dataset"]["crop"] == "digits-bilinear-upsample" and "files" not in record["dataset"]
    assert build_feature_source(train_config(vae=None)).in_channels == 3


def test_live_source_encodes_with_the_batch_noise():
    source = build_feature_source(train_config(switches=Switches(features="live")))
    assert (source.num_classes, source.in_channels, source.input_size) == (3, 4, 4)
    batch = _batch(source)
    x0, _ = source.prepare(batch, "cpu")
    mean, logvar = source.vae.encode_moments(batch["x"])
    assert torch.equal(x0, (mean + torch.exp(0.5 * logvar) * batch["eps"]) * 0.18215)
    record = source.describe()
    assert record["vae"]["kind"] == "tiny-random" and record["vae"]["random_weights"] is True
    assert record["scale_factor"] == 0.18215


def test_cached_source_serves_drawn_latents_and_records_the_cache(cache_dir):
    source = build_feature_source(
        train_config(switches=Switches(features="cached"), cache_dir=str(cache_dir))
    )
    assert (source.num_classes, source.in_channels, source.input_size) == (3, 4, 4)
    batch = _batch(source)
    x0, y = source.prepare(batch, "cpu")
    assert x0.shape == (3, 4, 4, 4) and torch.equal(x0, batch["x"])
    record = source.describe()
    assert record["cache_dir"] == str(cache_dir) and record["num_latents"] == 12
    assert record["vae"]["weights_sha256"] == tiny_vae().fingerprint["weights_sha256"]
    # DataLoader workers receive a pickled copy: open file handles must not travel.
    source.dataset.cache.row(0)
    clone = pickle.loads(pickle.dumps(source.dataset))
    assert torch.equal(clone[0]["x"], source.dataset[0]["x"])


def test_num_classes_may_exceed_the_dataset_but_not_fall_short():
    assert build_feature_source(train_config(num_classes=5, vae=None)).num_classes == 5
    with pytest.raises(ConfigError, match="fewer than the dataset's 3 classes"):
        build_feature_source(train_config(num_classes=2, vae=None))
    with pytest.raises(ConfigError, match="rank must be in"):
        build_feature_source(train_config(vae=None), rank=2, world_size=2)


def _other_vae_folder(tmp_path):
    other = VAEHandle(copy.deepcopy(tiny_vae().model), "copy", "tiny-random")
    with torch.no_grad():
        next(other.model.parameters()).mul_(1.01)
    other.model.save_pretrained(tmp_path / "other-vae")
    return str(tmp_path / "other-vae")


@pytest.mark.equivalence
@pytest.mark.parametrize("field", ["vae", "scale_factor", "image_size", "dataset"])
def test_a_cache_of_another_configuration_is_refused_naming_the_field(tmp_path, cache_dir, field):
    cached = Switches(features="cached")
    if field == "vae":
        cfg = train_config(switches=cached, cache_dir=str(cache_dir), vae=_other_vae_folder(tmp_path))
        expected = ["vae.weights_sha256"]
    elif field == "scale_factor":
        build_cache(tmp_path / "scaled", vae=load_vae("tiny-random", scale_factor=0.2))
        cfg = train_config(switches=cached, cache_dir=str(tmp_path / "scaled"), vae=None)
        expected = ["scale_factor"]
    elif field == "image_size":
        cfg = train_config(switches=cached, cache_dir=str(cache_dir), image_size=64)
        expected = ["image_size"]
    else:
        cfg = train_config(
            switches=cached, cache_dir=str(cache_dir), data="synthetic:count=12,classes=3,seed=9"
        )
        expected = ["dataset"]
    with pytest.raises(CacheMismatchError) as info:
        build_feature_source(cfg)
    print(info.value)
    assert info.value.fields == expected and f"{expected[0]}: cache has" in str(info.value)


@pytest.mark.equivalence
def test_a_shard_with_a_wrong_hash_stops_training_before_it_starts(tmp_path):
    build_cache(tmp_path / "cache")
    shard = tmp_path / "cache" / (shard_stem(8, 12) + ".safetensors")
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    cfg = train_config(switches=Switches(features="cached"), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(CacheCorruptError, match="fails its sha256 check") as info:
        build_feature_source(cfg)
    assert shard.name in str(info.value)
    # The spec check passes (same configuration), so the refusal comes from the hash alone.
    LatentCache.open(tmp_path / "cache", verify=False)
