"""Parsing the CIFAR-10 "python version" archive (pickled batches) into uint8 tensors."""

from __future__ import annotations

import pickle
import tarfile
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from selfsup.data.arrays import ImageArrays
from selfsup.data.errors import DataError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
META = "batches.meta"

# Everything a CIFAR batch pickle may reference: numpy array reconstruction, and
# _codecs.encode, which protocol-2 pickles written by Python 3 use for bytes.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, lists and dicts, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a CIFAR batch")
        return super().find_class(module, name)


def _field(batch: dict, key: str) -> Any:
    """A field of an unpickled batch, whose keys are bytes (Python 2 pickles) or str."""
    if key.encode() in batch:
        return batch[key.encode()]
    return batch[key]


def _load_pickle(fileobj: IO[bytes]) -> dict:
    return _BatchUnpickler(fileobj, encoding="bytes").load()


def _to_split(batches: list[dict], classes: list[str]) -> ImageArrays:
    data = np.concatenate([np.asarray(_field(b, "data"), dtype=np.uint8) for b in batches])
    labels = np.concatenate([np.asarray(_field(b, "labels"), dtype=np.int64) for b in batches])
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageArrays(images, torch.from_numpy(labels), classes)


def parse_cifar10(archive: Path) -> tuple[ImageArrays, ImageArrays]:
    """Read ``cifar-10-python.tar.gz``: 50,000 train and 10,000 test images, 32x32."""
    wanted = {*TRAIN_BATCHES, TEST_BATCH, META}
    found: dict[str, dict] = {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                name = Path(member.name).name
                fileobj = tar.extractfile(member) if name in wanted else None
                if fileobj is not None:
                    found[name] = _load_pickle(fileobj)
    except (tarfile.TarError, pickle.UnpicklingError, EOFError, OSError) as e:
        raise DataError(f"cannot read the CIFAR-10 archive {archive}: {e}") from e
    missing = sorted(wanted - found.keys())
    if missing:
        raise DataError(f"the CIFAR-10 archive {archive} lacks {', '.join(missing)}")
    try:
        classes = [n.decode() if isinstance(n, bytes) else str(n) for n in _field(found[META], "label_names")]
        train = _to_split([found[b] for b in TRAIN_BATCHES], classes)
        test = _to_split([found[TEST_BATCH]], classes)
    except (KeyError, ValueError) as e:
        raise DataError(f"unexpected batch format in the CIFAR-10 archive {archive}: {e}") from e
    return train, test
