"""Segmentation datasets: images with per-pixel class maps, decoded once into memory.

Layout (the one of the widely used SegNet CamVid release): for each split a folder of images
and a parallel folder of single-channel uint8 label maps with the same file names::

    <root>/train/0001TP_006690.png    <root>/trainannot/0001TP_006690.png
    <root>/val/0016E5_07959.png       <root>/valannot/0016E5_07959.png

The label folder of split ``s`` is ``label_dir.format(split=s)`` (default ``{split}annot``).
A label map is matched to its image by its path without the extension (``a.jpg`` ->
``a.png`` works). ``root`` may be a folder or an archive of one (unpacked once into the
cache, see ``selfsup.data.archive``).

- A label map is a class index per pixel: PIL mode L, P (palette indices) or 16-bit with
  values below 256. A colour-coded (RGB) label map is an error naming the file.
- An image without a label map, or whose label map has another size, is an error naming it.
- A pair whose image or label cannot be decoded is skipped and counted (``num_skipped``).
- Both are resized to one load size, the image with PIL's antialiased bilinear filter and
  the label with nearest neighbour (PIL's NEAREST samples pixel centres, so the two stay
  aligned). The decoded pair tensors are cached on disk, keyed by the files' fingerprint
  and the size, as the classification loader does.

``resize_pair`` / ``crop_resize_pair`` apply the same geometry to batched images and labels
(bilinear for pixels, nearest neighbour at pixel centres for labels).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.data.cache import fingerprint, load_entry, save_entry
from selfsup.data.decode import decode_many, open_image, read_sizes
from selfsup.data.errors import DataError
from selfsup.data.folder import FolderSplit, scan
from selfsup.data.parallel import map_chunks
from selfsup.data.sources import cache_root, resolve
from selfsup.data.stores import describe_files

log = logging.getLogger("selfsup.data")
DEFAULT_LABEL_DIR = "{split}annot"
DEFAULT_IGNORE_INDEX = 255
CLASSES_FILE = "classes.txt"
_LABEL_OK, _LABEL_UNREADABLE, _LABEL_NOT_INDEX = 0, 1, 2


@dataclass(frozen=True)
class LabelSet:
    """Class names of a label convention, its ignore index and (optionally) its colours."""

    names: tuple[str, ...]
    ignore_index: int = DEFAULT_IGNORE_INDEX
    palette: tuple[tuple[int, int, int], ...] = ()


CAMVID = LabelSet(
    names=("sky", "building", "pole", "road", "pavement", "tree", "sign/symbol", "fence", "car",
           "pedestrian", "bicyclist"),
    ignore_index=11,  # "void"
    palette=((128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
             (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)),  # CamVid's colours
)
LABEL_SETS: dict[str, LabelSet] = {"camvid": CAMVID}


@dataclass
class SegmentationSplit:
    """One split: uint8 images (N, 3, H, W), uint8 label maps (N, H, W) and image file names."""

    images: torch.Tensor
    labels: torch.Tensor
    files: list[str]
    num_skipped: int = 0

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.labels.shape[-2:])

    def subset(self, indices: torch.Tensor) -> SegmentationSplit:
        """The pairs at ``indices`` (``num_skipped`` of a subset is 0)."""
        idx = indices.tolist()
        return SegmentationSplit(self.images[indices], self.labels[indices], [self.files[i] for i in idx])


@dataclass
class SegmentationData:
    """A train and a validation split with their class names and ignore index."""

    root: Path
    train: SegmentationSplit
    val: SegmentationSplit
    classes: list[str]
    ignore_index: int
    label_set: str  # name of a LABEL_SETS entry, a classes file, or "" (class indices)
    palette: tuple[tuple[int, int, int], ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --- decoding -------------------------------------------------------------------------------


def decode_label(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray | None:
    """A label map as uint8 (H, W) resized with nearest neighbour to ``size``; None when it is
    not a single-channel index map (RGB, or values of 256 and more). An EXIF orientation tag
    turns it upright, as it does the image (``selfsup.data.decode.open_image``)."""
    with open_image(path) as im:
        if im.mode in ("L", "P"):
            values = np.asarray(im)
        elif im.mode.startswith("I"):
            wide = np.asarray(im)
            if wide.size and (wide.min() < 0 or wide.max() > 255):
                return None
            values = wide.astype(np.uint8)
        else:
            return None
    if values.shape != size:
        values = np.asarray(Image.fromarray(values).resize((size[1], size[0]), Image.Resampling.NEAREST))
    return values


def decode_labels(paths: list[str], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode label maps: (labels uint8 (k, H, W), status uint8 (k,)).

    status 0: decoded; 1: the file could not be read (label left 0); 2: not a class-index map.
    """
    labels = np.zeros((len(paths), *size), dtype=np.uint8)
    status = np.zeros(len(paths), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, path in enumerate(paths):
            try:
                values = decode_label(path, size)
            except Exception:  # any failure of any codec on a damaged file means "skip it"
                status[i] = _LABEL_UNREADABLE
                continue
            if values is None:
                status[i] = _LABEL_NOT_INDEX
            else:
                labels[i] = values
    return torch.from_numpy(labels), torch.from_numpy(status)


# --- joint geometry -------------------------------------------------------------------------


def resize_pair(images: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize images (B, 3, H, W) bilinearly (antialiased) and labels (B, H, W) by nearest
    neighbour at pixel centres to ``size``; dtypes are kept (uint8 images are rounded)."""
    if tuple(labels.shape[-2:]) == tuple(size):
        return images, labels
    x = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    if images.dtype == torch.uint8:
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    y = F.interpolate(labels[:, None].float(), size=size, mode="nearest-exact")[:, 0]
    return x, y.to(labels.dtype)


def crop_resize_pair(
    images: torch.Tensor,
    labels: torch.Tensor,
    boxes: torch.Tensor,
    flipped: torch.Tensor,
    size: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop each pair to its box, resize it to ``size`` and mirror it where ``flipped``.

    boxes: int (B, 4) as (left, top, width, height) in the pairs' pixel grid (the format of
    ``selfsup.views.boxes.sample_pixel_boxes``); flipped: bool (B,).
    """
    xs, ys = [], []
    for i, (left, top, w, h) in enumerate(boxes.tolist()):
        x, y = resize_pair(images[i : i + 1, :, top : top + h, left : left + w],
                           labels[i : i + 1, top : top + h, left : left + w], size)
        if bool(flipped[i]):
            x, y = x.flip(-1), y.flip(-1)
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


# --- reading a split ------------------------------------------------------------------------


def _pair_files(image_dir: Path, label_dir: Path) -> tuple[list[str], list[str]]:
    """(image files, their label files), relative to their folders; DataError naming the
    images without a label map."""
    images = scan(image_dir, []).files
    if not images:
        raise DataError(f"no images found in {image_dir}")
    by_stem: dict[str, list[str]] = {}
    for rel in scan(label_dir, []).files:
        by_stem.setdefault(os.path.splitext(rel)[0], []).append(rel)
    labels, missing = [], []
    for rel in images:
        found = by_stem.get(os.path.splitext(rel)[0], [])
        if rel in found:
            labels.append(rel)
        elif len(found) == 1:
            labels.append(found[0])
        elif found:
            raise DataError(f"several label maps for image {image_dir / rel}: {', '.join(found)}")
        else:
            missing.append(rel)
    if missing:
        raise DataError(f"{len(missing)} image(s) in {image_dir} have no label map (same name) in "
                        f"{label_dir}: {describe_files(missing)}")
    return images, labels


def _load_size(
    size: tuple[int, int] | None, scale: float, sizes: torch.Tensor, folder: Path
) -> tuple[int, int]:
    """The requested size, else the images' common size times ``scale``."""
    if size is not None:
        return size
    if not bool((sizes == sizes[0]).all()):
        other = sizes[(sizes != sizes[0]).any(1)][0].tolist()
        raise DataError(f"images in {folder} have different sizes ({sizes[0, 0]}x{sizes[0, 1]} and "
                        f"{other[0]}x{other[1]}): pass one size (--size H W)")
    return max(1, round(int(sizes[0, 0]) * scale)), max(1, round(int(sizes[0, 1]) * scale))


def _decode_split(
    image_paths: list[str], label_paths: list[str], size: tuple[int, int], desc: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, images decoded ok, label status) of every pair at ``size``."""
    n = len(image_paths)
    images = torch.empty((n, 3, *size), dtype=torch.uint8)
    labels = torch.empty((n, *size), dtype=torch.uint8)
    ok = torch.zeros(n, dtype=torch.bool)
    status = torch.zeros(n, dtype=torch.uint8)
    for start, (imgs, _, k) in map_chunks(partial(decode_many, size=size), image_paths, f"decoding {desc}"):
        images[start : start + len(k)] = imgs
        ok[start : start + len(k)] = k
    for start, (lbls, s) in map_chunks(partial(decode_labels, size=size), label_paths, f"decoding {desc} labels"):
        labels[start : start + len(s)] = lbls
        status[start : start + len(s)] = s
    return images, labels, ok, status


def load_segmentation_split(
    root: Path,
    split: str,
    label_dir: str = DEFAULT_LABEL_DIR,
    size: tuple[int, int] | None = None,
    scale: float = 1.0,
    cache: Path | None = None,
) -> SegmentationSplit:
    """Read the pairs of ``root/split`` and ``root/label_dir.format(split=split)``.

    size: (H, W) load size; None means the images' common size times ``scale`` (DataError
    when sizes differ). Decoded pairs are cached under ``cache/decoded``.
    """
    image_dir, label_folder = root / split, root / label_dir.format(split=split)
    for folder in (image_dir, label_folder):
        if not folder.is_dir():
            present = ", ".join(sorted(p.name for p in root.iterdir() if p.is_dir())) if root.is_dir() else "none"
            raise DataError(f"segmentation folder not found: {folder} (folders in {root}: {present})")
    images, labels = _pair_files(image_dir, label_folder)
    image_paths = [os.fspath(image_dir / rel) for rel in images]
    label_paths = [os.fspath(label_folder / rel) for rel in labels]
    image_sizes, image_ok = read_sizes(image_paths)
    label_sizes, label_ok = read_sizes(label_paths)
    readable = image_ok & label_ok
    if not readable.any():
        raise DataError(f"no readable image/label pairs in {image_dir} and {label_folder}")
    mismatch = (readable & (image_sizes != label_sizes).any(1)).nonzero().flatten().tolist()
    if mismatch:
        i = mismatch[0]
        raise DataError(f"label map {label_paths[i]} is {label_sizes[i, 0]}x{label_sizes[i, 1]} but its image "
                        f"{image_paths[i]} is {image_sizes[i, 0]}x{image_sizes[i, 1]} "
                        f"({len(mismatch)} pair(s) differ in size)")
    size = _load_size(size, scale, image_sizes[readable], image_dir)
    rels = [f"{split}/{r}" for r in images] + [f"{label_folder.name}/{r}" for r in labels]
    fp = fingerprint(FolderSplit(root, rels, [-1] * len(rels)), image_paths + label_paths)
    key = hashlib.sha256(f"segmentation\0{fp}\0{size[0]}x{size[1]}".encode()).hexdigest()
    cached_path = cache_root(cache) / "decoded" / f"{key}.pt"
    entry = load_entry(cached_path)
    if entry is None:
        imgs, lbls, ok, status = _decode_split(image_paths, label_paths, size, os.fspath(image_dir))
        entry = {"images": imgs, "labels": lbls, "ok": ok & readable, "status": status}
        save_entry(cached_path, entry)
    bad = (entry["status"] == _LABEL_NOT_INDEX).nonzero().flatten().tolist()
    if bad:
        raise DataError(f"label map {label_paths[bad[0]]} is not a single-channel class-index image (mode L or "
                        f"P, values < 256); {len(bad)} such file(s) in {label_folder}")
    keep = entry["ok"] & (entry["status"] == _LABEL_OK)
    if not keep.any():
        raise DataError(f"no readable image/label pairs in {image_dir} and {label_folder}")
    skipped = [rel for rel, k in zip(images, keep.tolist(), strict=True) if not k]
    if skipped:
        log.warning("skipped %d unreadable image/label pair(s) in %s: %s", len(skipped), image_dir,
                    describe_files(skipped))
    return SegmentationSplit(entry["images"][keep], entry["labels"][keep],
                             [rel for rel, k in zip(images, keep.tolist(), strict=True) if k], len(skipped))


# --- the dataset ----------------------------------------------------------------------------


def _label_set(root: Path, classes: str | None) -> tuple[LabelSet | None, str]:
    """The label convention: named (``camvid``), a file of names (one a line), ``classes.txt``
    in the root, a root folder named ``camvid*``, else None (class indices)."""
    spec = classes
    if spec is None:
        if (root / CLASSES_FILE).is_file():
            spec = os.fspath(root / CLASSES_FILE)
        elif root.name.lower().startswith("camvid"):
            spec = "camvid"
        else:
            return None, ""
    if spec in LABEL_SETS:
        return LABEL_SETS[spec], spec
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"class names {spec!r}: neither a known label set ({', '.join(LABEL_SETS)}) nor a file")
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names:
        raise DataError(f"class names file {path} is empty")
    return LabelSet(names), os.fspath(path)


def _check_labels(split: SegmentationSplit, num_classes: int, ignore_index: int, folder: str) -> None:
    """DataError naming the first label map with a value that is neither a class nor ignored."""
    flat = split.labels.reshape(len(split), -1).long()
    valid = flat != ignore_index
    top = torch.where(valid, flat, torch.zeros_like(flat)).amax(1)
    bad = (top >= num_classes).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise DataError(f"label map for {folder}/{split.files[i]} holds value {int(top[i])}, outside the "
                        f"{num_classes} classes 0..{num_classes - 1} and not the ignore index {ignore_index}")


def open_segmentation(
    spec: str | os.PathLike,
    *,
    splits: tuple[str, str] = ("train", "val"),
    label_dir: str = DEFAULT_LABEL_DIR,
    size: tuple[int, int] | None = None,
    scale: float = 1.0,
    classes: str | None = None,
    ignore_index: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    val_spec: str | os.PathLike | None = None,
) -> SegmentationData:
    """Open a segmentation dataset (a folder or an archive of one) with a train and a val split.

    val_spec: another folder / archive holding the val split (default: the same as ``spec``).
    classes: a label-set name (``camvid``) or a file of class names; None looks for
        ``classes.txt`` in the root, then takes a root named ``camvid*`` as CamVid, else
        the classes are the label values 0..max found (named by their index).
    ignore_index: the label value left out of loss and metrics; None means the label set's
        (CamVid: 11, "void"), else 255.
    """
    cache = cache_root(cache_dir)
    roots = []
    for where in (spec, spec if val_spec is None else val_spec):
        root = resolve(os.fspath(where), cache)
        if not isinstance(root, Path):
            raise DataError(f"{where}: a named classification dataset, not a segmentation folder")
        roots.append(root)
    root = roots[0]
    train, val = (load_segmentation_split(r, s, label_dir, size, scale, cache)
                  for r, s in zip(roots, splits, strict=True))
    label_set, label_set_name = _label_set(root, classes)
    if ignore_index is None:
        ignore_index = label_set.ignore_index if label_set is not None else DEFAULT_IGNORE_INDEX
    if label_set is not None:
        names = list(label_set.names)
    else:
        values = torch.cat([s.labels.flatten().unique() for s in (train, val)]).unique()
        values = values[values != ignore_index]
        names = [str(c) for c in range(int(values.max()) + 1 if values.numel() else 0)]
    if not names:
        raise DataError(f"{root}: every label pixel is the ignore index {ignore_index}")
    for split, name in zip((train, val), splits, strict=True):
        _check_labels(split, len(names), ignore_index, name)
    palette = label_set.palette if label_set is not None else ()
    return SegmentationData(root, train, val, names, ignore_index, label_set_name, palette)
