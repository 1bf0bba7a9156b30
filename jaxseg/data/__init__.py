"""Datasets by name: `load_dataset(name, **options) -> ({split: source}, SegmentationInfo)`.

A source is a random-access sequence of dicts with "image" (H, W, 3) uint8
and "mask" (H, W) class indices (and optionally "weight").
"""

from jaxseg.data.folder import DatasetError, load_folder
from jaxseg.data.info import SegmentationInfo
from jaxseg.data.shapes import load_shapes
from jaxseg.data.tfds_datasets import load_tfds
from jaxseg.registry import Registry

DATASETS = Registry("dataset", {"shapes": load_shapes, "folder": load_folder, "tfds": load_tfds})


def register_dataset(name: str):
    """Decorator: a loader `(**options) -> ({split: source}, SegmentationInfo)` under `name`;
    its keyword arguments (with defaults) become `config.data.options`."""
    return DATASETS.register(name)


def dataset_names() -> list[str]:
    return DATASETS.names()


def load_dataset(dataset_name: str, /, **options):
    """Loads a dataset by name; `options` are its loader's arguments (checked by name)."""
    return DATASETS.build(dataset_name, **options)


__all__ = [
    "DATASETS",
    "DatasetError",
    "SegmentationInfo",
    "dataset_names",
    "load_dataset",
    "register_dataset",
]
