"""Scanning an image folder: train/held-out splits, class sub-folders, image files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
TRAIN_DIR = "train"
HELD_OUT_DIRS = ("test", "val")


@dataclass
class FolderSplit:
    """The image files of one split, in a fixed order, with their class index (-1: none)."""

    root: Path
    files: list[str]  # paths relative to root, POSIX separators, sorted
    labels: list[int]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def is_image(name: str) -> bool:
    """Whether a file name has one of the image extensions (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[str]:
    """Image files below ``folder`` (recursively), relative to it, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            if is_image(name) and not _hidden(name):
                found.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(found)


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _hidden(e.name))


def _has_top_level_images(folder: Path) -> bool:
    return any(e.is_file() and is_image(e.name) for e in os.scandir(folder))


def find_splits(root: Path) -> tuple[Path, Path | None]:
    """(train folder, held-out folder or None) for a dataset root.

    A root with a ``train/`` sub-folder uses it for training and ``test/`` (else ``val/``)
    as the held-out split; any other root is all training data.
    """
    if not (root / TRAIN_DIR).is_dir():
        return root, None
    held_out = next((root / d for d in HELD_OUT_DIRS if (root / d).is_dir()), None)
    return root / TRAIN_DIR, held_out


def is_labelled(folder: Path) -> bool:
    """Labelled when the folder holds only sub-folders (one per class), no images of its own."""
    return bool(_subfolders(folder)) and not _has_top_level_images(folder)


def class_names(*folders: Path) -> list[str]:
    """The classes of labelled split folders: all their sub-folder names, sorted.

    The union keeps class indices identical across splits even where a class is missing
    from one of them.
    """
    return sorted({name for folder in folders for name in _subfolders(folder)})


def scan(folder: Path, classes: list[str]) -> FolderSplit:
    """The images of one split: per class sub-folder if ``classes``, else every image below."""
    if not classes:
        files = _images_under(folder)
        return FolderSplit(folder, files, [-1] * len(files))
    files, labels = [], []
    for index, name in enumerate(classes):
        if (folder / name).is_dir():
            found = _images_under(folder / name)
            files += [f"{name}/{f}" for f in found]
            labels += [index] * len(found)
    return FolderSplit(folder, files, labels)
