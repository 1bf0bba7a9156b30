"""Datasets by name: `load_dataset(name, **options) -> ({split: source}, SegmentationInfo)`.

A source is a random-access sequence of dicts with "image" (H, W, 3) uint8
and "mask" (H, W) class indices (and optionally "weight").
"""

import inspect
from collections.abc import Callable

from jaxseg.data.info import SegmentationInfo
from jaxseg.data.shapes import load_shapes

_LOADERS: dict[str, Callable] = {"shapes": load_shapes}


def dataset_names() -> list[str]:
    return sorted(_LOADERS)


def load_dataset(name: str, **options):
    """Loads dataset `name`; `options` are its loader's arguments (checked by name)."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available datasets: {dataset_names()}")
    loader = _LOADERS[name]
    allowed = sorted(inspect.signature(loader).parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"dataset {name!r} has no option(s) {unknown}; its options are {allowed}")
    return loader(**options)


__all__ = ["SegmentationInfo", "dataset_names", "load_dataset"]
