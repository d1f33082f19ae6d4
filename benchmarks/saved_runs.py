"""Shared setup of the scripts that re-evaluate saved pre-training runs (``last.pt``)."""

from __future__ import annotations

from selfsup.config import PretrainConfig
from selfsup.data import cap, open_dataset
from selfsup.data.dataset import ImageDataset
from selfsup.methods.base import Method
from selfsup.train.runs import load_run
from selfsup.train.trainer import seed_everything


def splits_and_random_init(
    first_run: str, test_images: int | None, seed: int
) -> tuple[PretrainConfig, ImageDataset, ImageDataset, Method]:
    """The first run's config, its capped training images, ``test_images`` test images (None:
    the run's own cap, 0: all) and a random initialisation of its architecture seeded with
    ``seed`` (as in ``instance_methods.py``)."""
    cfg, _ = load_run(first_run, random_init=True)
    data = open_dataset(cfg.data.path, load_size=cfg.data.load_size)
    train = cap(data.train, cfg.data.max_images, cfg.train.seed)
    test = cap(data.test, cfg.data.max_test_images if test_images is None else test_images, cfg.train.seed)
    seed_everything(seed)
    _, fresh = load_run(first_run, random_init=True)
    return cfg, train, test, fresh
