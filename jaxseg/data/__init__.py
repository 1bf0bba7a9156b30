"""Datasets by name: `load_dataset(name, **options) -> ({split: source}, SegmentationInfo)`.

A source is a random-access sequence of dicts with "image" (H, W, 3) uint8
and "mask" (H, W) class indices (and optionally "weight").
"""

from jaxseg.data.info import SegmentationInfo
from jaxseg.data.shapes import load_shapes
from jaxseg.registry import Registry

DATASETS = Registry("dataset", {"shapes": load_shapes})


def dataset_names() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str, **options):
    """Loads dataset `name`; `options` are its loader's arguments (checked by name)."""
    return DATASETS.build(name, **options)


__all__ = ["SegmentationInfo", "dataset_names", "load_dataset"]
