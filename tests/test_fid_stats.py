"""Image sets and statistics: a PNG folder and an ADM-layout .npz give the same statistics; files round-trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from dit_repro.fid.evaluate import FIDResult, NotComparableError, ensure_comparable, fid_of_samples
from dit_repro.fid.extractors import EXTRACTORS
from dit_repro.fid.stats import (
    FeatureStats,
    ImageArrayDataset,
    ImageSetError,
    StatsError,
    compute_stats,
    load_stats,
    open_image_set,
    reference_stats,
    save_stats,
)

PROXY = EXTRACTORS["proxy"]
INCEPTION = EXTRACTORS["inception"]


@pytest.fixture(scope="module")
def grey_images() -> np.ndarray:
    """300 digits as uint8 (N, 8, 8, 1)."""
    return np.round(load_digits().images[:300] * (255.0 / 16.0)).astype(np.uint8)[..., None]


def write_folder(folder, images: np.ndarray) -> None:
    folder.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(folder / f"{index:06d}.png")


def test_folder_and_npz_give_identical_statistics(tmp_path, grey_images) -> None:
    """PNG is lossless and both readers make grey RGB by repetition: the statistics are equal, not close."""
    write_folder(tmp_path / "pngs", grey_images)
    np.savez(tmp_path / "images.npz", arr_0=grey_images)
    from_folder = compute_stats(open_image_set(tmp_path / "pngs"), PROXY)
    from_npz = compute_stats(open_image_set(tmp_path / "images.npz"), PROXY)
    rgb = np.repeat(grey_images, 3, axis=-1)
    np.savez(tmp_path / "rgb.npz", arr_0=rgb)
    from_rgb = compute_stats(open_image_set(tmp_path / "rgb.npz"), PROXY)
    assert from_folder.num_samples == from_npz.num_samples == len(grey_images)
    np.testing.assert_array_equal(from_folder.mu, from_npz.mu)
    np.testing.assert_array_equal(from_folder.sigma, from_npz.sigma)
    np.testing.assert_array_equal(from_npz.mu, from_rgb.mu)
    # The reference's identity is its input: the same folder read again is the same reference.
    assert compute_stats(open_image_set(tmp_path / "pngs"), PROXY).fingerprint() == from_folder.fingerprint()
    assert from_npz.fingerprint() != from_rgb.fingerprint()


def test_num_takes_the_first_images_in_index_order(tmp_path, grey_images) -> None:
    write_folder(tmp_path / "pngs", grey_images)
    first = compute_stats(open_image_set(tmp_path / "pngs", num=100), PROXY)
    direct = compute_stats(ImageArrayDataset(grey_images[:100]), PROXY)
    np.testing.assert_array_equal(first.mu, direct.mu)
    with pytest.raises(ImageSetError, match="asked for 301 images"):
        open_image_set(tmp_path / "pngs", num=301)


def test_saved_statistics_round_trip_exactly(tmp_path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, PROXY.dim))
    stats = FeatureStats(x.mean(0), np.cov(x, rowvar=False), 100, PROXY.registry_name, "ab" * 32)
    save_stats(tmp_path / "ref.npz", stats)
    loaded = load_stats(tmp_path / "ref.npz", PROXY)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert (loaded.num_samples, loaded.extractor, loaded.source_sha256) == (
        100,
        PROXY.registry_name,
        "ab" * 32,
    )
    assert loaded.fingerprint() == stats.fingerprint()
    assert [p.name for p in tmp_path.iterdir()] == ["ref.npz"], "no temporary file is left behind"
    # Statistics of the proxy are not Inception statistics.
    assert load_stats(tmp_path / "ref.npz", INCEPTION) is None


def test_adm_reference_batch_is_read_as_inception_statistics(tmp_path) -> None:
    """An ADM reference .npz (arr_0, mu, sigma; no extractor recorded) holds Inception pool3 statistics."""
    rng = np.random.default_rng(1)
    mu, sigma = rng.normal(size=INCEPTION.dim), np.eye(INCEPTION.dim)
    images = rng.integers(0, 256, size=(40, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "VIRTUAL_ref.npz", arr_0=images, mu=mu, sigma=sigma)
    loaded = reference_stats(tmp_path / "VIRTUAL_ref.npz", INCEPTION)
    np.testing.assert_array_equal(loaded.mu, mu)
    assert loaded.num_samples == 40
    # The proxy cannot use Inception statistics; it computes its own from arr_0.
    proxy = reference_stats(tmp_path / "VIRTUAL_ref.npz", PROXY)
    assert proxy.mu.shape == (PROXY.dim,) and proxy.num_samples == 40


def test_statistics_of_the_wrong_dimension_are_refused(tmp_path) -> None:
    np.savez(tmp_path / "bad.npz", mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(StatsError, match="2048 features"):
        reference_stats(tmp_path / "bad.npz", INCEPTION)
    np.savez(tmp_path / "empty.npz", other=np.zeros(3))
    with pytest.raises(StatsError, match="neither"):
        reference_stats(tmp_path / "empty.npz", PROXY)


def test_bad_image_sets_are_refused(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageSetError, match="no images"):
        open_image_set(tmp_path / "empty")
    np.savez(tmp_path / "float.npz", arr_0=np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(ImageSetError, match="uint8 NHWC"):
        open_image_set(tmp_path / "float.npz")
    with pytest.raises(ImageSetError, match="neither a folder"):
        open_image_set(tmp_path / "missing.npz")


def test_fid_of_samples_reports_count_seed_and_label(tmp_path, grey_images) -> None:
    np.savez(tmp_path / "samples.npz", arr_0=grey_images[:150])
    (tmp_path / "samples.json").write_text('{"seed": 7}')
    reference = compute_stats(ImageArrayDataset(grey_images[150:]), PROXY)
    result = fid_of_samples(tmp_path / "samples.npz", reference, PROXY)
    assert (result.metric, result.num_samples, result.seed) == ("proxy-FID", 150, 7)
    assert "proxy-FID" in result.describe() and "N=150" in result.describe()
    assert FIDResult.from_dict(result.to_dict()) == result
    smaller = fid_of_samples(tmp_path / "samples.npz", reference, PROXY, num=100, seed=3)
    assert (smaller.num_samples, smaller.seed) == (100, 3)
    with pytest.raises(NotComparableError, match="sample counts differ"):
        ensure_comparable(result, smaller)


def test_a_file_that_is_not_an_npz_archive_is_named_as_such_not_as_pickled_data(tmp_path, grey_images) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_text("not an archive")
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, grey_images)  # an .npy under an .npz name
    whole = tmp_path / "whole.npz"
    np.savez(whole, arr_0=grey_images)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    for path, words in ((junk, "is not an .npz archive"), (single, "is a single .npy array, not an .npz archive"),
                        (truncated, "truncated"), (empty, "is not an .npz archive")):
        for load in (lambda p: open_image_set(p), lambda p: reference_stats(p, PROXY)):
            with pytest.raises((ImageSetError, StatsError)) as error:
                load(path)
            assert str(path) in str(error.value) and words in str(error.value)
            assert "pickled" not in str(error.value) and "allow_pickle" not in str(error.value)


def test_an_npz_of_python_objects_is_refused_without_unpickling(tmp_path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, arr_0=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(ImageSetError, match="array arr_0 holds Python objects, which are not read"):
        open_image_set(path)


def test_fewer_than_two_images_are_refused_by_count_not_as_non_finite_statistics(tmp_path, grey_images) -> None:
    one = tmp_path / "one.npz"
    np.savez(one, arr_0=grey_images[:1])
    with pytest.raises(ImageSetError) as error:
        open_image_set(one)
    assert f"{one} gives 1 image(s)" in str(error.value) and "at least 2" in str(error.value)
    assert "non-finite" not in str(error.value)
    with pytest.raises(ImageSetError, match="gives 1 image"):
        open_image_set(_folder_of(tmp_path, grey_images[:3]), num=1)
    with pytest.raises(ImageSetError, match="the image set gives 1 image"):
        compute_stats(ImageArrayDataset(grey_images[:1]), PROXY)


def _folder_of(tmp_path, images: np.ndarray):
    folder = tmp_path / "folder"
    write_folder(folder, images)
    return folder


def test_statistics_entries_of_the_wrong_kind_are_named(tmp_path) -> None:
    path = tmp_path / "stats.npz"
    dim = PROXY.dim
    np.savez(path, mu=np.zeros(dim), sigma=np.eye(dim), extractor=np.str_(PROXY.registry_name),
             num_samples=np.array(["ten"]))
    with pytest.raises(StatsError, match="num_samples must be a single integer"):
        load_stats(path, PROXY)
    np.savez(path, mu=np.array(["a"] * dim), sigma=np.eye(dim), extractor=np.str_(PROXY.registry_name))
    with pytest.raises(StatsError, match="mu must be a numeric array"):
        load_stats(path, PROXY)


def test_a_damaged_samples_json_is_refused_naming_the_file_and_the_field(tmp_path, grey_images) -> None:
    from dit_repro.fid.evaluate import samples_record

    folder = _folder_of(tmp_path, grey_images[:3])
    record = folder / "samples.json"
    for text, words in (
        ("{", "is not valid JSON"),
        ('{"num": 3, "seed": NaN}', "NaN is not a JSON number"),
        ("[3]", "must hold a JSON object"),
        ('{"num": 3, "seed": true}', "seed must be an integer >= 0, got True"),
        ('{"num": -1}', "num must be an integer >= 0, got -1"),
        ('{"num": 3, "settings": "ddim"}', "settings must be a JSON object, got str"),
    ):
        record.write_text(text)
        with pytest.raises(ImageSetError) as error:
            samples_record(folder)
        assert str(record) in str(error.value) and words in str(error.value), str(error.value)
    record.write_text('{"seed": 0}')
    with pytest.raises(ImageSetError, match="does not say how many samples the folder holds"):
        fid_of_samples(folder, compute_stats(ImageArrayDataset(grey_images), PROXY), PROXY)
