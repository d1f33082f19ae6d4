"""Saliency masks: reading them beside an image folder, and the paper's post-processing.

MaskContrast (Van Gansbeke et al., ICCV 2021) trains on object-mask proposals, one binary mask
per training image. A mask folder (or an archive of one) holds one PNG per image, named like the
image relative to its split folder (``train/a/b.jpg`` -> ``<masks>/a/b.png``; the extension may
differ, the path without it must match). Accepted encodings, all single-channel:

- 0/1 masks (mode ``1``, ``L``, ``P`` or 16-bit with maximum 1), 0/255 masks,
- probability maps: 8-bit (value / 255), 16-bit (value / 65535) or float (``F``, in [0, 1]);

a pixel is salient where its probability is >= 0.5 (``THRESHOLD``). An RGB file whose three
channels are equal is read as gray; any other colour file is an error naming it. A mask must
have its image's original size; both a missing mask and one of another size are a one-line
DataError naming the file, unless ``skip_missing``, which leaves such images out and counts
them (``ImageDataset.num_without_mask``). Masks are resized to the dataset's load size with
nearest neighbour (PIL's NEAREST samples pixel centres, as the images' resize does).

Post-processing of an estimated saliency map (:func:`postprocess`, the paper's): threshold at
0.5, drop the connected components (8-connected) smaller than 1% of the image, and skip the
image when less than 1% of it stays salient.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from selfsup.data.decode import open_image
from selfsup.data.errors import DataError
from selfsup.data.folder import scan
from selfsup.data.parallel import map_chunks
from selfsup.data.sources import resolve
from selfsup.data.stores import describe_files

THRESHOLD = 0.5
MIN_COMPONENT = 0.01
MIN_SALIENT = 0.01
_OK, _UNREADABLE, _NOT_GRAY, _WRONG_SIZE = 0, 1, 2, 3


def mask_probability(im: Image.Image) -> np.ndarray | None:
    """A mask file's per-pixel foreground probability as float32 (H, W) in [0, 1], or None when
    it is a colour image (see the module doc for the encodings)."""
    if im.mode in ("RGB", "RGBA"):
        rgb = np.asarray(im)[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()):
            return None
        values = rgb[..., 0]
    elif im.mode == "LA":
        values = np.asarray(im)[..., 0]
    elif im.mode in ("1", "L", "P", "F") or im.mode.startswith("I"):
        values = np.asarray(im)
    else:
        return None
    values = values.astype(np.float64)
    top = float(values.max()) if values.size else 0.0
    if im.mode == "F" or top <= 1.0:
        scale = 1.0
    elif top <= 255.0:
        scale = 255.0
    else:
        scale = 65535.0
    return (values / scale).clip(0.0, 1.0).astype(np.float32)


def read_mask(path: str | os.PathLike, size: tuple[int, int], original: tuple[int, int]) -> tuple[np.ndarray, int]:
    """A mask file as uint8 (H, W) 0/1 at ``size`` and a status (0 ok, 1 unreadable, 2 colour,
    3 not of the image's ``original`` (height, width))."""
    empty = np.zeros(size, dtype=np.uint8)
    try:
        with open_image(path) as im:
            if (im.height, im.width) != tuple(original):
                return empty, _WRONG_SIZE
            prob = mask_probability(im)
    except Exception:  # any codec failure on a damaged file
        return empty, _UNREADABLE
    if prob is None:
        return empty, _NOT_GRAY
    mask = (prob >= THRESHOLD).astype(np.uint8)
    if mask.shape != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.Resampling.NEAREST))
    return mask, _OK


