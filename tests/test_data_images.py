"""Image datasets: ADM centre crop, ImageFolder listing and errors, digits, synthetic, the flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from dit_repro.data.decode import UnsupportedImageMode, decode_image, to_8bit
from dit_repro.data.digits import DigitsImages
from dit_repro.data.draws import draw_item
from dit_repro.data.imagefolder import ImageFolderImages, center_crop_arr
from dit_repro.data.images import AugmentedImageDataset, build_image_source
from dit_repro.data.imagesource import DatasetError, UnreadableImageError
from dit_repro.data.synthetic import SyntheticImages
from tests.data_support import write_image_folder

# ------------------------------------------------------------------ ADM centre crop


def test_center_crop_keeps_the_centre_of_a_wide_image():
    # 300x100, white only in the middle third: halved once by BOX (min side 100 >= 2*32) to 150x50,
    # BICUBIC to 96x32, and the centre 32 columns are exactly the former middle third.
    arr = np.zeros((100, 300, 3), dtype=np.uint8)
    arr[:, 100:200] = 255
    out = np.asarray(center_crop_arr(Image.fromarray(arr), 32))
    assert out.shape == (32, 32, 3)
    # Bicubic overshoot reaches one or two columns in from each edge; the inner columns stay white.
    assert (out[:, 3:-3] == 255).all(), out[0]


def test_center_crop_box_halves_before_the_bicubic_resize():
    # 1000x600 to 64: BOX halvings while the short side >= 128 (600 -> 300 -> 150 -> 75), then
    # BICUBIC to 107x64 and a centre crop. A 2-pixel checkerboard averages to flat grey under BOX,
    # whereas a direct bicubic downsampling would leave aliasing; the result must be flat.
    checker = (np.indices((600, 1000)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = np.asarray(center_crop_arr(Image.fromarray(checker), 64)).astype(int)
    assert out.shape == (64, 64)
    assert abs(out.mean() - 127.5) <= 1 and out.max() - out.min() <= 1


def test_center_crop_preserves_a_constant_colour_and_upsamples_small_images():
    out = np.asarray(center_crop_arr(Image.new("RGB", (20, 12), (10, 200, 30)), 32))
    assert out.shape == (32, 32, 3) and (out == (10, 200, 30)).all()


# ------------------------------------------------------------------ ImageFolder


def test_image_folder_labels_follow_sorted_class_names_and_files_stay_with_labels(tmp_path):
    # 'a b' sorts before 'a/' as a path but after 'a' as a class name: the two orders differ, and a
    # file list sorted on its own would pair files with the wrong labels.
    write_image_folder(tmp_path, {"b": 2, "a b": 2, "a": 3})
    (tmp_path / "a" / "UPPER.PNG").write_bytes((tmp_path / "a" / "img_000.png").read_bytes())
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    images = ImageFolderImages(tmp_path, 16)
    assert images.classes == ["a", "a b", "b"]
    assert len(images) == 8 and "a/notes.txt" not in images.files and "a/UPPER.PNG" in images.files
    for path, label in zip(images.files, images.labels, strict=True):
        assert images.classes[label] == path.rsplit("/", 1)[0]
    assert images.labels == sorted(images.labels)
    assert images.files == [f for _, f in sorted(zip(images.labels, images.files, strict=True))]
    assert images.fingerprint()["sha256"] == ImageFolderImages(tmp_path, 32).fingerprint()["sha256"]


def test_image_folder_load_gives_a_centre_cropped_tensor_in_range(tmp_path):
    write_image_folder(tmp_path, {"x": 1}, side=(60, 36))
    image = ImageFolderImages(tmp_path, 24).load(0)
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    cropped = np.array(center_crop_arr(Image.open(tmp_path / "x" / "img_000.png").convert("RGB"), 24))
    # ToTensor then Normalize(0.5, 0.5), as in DiT's transform.
    assert torch.equal(image, (torch.from_numpy(cropped).permute(2, 0, 1).float() / 255 - 0.5) / 0.5)
    assert ImageFolderImages(tmp_path, 24, channels=1).load(0).shape == (1, 24, 24)


@pytest.mark.parametrize("layout", ["missing", "no_classes", "no_images"])
def test_image_folder_errors_name_the_path_and_the_accepted_extensions(tmp_path, layout):
    root = tmp_path / "data"
    if layout != "missing":
        root.mkdir()
    if layout == "no_images":
        (root / "cat").mkdir()
        (root / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError) as info:
        ImageFolderImages(root, 16)
    message = str(info.value)
    assert str(root) in message and ".jpg" in message and ".png" in message


def test_unreadable_image_names_the_file(tmp_path):
    write_image_folder(tmp_path, {"x": 1})
    (tmp_path / "x" / "broken.jpg").write_bytes(b"not a jpeg")
    images = ImageFolderImages(tmp_path, 16)
    with pytest.raises(UnreadableImageError) as info:
        images.load(images.files.index("x/broken.jpg"))
    assert "broken.jpg" in str(info.value) and info.value.reason


# ------------------------------------------------------------------ image modes: each to 8 bits with its real range


def _pixels(image: Image.Image) -> list:
    return np.asarray(image).tolist()


def _grey16(mode: str, values: list[int]) -> Image.Image:
    """A 1-row image of ``mode`` (I;16, I;16L, I;16B or I) holding ``values`` exactly."""
    dtype = {"I;16": "<u2", "I;16L": "<u2", "I;16B": ">u2", "I": "<i4"}[mode]
    return Image.frombytes(mode, (len(values), 1), np.array(values, dtype=dtype).tobytes())


SIXTEEN_BIT = [0, 128, 129, 257, 1000, 32896, 65535]
"""16-bit values and, below, their 8-bit values round(v / 257): 0..65535 maps onto 0..255."""
SIXTEEN_BIT_AS_8 = [0, 0, 1, 1, 4, 128, 255]


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16B", "I"])
def test_sixteen_bit_grey_is_scaled_from_its_full_range_not_clipped(mode):
    image = _grey16(mode, SIXTEEN_BIT)
    assert image.mode == mode and _pixels(image) == [SIXTEEN_BIT]
    assert _pixels(to_8bit(image, channels=1)) == [SIXTEEN_BIT_AS_8]
    assert _pixels(to_8bit(image)) == [[[v] * 3 for v in SIXTEEN_BIT_AS_8]]
    # What PIL's own convert gives: clipped at 255, so a mid-grey 16-bit image turns white.
    assert _pixels(image.convert("L"))[0][-2] == 255


def test_thirty_two_bit_integers_outside_the_sixteen_bit_range_are_refused_by_name():
    for values in ([0, 70000], [-5, 10]):
        with pytest.raises(UnsupportedImageMode, match=r"mode 'I' \(32-bit integer\) holds values from .* 0\.\.65535"):
            to_8bit(_grey16("I", values))


def test_float_images_are_read_as_zero_to_one():
    image = Image.fromarray(np.array([[0.0, 0.2, 0.5, 1.0]], dtype=np.float32))
    assert image.mode == "F"
    # round(v * 255): 51.0000008 -> 51, 127.5 -> 128 (half to even), 255.
    assert _pixels(to_8bit(image, channels=1)) == [[0, 51, 128, 255]]
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(UnsupportedImageMode, match=r"mode 'F' .* outside the float image range 0\.0\.\.1\.0"):
            to_8bit(Image.fromarray(np.array([[0.5, bad]], dtype=np.float32)))


def test_one_bit_palette_and_grey_rgb_keep_their_values():
    bits = Image.frombytes("1", (8, 1), bytes([0b10100000]))
    assert _pixels(to_8bit(bits, channels=1)) == [[255, 0, 255, 0, 0, 0, 0, 0]]
    palette = Image.new("P", (3, 1))
    palette.putpalette([10, 20, 30, 200, 100, 0, 7, 7, 7])
    palette.putdata([0, 1, 2])
    assert _pixels(to_8bit(palette)) == [[[10, 20, 30], [200, 100, 0], [7, 7, 7]]]
    assert _pixels(to_8bit(Image.new("L", (1, 1), 77))) == [[[77, 77, 77]]]
    # Colour to grey is ITU-R 601-2 luma, exact for grey pixels; RGB and L pass through unchanged.
    assert _pixels(to_8bit(Image.new("RGB", (1, 1), (77, 77, 77)), channels=1)) == [[77]]
    rgb = Image.fromarray(np.arange(24, dtype=np.uint8).reshape(2, 4, 3))
    assert np.array_equal(np.asarray(to_8bit(rgb)), np.asarray(rgb))


def _over_white(colour: int, alpha: int) -> int:
    return round((colour * alpha + 255 * (255 - alpha)) / 255)


def test_alpha_is_composited_on_white():
    rgba = Image.frombytes("RGBA", (3, 1), bytes([200, 100, 0, 0, 200, 100, 0, 128, 200, 100, 0, 255]))
    expected = [[[_over_white(c, a) for c in (200, 100, 0)] for a in (0, 128, 255)]]
    assert expected == [[[255, 255, 255], [227, 177, 127], [200, 100, 0]]]
    assert _pixels(to_8bit(rgba)) == expected
    la = Image.frombytes("LA", (3, 1), bytes([100, 0, 100, 128, 100, 255]))
    assert _pixels(to_8bit(la, channels=1)) == [[255, 177, 100]]
    # Premultiplied RGBa (100, 50, 0) at alpha 128 is (199, 99, 0) unpremultiplied, then composited.
    premultiplied = Image.new("RGBa", (1, 1), (100, 50, 0, 128))
    assert _pixels(to_8bit(premultiplied)) == [[[_over_white(c, 128) for c in (199, 99, 0)]]]


def test_an_opaque_alpha_channel_gives_what_dit_convert_rgb_gives():
    pixels = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    opaque = Image.fromarray(np.dstack([pixels, np.full((4, 5), 255, np.uint8)]), "RGBA")
    assert np.array_equal(np.asarray(to_8bit(opaque)), np.asarray(opaque.convert("RGB")))


def test_transparent_palette_entries_and_colour_keys_are_composited_on_white():
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255])
    palette.putdata([0, 1])
    palette.info["transparency"] = 1
    assert _pixels(to_8bit(palette)) == [[[255, 0, 0], [255, 255, 255]]]
    palette.info["transparency"] = bytes([255, 64])  # a tRNS alpha per palette entry
    assert _pixels(to_8bit(palette)) == [[[255, 0, 0], [_over_white(0, 64)] * 2 + [_over_white(255, 64)]]]
    grey = Image.frombytes("L", (2, 1), bytes([10, 90]))
    grey.info["transparency"] = 10
    assert _pixels(to_8bit(grey, channels=1)) == [[255, 90]]
    deep = _grey16("I;16", [1000, 65535])
    deep.info["transparency"] = 1000
    assert _pixels(to_8bit(deep, channels=1)) == [[255, 255]] and _pixels(to_8bit(_grey16("I;16", [1000])))[0][0] == [4] * 3


def test_cmyk_and_ycbcr_use_their_standard_conversions():
    cmyk = Image.frombytes("CMYK", (3, 1), bytes([0, 0, 0, 0, 0, 0, 0, 255, 10, 20, 30, 40]))
    # R = (255 - C)(255 - K) / 255: (245, 235, 225) * 215 / 255 = (206.6, 198.1, 189.7).
    assert _pixels(to_8bit(cmyk)) == [[[255, 255, 255], [0, 0, 0], [207, 198, 190]]]
    assert _pixels(to_8bit(Image.new("YCbCr", (1, 1), (100, 128, 128)))) == [[[100, 100, 100]]]
    # JFIF: R = Y + 1.402 (Cr - 128), G = Y - 0.344136 (Cb - 128) - 0.714136 (Cr - 128), B = Y + 1.772 (Cb - 128).
    y, cb, cr = 100, 60, 200
    formula = [y + 1.402 * (cr - 128), y - 0.344136 * (cb - 128) - 0.714136 * (cr - 128), y + 1.772 * (cb - 128)]
    got = _pixels(to_8bit(Image.new("YCbCr", (1, 1), (y, cb, cr))))[0][0]
    assert all(abs(value - min(max(want, 0), 255)) <= 1 for value, want in zip(got, formula, strict=True)), got


@pytest.mark.parametrize("mode", ["LAB", "HSV", "La"])
def test_modes_without_a_defined_conversion_are_refused_by_name(mode):
    with pytest.raises(UnsupportedImageMode, match=f"image mode '{mode}' is not supported"):
        to_8bit(Image.new(mode, (1, 1)))


def test_a_sixteen_bit_file_loads_with_its_real_range(tmp_path):
    (tmp_path / "x").mkdir()
    # 32896 = 128 * 257: 8-bit 128 in every pixel, which the crop and resize keep.
    Image.fromarray(np.full((20, 30), 32896, dtype=np.uint16)).save(tmp_path / "x" / "deep.png")
    assert Image.open(tmp_path / "x" / "deep.png").mode == "I;16"
    assert _pixels(decode_image(tmp_path / "x" / "deep.png", channels=1))[0][:2] == [128, 128]
    image = ImageFolderImages(tmp_path, 8).load(0)
    assert torch.equal(image, (torch.full((3, 8, 8), 128.0) / 255 - 0.5) / 0.5)  # to_tensor's float32 steps


# ------------------------------------------------------------------ digits and synthetic


def test_digits_are_the_shipped_set_scaled_to_minus_one_one():
    digits = DigitsImages(8)
    assert len(digits) == 1797 and digits.num_classes == 10
    assert sorted({digits.label(i) for i in range(len(digits))}) == list(range(10))
    raw = torch.from_numpy(load_digits().images[5]).float()
    # At 8 px bilinear interpolation is the identity, so the values are exactly raw / 16 * 2 - 1.
    assert torch.allclose(digits.load(5)[0], raw / 16 * 2 - 1, atol=1e-6)


def test_digits_upsample_bilinearly_and_replicate_channels():
    grey, rgb = DigitsImages(32, channels=1).load(3), DigitsImages(32, channels=3).load(3)
    assert grey.shape == (1, 32, 32) and rgb.shape == (3, 32, 32)
    assert torch.equal(rgb, grey.expand(3, -1, -1))
    assert grey.min() >= -1 and grey.max() <= 1
    # Bilinear: neighbouring pixels differ far less than the raw 8x8 steps (nearest would copy them).
    assert grey.diff(dim=-1).abs().max() < 0.5 * (grey.max() - grey.min())


def test_synthetic_images_are_seeded_and_class_dependent():
    first, second = SyntheticImages(16, 3, count=40, classes=4), SyntheticImages(16, 3, count=40, classes=4)
    assert torch.equal(first.load(7), second.load(7))
    assert not torch.equal(first.load(7), SyntheticImages(16, 3, count=40, classes=4, seed=1).load(7))
    stack = torch.stack([first.load(i) for i in range(40)])
    labels = torch.tensor([first.label(i) for i in range(40)])
    assert stack.min() >= -1 and stack.max() <= 1
    # The phase is random per image, so compare phase-free amplitude spectra: a nearest-centroid
    # rule on them must recover every label, i.e. what an image shows depends on its class.
    spectra = torch.fft.rfft2(stack).abs().flatten(1)
    centroids = torch.stack([spectra[labels == k].mean(0) for k in range(4)])
    assert torch.equal(torch.cdist(spectra, centroids).argmin(1), labels)
    assert SyntheticImages(24, 1, count=2).load(1).shape == (1, 24, 24)


def test_image_source_specs():
    assert isinstance(build_image_source("digits", 16), DigitsImages)
    synthetic = build_image_source("synthetic:count=5,classes=2,seed=3", 16)
    assert (len(synthetic), synthetic.num_classes, synthetic.seed, synthetic.channels) == (5, 2, 3, 3)
    with pytest.raises(DatasetError, match="synthetic:count=N"):
        build_image_source("synthetic:size=3", 16)
    with pytest.raises(DatasetError, match="no folder"):
        build_image_source("no-such-dataset", 16)


def test_augmented_dataset_applies_the_drawn_flip_and_attaches_the_noise():
    images = SyntheticImages(8, 3, count=6, classes=2)
    dataset = AugmentedImageDataset(images, seed=5, latent_shape=(4, 1, 1))
    flips = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index in range(6):
            item, draws = dataset[index], draw_item(5, epoch, index, (4, 1, 1))
            expected = images.load(index).flip(-1) if draws.flip else images.load(index)
            assert torch.equal(item["x"], expected) and torch.equal(item["eps"], draws.eps)
            assert item["flip"].item() == draws.flip and item["y"].item() == images.label(index)
            flips.add(draws.flip)
    assert flips == {True, False}
    assert "eps" not in AugmentedImageDataset(images, seed=5)[0]
