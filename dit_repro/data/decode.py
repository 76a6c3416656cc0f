"""Decoding image files: every PIL mode to 8-bit RGB or L with its real range.

The model sees 8-bit images (DiT and ADM train on ``uint8 / 255``), so every file is brought to
8 bits here, once, by :func:`to_8bit`:

* ``RGB``, ``L`` and ``1`` (0 or 255) are taken as they are; ``P`` through its palette,
  ``RGBX`` without its padding byte.
* ``CMYK`` and ``YCbCr`` use PIL's conversions (``R = (255 - C)(255 - K) / 255``, and the
  full-range JFIF BT.601 matrix); ICC profiles are ignored, as in DiT.
* 16-bit grey (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) spans 0..65535 and is scaled to
  ``round(v / 257)``: PIL's own ``convert`` clips these values at 255 instead, turning a 16-bit
  image almost white. ``I`` is read with the same 16-bit range, because that is what files give
  in that mode (PIL opens 16-bit PGM/PPM, and older versions 16-bit PNG, as ``I``, with
  values in 0..65535); an ``I`` image holding values outside 0..65535 has no known range and is
  refused by name.
* ``F`` (32-bit float) is read with the float convention 0.0..1.0 and scaled to
  ``round(v * 255)``; values outside it, or not finite, are refused.
* Transparency (``RGBA``, ``LA``, ``PA``, ``RGBa``, and a ``transparency`` colour key on ``P``,
  ``L``, ``RGB`` or a 16-bit grey image) is composited on white,
  ``round((c * a + 255 * (255 - a)) / 255)``. DiT and ADM call ``convert("RGB")``, which drops
  the alpha channel and shows whatever colour the file stores under transparent pixels (black,
  white or editing leftovers, depending on the tool that wrote it); compositing makes what the
  model sees depend only on what is visible. White is how cut-out images (icons, logos,
  products) are shown on a page. Fully opaque images come out exactly as with ``convert("RGB")``.
* Every other mode (``LAB``, ``HSV``, ``La``, ...) is refused by name.

Grey output (``channels=1``) from colour uses PIL's ITU-R 601-2 luma, which keeps grey pixels exact.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from dit_repro.data.imagesource import UnreadableImageError

BACKGROUND = 255
"""Grey level (white) that transparent pixels are composited on."""
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
"""Grey modes read with the 16-bit range 0..65535."""
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
"""Modes with an alpha channel, composited on :data:`BACKGROUND`."""
PLAIN_MODES = ("1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr")
"""8-bit modes that PIL converts to RGB with their full range."""
SUPPORTED_MODES = (*PLAIN_MODES, *ALPHA_MODES, *SIXTEEN_BIT_MODES, "F")
"""Every mode :func:`to_8bit` converts; any other is refused by name."""
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error, Image.DecompressionBombError)
"""What PIL raises for a corrupt or hostile file (its plugins use all of these, not only OSError)."""


class UnsupportedImageMode(ValueError):
    """An image mode with no defined conversion to 8-bit RGB, or values outside its mode's range."""


def to_8bit(image: Image.Image, channels: int = 3) -> Image.Image:
    """``image`` as 8-bit ``RGB`` (``channels=3``) or ``L`` (``channels=1``), every mode with its real range.

    See the module documentation for each mode. Raises :class:`UnsupportedImageMode` naming the
    mode for one that has no defined conversion.
    """
    target = "RGB" if channels == 3 else "L"
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES or mode == "F":
        grey = _high_range_grey(image)
        alpha = _colour_key_alpha(image)
        if alpha is not None:
            grey = _composite(grey, alpha)
        return Image.fromarray(grey, "L").convert(target)
    if mode not in PLAIN_MODES and mode not in ALPHA_MODES:
        raise UnsupportedImageMode(
            f"image mode {mode!r} is not supported (no defined conversion to RGB); convert the file to "
            f"one of {', '.join(SUPPORTED_MODES)}"
        )
    if image.has_transparency_data:
        # convert("RGBA") applies the alpha channel, a palette's transparent entries and a colour key alike.
        rgba = np.asarray(image.convert("RGBA"))
        rgb = _composite(rgba[..., :3], rgba[..., 3:])
        return Image.fromarray(rgb, "RGB").convert(target)
    if mode == target:
        return image.copy()
    return image.convert(target)


def _high_range_grey(image: Image.Image) -> np.ndarray:
    """An ``I;16*``, ``I`` or ``F`` image as uint8 grey, scaled from its mode's range."""
    values = np.asarray(image)
    if image.mode == "F":
        if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
            raise UnsupportedImageMode(
                f"image mode 'F' (32-bit float) holds values {_span(values)}, outside the float image range "
                "0.0..1.0 (or not finite); rescale the file to 0..1, or save it as 8- or 16-bit"
            )
        return np.rint(values.astype(np.float64) * 255).astype(np.uint8)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise UnsupportedImageMode(
            f"image mode {image.mode!r} (32-bit integer) holds values {_span(values)}, outside the 16-bit range "
            "0..65535 that image files of this mode use; save the file as 8- or 16-bit"
        )
    # 65535 / 255 = 257 exactly; v / 257 is never half-way between integers, so rint is plain rounding.
    return np.rint(values.astype(np.float64) / 257).astype(np.uint8)


def _span(values: np.ndarray) -> str:
    return f"from {values.min()} to {values.max()}" if values.size else "(none)"


def _colour_key_alpha(image: Image.Image) -> np.ndarray | None:
    """Alpha (0 or 255) of a grey image whose ``transparency`` names one raw value; None without one."""
    key = image.info.get("transparency")
    if not isinstance(key, (int, float)) or isinstance(key, bool):
        return None
    return np.where(np.asarray(image) == key, 0, 255).astype(np.uint8)


def _composite(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``round((c * a + BACKGROUND * (255 - a)) / 255)`` in integers: ``colour`` over white by ``alpha``."""
    c, a = colour.astype(np.int32), alpha.astype(np.int32)
    # + 127 before the floor division rounds to nearest (the numerator is never a half-way case).
    return ((c * a + BACKGROUND * (255 - a) + 127) // 255).astype(np.uint8)


def decode_image(path: str | Path, channels: int = 3) -> Image.Image:
    """Open, fully decode and convert one file with :func:`to_8bit`.

    Raises :class:`~dit_repro.data.imagesource.UnreadableImageError` naming the file and the
    reason for a file that cannot be opened, is truncated, is too large for PIL's decompression
    bomb limit, or has an unsupported mode.
    """
    try:
        with Image.open(path) as image:
            # load() forces the full decode, so truncated files fail here and not later.
            image.load()
            return to_8bit(image, channels)
    except DECODE_ERRORS as exc:
        raise UnreadableImageError(path, f"{type(exc).__name__}: {exc}") from exc