def _read_masks(items: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``items``: "height width path" strings (picklable chunks for ``map_chunks``)."""
    masks = np.zeros((len(items), *size), dtype=np.uint8)
    status = np.zeros(len(items), dtype=np.uint8)
    for i, item in enumerate(items):
        h, w, path = item.split(" ", 2)
        masks[i], status[i] = read_mask(path, size, (int(h), int(w)))
    return torch.from_numpy(masks), torch.from_numpy(status)


def match_masks(files: list[str], mask_root: Path) -> list[str | None]:
    """The mask file (relative to ``mask_root``) of every image file, matched by the path
    without its extension; None where there is none. Several candidates is a DataError."""
    by_stem: dict[str, list[str]] = {}
    for rel in scan(mask_root, []).files:
        by_stem.setdefault(os.path.splitext(rel)[0], []).append(rel)
    out: list[str | None] = []
    for rel in files:
        found = by_stem.get(os.path.splitext(rel)[0], [])
        if len(found) > 1:
            png = [f for f in found if f.lower().endswith(".png")]
            if len(png) != 1:
                raise DataError(f"several masks for image {rel} in {mask_root}: {', '.join(found)}")
            found = png
        out.append(found[0] if found else None)
    return out


def attach_masks(dataset, masks: str | os.PathLike, cache: Path, skip_missing: bool = False):
    """``dataset`` (an ``ImageDataset`` opened from a folder) with its masks as per-pixel maps.

    Images without a usable mask (missing, unreadable, colour, other size) are a DataError naming
    the first one, or with ``skip_missing`` left out; their number is ``num_without_mask``.
    """
    if dataset.files is None or dataset.root is None:
        raise DataError("saliency masks need images opened from a folder or an archive (file names)")
    source = resolve(os.fspath(masks), cache)
    if not isinstance(source, Path):
        raise DataError(f"masks {masks!r}: a named dataset, not a folder of masks")
    matched = match_masks(dataset.files, source)
    maps = torch.zeros((len(dataset), *dataset.image_size), dtype=torch.uint8)
    status = torch.full((len(dataset),), _UNREADABLE, dtype=torch.uint8)
    present = [i for i, m in enumerate(matched) if m is not None]
    items = [f"{int(dataset.sizes[i, 0])} {int(dataset.sizes[i, 1])} {source / matched[i]}" for i in present]
    for start, (chunk, codes) in map_chunks(partial(_read_masks, size=dataset.image_size), items, f"masks {source}"):
        rows = torch.tensor(present[start : start + len(codes)], dtype=torch.int64)
        maps[rows] = chunk
        status[rows] = codes
    missing = [i for i, m in enumerate(matched) if m is None]
    bad = [i for i in present if int(status[i]) != _OK]
    if not skip_missing and missing:
        rel = dataset.files[missing[0]]
        raise DataError(f"no mask for image {dataset.root / rel} in {source} (expected "
                        f"{os.path.splitext(rel)[0]}.png); {len(missing)} image(s) without a mask "
                        f"(data.skip_missing=true / --skip-missing leaves them out)")
    if not skip_missing and bad:
        i = bad[0]
        why = {_UNREADABLE: "cannot be read", _NOT_GRAY: "is a colour image, not a single-channel mask",
               _WRONG_SIZE: f"is not {int(dataset.sizes[i, 0])}x{int(dataset.sizes[i, 1])} like its image "
                            f"{dataset.root / dataset.files[i]}"}[int(status[i])]
        raise DataError(f"mask {source / matched[i]} {why}; {len(bad)} such mask(s) in {source} "
                        f"(data.skip_missing=true / --skip-missing leaves them out)")
    keep = status == _OK
    out = dataset.with_maps(maps)
    if not bool(keep.all()):
        out = out.subset(keep)
        if not len(out):
            raise DataError(f"no image in {dataset.root} has a usable mask in {source}")
    out.num_without_mask = int((~keep).sum())
    out.num_skipped = dataset.num_skipped
    return out


@dataclass
class Postprocessed:
    """A binary mask after :func:`postprocess`, its salient share, and whether the image is kept."""

    mask: np.ndarray  # bool (H, W)
    salient: float
    kept: bool
    dropped_components: int


def postprocess(
    probability: np.ndarray,
    threshold: float = THRESHOLD,
    min_component: float = MIN_COMPONENT,
    min_salient: float = MIN_SALIENT,
) -> Postprocessed:
    """MaskContrast's mask post-processing of a saliency map (float (H, W) in [0, 1]).

    Pixels with probability >= ``threshold`` are salient; every 8-connected salient component
    with fewer than ``min_component`` x H x W pixels is removed; the image is kept when the
    remaining salient share is at least ``min_salient``.
    """
    binary = np.asarray(probability) >= threshold
    labels, count = ndimage.label(binary, structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    small = areas < min_component * binary.size
    small[0] = True  # the background stays background
    mask = ~small[labels]
    salient = float(mask.mean()) if mask.size else 0.0
    return Postprocessed(mask, salient, salient >= min_salient, int(small[1:].sum()))


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """A binary mask as an 8-bit PNG with values 0 and 255."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(path)


def describe_skipped(names: list[str]) -> str:
    """``3 image(s): a.png, b.png, c.png``."""
    return f"{len(names)} image(s)" + (f": {describe_files(names)}" if names else "")
