"""Shared test fixtures: real data from ``../shared/data``, an isolated selfsup cache and the
pool of 2 gloo worker processes of the DDP tests."""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from ddp_helpers import DDPPool

from selfsup.data import open_dataset
from selfsup.views.config import IMAGENET_MEAN, IMAGENET_STD

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_ARCHIVE = SHARED_DATA / "cifar10.tar.gz"
CIFAR_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
)  # fmt: skip
CIFAR_PER_CLASS = {"train": 5000, "test": 1000}
MIN_READ = {"train": 100, "test": 20}  # images per class read at least, to stream the tar once
CAMVID_TRAIN, CAMVID_VAL = 8, 4  # real pairs per split in the small CamVid folder


@pytest.fixture(scope="session", autouse=True)
def selfsup_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A session-wide ``$SELFSUP_CACHE``, so that no test writes to ``~/.cache/selfsup``."""
    cache = tmp_path_factory.mktemp("selfsup-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SELFSUP_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def ddp_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DDPPool]:
    """Two persistent gloo processes (spawned on first use, one group for the whole session):
    ``ddp_pool.run(fn, *args)`` returns ``[fn(0, *args), fn(1, *args)]``; see ``ddp_helpers``."""
    pool = DDPPool(world_size=2, workdir=tmp_path_factory.mktemp("ddp-pool"))
    pool.start()
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real data archives (``<repo>/../shared/data``); fails if it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data folder not found: {SHARED_DATA}")
    return SHARED_DATA


class CifarSubsets:
    """Builds image folders of the first n real CIFAR-10 JPEGs per class, once per request.

    Members are read by streaming ``cifar10.tar.gz`` once (again only if a later request
    needs more images than were read) and kept in memory; each (n_train, n_test) folder is
    written once per session and shared, so tests must not modify it.
    """

    def __init__(self, archive: Path, base: Path) -> None:
        self.archive = archive
        self.base = base
        self.read = {"train": 0, "test": 0}  # images per class held in `members`
        self.members: dict[tuple[str, str, int], bytes] = {}  # (split, class, index) -> JPEG
        self.folders: dict[tuple[int, int], Path] = {}

    def __call__(self, n_train_per_class: int, n_test_per_class: int = 0) -> Path:
        """A folder ``train/<class>/NNNN.jpg`` (+ ``test/<class>/NNNN.jpg`` if n_test > 0)."""
        want = {"train": n_train_per_class, "test": n_test_per_class}
        for split, n in want.items():
            if not 0 <= n <= CIFAR_PER_CLASS[split]:
                raise ValueError(f"{split} images per class must be in 0..{CIFAR_PER_CLASS[split]}")
        key = (n_train_per_class, n_test_per_class)
        if key not in self.folders:
            self._read(want)
            root = self.base / f"cifar10-{n_train_per_class}-{n_test_per_class}"
            for (split, cls, index), data in self.members.items():
                if index < want[split]:
                    path = root / split / cls / f"{index:04d}.jpg"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
            self.folders[key] = root
        return self.folders[key]

    def _read(self, want: dict[str, int]) -> None:
        """Make sure `members` holds at least `want[split]` images per class of each split."""
        if all(self.read[s] >= n for s, n in want.items()):
            return
        target = {s: max(n, self.read[s], MIN_READ[s]) for s, n in want.items()}
        total = len(CIFAR_CLASSES) * sum(target.values())
        with tarfile.open(self.archive, "r|gz") as tar:
            for member in tar:
                parts = member.name.split("/")  # cifar10/<split>/<class>/<NNNN>.jpg
                if len(parts) != 4 or not member.isfile() or parts[1] not in target:
                    continue
                index = int(Path(parts[3]).stem)
                key = (parts[1], parts[2], index)
                if index < target[parts[1]] and key not in self.members:
                    fileobj = tar.extractfile(member)
                    if fileobj is not None:
                        self.members[key] = fileobj.read()
                if len(self.members) == total:
                    break
        self.read = target


@pytest.fixture(scope="session")
def cifar_subset(tmp_path_factory: pytest.TempPathFactory) -> CifarSubsets:
    """Factory ``cifar_subset(n_train_per_class, n_test_per_class=0) -> Path`` of real CIFAR-10.

    The folder has the image-folder layout ``train/<class>/NNNN.jpg`` and, when
    n_test_per_class > 0, ``test/<class>/NNNN.jpg`` (10 classes, 32x32 JPEGs). Folders are
    shared by the whole session: treat them as read-only. Fails if the archive is absent.
    """
    if not CIFAR_ARCHIVE.is_file():
        pytest.fail(f"CIFAR-10 archive not found: {CIFAR_ARCHIVE} (tests need ../shared/data)")
    return CifarSubsets(CIFAR_ARCHIVE, tmp_path_factory.mktemp("cifar"))


@pytest.fixture(scope="session")
def cifar_images(cifar_subset: CifarSubsets) -> torch.Tensor:
    """100 real CIFAR-10 train images (10 per class, class-sorted) as a float32 tensor
    (100, 3, 32, 32), normalised with the ImageNet mean and std like a view's pixels."""
    train = open_dataset(cifar_subset(10, 0)).train
    images = next(train.batches(len(train), shuffle=False)).images.float() / 255
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images - mean) / std


@pytest.fixture(scope="session")
def camvid_small(shared_data, tmp_path_factory) -> Path:
    """``camvid/{train,trainannot,val,valannot}`` with the first real CamVid pairs of each split,
    read from ../shared/data/camvid-trainval.tar.gz (streamed once)."""
    want = {"train": CAMVID_TRAIN, "val": CAMVID_VAL}
    root = tmp_path_factory.mktemp("camvid-small") / "camvid"
    names: dict[str, list[str]] = {"train": [], "val": []}
    with tarfile.open(shared_data / "camvid-trainval.tar.gz", "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")  # camvid/<folder>/<name>.png
            if len(parts) != 3 or not member.isfile():
                continue
            folder, name = parts[1], parts[2]
            split = folder.removesuffix("annot")
            if split not in want:
                continue
            if folder == split and len(names[split]) < want[split]:
                names[split].append(name)
            elif name not in names[split]:
                continue
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder / name).write_bytes(tar.extractfile(member).read())
    assert all(len(names[s]) == want[s] for s in want)
    return root
