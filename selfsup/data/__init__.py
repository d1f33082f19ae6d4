"""Data loading: image folders, archives and named datasets, as uniform uint8 batches."""

from selfsup.data.batch import Batch
from selfsup.data.dataset import DatasetSplits, ImageDataset, cap, open_dataset
from selfsup.data.errors import DataError

__all__ = ["Batch", "DataError", "DatasetSplits", "ImageDataset", "cap", "open_dataset"]
