"""Decoding image files with PIL into RGB uint8 tensors of one size.

Conversions to RGB:
- grayscale (L, 1) is replicated to three equal channels;
- 16-bit and 32-bit integer grayscale (I;16*, I) is read as a 16-bit range and scaled to
  8 bits with rounding (v * 255 / 65535: 65535 -> 255, 32768 -> 128); values beyond the
  16-bit range saturate;
- float grayscale (F) is read as [0, 1] when its maximum is at most 1, else as [0, 255];
- anything with transparency (RGBA, LA, PA, P or RGB with a transparent colour) is
  composited onto BLACK: each channel becomes round(value * alpha / 255);
- palette (P), CMYK, YCbCr and the rest go through PIL's own conversion to RGB.

Every file is first turned upright by its EXIF orientation tag (``ImageOps.exif_transpose``;
phone photos), for images and label / mask maps alike, so that they stay aligned, and its
size is that of the upright image. Size limits are the caller's (``data.max_image_pixels``,
checked on the header sizes): PIL's own decompression-bomb warning and error are off here.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, ImageOps

T = TypeVar("T")

_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_ORIENTATION = 0x0112  # the EXIF tag
_TRANSPOSED = frozenset({5, 6, 7, 8})  # orientations that swap height and width
DEFAULT_MAX_PIXELS = 178_956_970  # PIL's own default limit (about 13,400 x 13,400)


@contextlib.contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """A file opened with PIL and turned upright by its EXIF orientation (the pixels load)."""
    Image.MAX_IMAGE_PIXELS = None  # the size limit is checked on header sizes (``read_size``)
    with Image.open(path) as im:
        yield ImageOps.exif_transpose(im)


def to_rgb(im: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to an RGB uint8 array (H, W, 3)."""
    if im.mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(im).astype(np.int64).clip(0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode == "F":
        values = np.asarray(im, dtype=np.float64)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        gray = (values * scale).round().clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint32)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def read_size(path: str | Path) -> tuple[int, int]:
    """The (height, width) of an image file once upright (EXIF orientation), from its header only."""
    Image.MAX_IMAGE_PIXELS = None
    with Image.open(path) as im:
        if im.getexif().get(_ORIENTATION) in _TRANSPOSED:
            return im.width, im.height
        return im.height, im.width


def decode(path: str | Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a file to RGB uint8 (H, W, 3) resized to ``size``; also return its original size.

    Resizing is PIL's bilinear filter, which antialiases when shrinking, applied to each
    axis independently (the aspect ratio is not preserved).
    """
    with open_image(path) as im:
        original = (im.height, im.width)
        rgb = to_rgb(im)
    if original != size:
        resized = Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        rgb = np.asarray(resized)
    return rgb, original


def _each_readable(paths: list[str], read: Callable[[str], T]) -> Iterator[tuple[int, T]]:
    """(i, read(paths[i])) for every file ``read`` handles; a file it fails on (any error of
    any codec on a damaged file) is skipped, never raised. PIL's warnings are silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, path in enumerate(paths):
            try:
                result = read(path)
            except Exception:  # a damaged or unreadable file means "skip it"
                continue
            yield i, result


def decode_many(paths: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode files into (images uint8 (k, 3, H, W), original sizes (k, 2), ok bool (k,)).

    A file that cannot be decoded never raises: its image is left black and ok is False.
    """
    pixels = np.zeros((len(paths), *size, 3), dtype=np.uint8)
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    ok = np.zeros(len(paths), dtype=bool)
    for i, (rgb, original) in _each_readable(paths, lambda path: decode(path, size)):
        pixels[i], sizes[i], ok[i] = rgb, original, True
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
    return images, torch.from_numpy(sizes), torch.from_numpy(ok)


def read_sizes(paths: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Header sizes of files: (sizes int64 (k, 2), ok bool (k,)); unreadable files: ok False."""
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    ok = np.zeros(len(paths), dtype=bool)
    for i, hw in _each_readable(paths, read_size):
        sizes[i], ok[i] = hw, True
    return torch.from_numpy(sizes), torch.from_numpy(ok)
