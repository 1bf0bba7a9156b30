"""Named TFDS datasets read with `tfds.data_source` (ArrayRecord, random access, no TensorFlow).

Each supported dataset has an adapter that maps its features to (image,
mask) and gives its class list. Prepare the data once, on a machine with
internet access (and for Cityscapes, the manually downloaded zips):

    pip install tensorflow-datasets tensorflow   # tfds build needs TensorFlow
    tfds build oxford_iiit_pet --file_format=array_record --data_dir=~/tensorflow_datasets

Training then needs only the ArrayRecord files, not TensorFlow.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data.folder import DatasetError, default_palette
from jaxseg.data.info import SegmentationInfo

# Cityscapes label ids -> the 19 training classes (cityscapesScripts labels.py); the rest ignored.
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)
CITYSCAPES_TRAIN_IDS = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}


@dataclasses.dataclass(frozen=True)
class Adapter:
    """How a TFDS dataset's features become (image, mask)."""

    image_key: str
    mask_key: str
    class_names: tuple[str, ...]
    # (ignore_label, border_as_class) -> (256,) table: stored value -> class, -1 invalid
    lookup: Callable[[int, bool], np.ndarray]
    splits: Mapping[str, str]  # our split name -> the TFDS split


def _pet_lookup(ignore_label, border_as_class=False):
    # Trimap: 1 pet, 2 background, 3 border ("not classified").
    table = np.full(256, -1, np.int64)
    table[1], table[2] = 1, 0
    table[3] = 2 if border_as_class else ignore_label
    return table


def _scene_parse_lookup(ignore_label, border_as_class=False):
    # ADE20K SceneParsing: 0 = "other" (unlabelled), 1..150 the classes.
    table = np.full(256, -1, np.int64)
    table[0] = ignore_label
    table[1:151] = np.arange(150)
    return table


def _cityscapes_lookup(ignore_label, border_as_class=False):
    table = np.full(256, ignore_label, np.int64)
    for label_id, train_id in CITYSCAPES_TRAIN_IDS.items():
        table[label_id] = train_id
    return table


ADAPTERS = {
    "oxford_iiit_pet": Adapter(
        "image",
        "segmentation_mask",
        ("background", "pet"),
        _pet_lookup,
        {"train": "train", "test": "test"},
    ),
    "scene_parse150": Adapter(
        "image",
        "annotation",
        tuple(f"class_{i}" for i in range(1, 151)),
        _scene_parse_lookup,
        {"train": "train", "validation": "test"},  # TFDS calls ADE20K's validation set "test"
    ),
    "cityscapes": Adapter(
        "image_left",
        "segmentation_label",
        CITYSCAPES_CLASSES,
        _cityscapes_lookup,
        {"train": "train", "validation": "validation", "test": "test"},
    ),
}


class TfdsSource(Sequence):
    """A `tfds.data_source` split whose records are mapped to {"image", "mask"}."""

    def __init__(self, source, adapter: Adapter, table: np.ndarray, name: str):
        self.source, self.adapter, self.table, self.name = source, adapter, table, name

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        record = self.source[index]
        image = np.asarray(record[self.adapter.image_key], np.uint8)
        stored = np.asarray(record[self.adapter.mask_key])
        if stored.ndim == 3:
            stored = stored[..., 0]
        mask = self.table[stored]
        if (mask < 0).any():
            bad = np.unique(stored[mask < 0])
            raise DatasetError(
                f"{self.name}[{index}]: mask values {bad[:10].tolist()} are not"
                f" valid {self.adapter.mask_key} values"
            )
        if mask.shape != image.shape[:2]:
            raise DatasetError(
                f"{self.name}[{index}]: mask {mask.shape} and image"
                f" {image.shape[:2]} differ in size"
            )
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        return {"image": image, "mask": mask.astype(np.int32)}


def load_tfds(
    tfds_name: str,
    data_dir: str = "",
    ignore_label: int = 255,
    border_as_class: bool = False,
    builder_config: str = "",
):
    """Opens a TFDS dataset prepared as ArrayRecord; returns ({split: source}, info).

    Args:
      tfds_name: one of ADAPTERS ("oxford_iiit_pet", "scene_parse150", "cityscapes").
      data_dir: TFDS data directory ("" = the TFDS default).
      ignore_label: label of unlabelled pixels (Pet's trimap border, ADE's 0,
        Cityscapes' void classes).
      border_as_class: oxford_iiit_pet only: make the trimap border a third class.
      builder_config: e.g. "semantic_segmentation" for cityscapes.
    """
    if tfds_name not in ADAPTERS:
        raise DatasetError(f"no TFDS adapter for {tfds_name!r}; supported: {sorted(ADAPTERS)}")
    if border_as_class and tfds_name != "oxford_iiit_pet":
        raise DatasetError("border_as_class applies to oxford_iiit_pet's trimap only")
    adapter = ADAPTERS[tfds_name]
    table = adapter.lookup(ignore_label, border_as_class)
    class_names = adapter.class_names + (("border",) if border_as_class else ())
    full_name = f"{tfds_name}/{builder_config}" if builder_config else tfds_name
    sources = {}
    for ours, theirs in adapter.splits.items():
        try:
            source = tfds.data_source(
                full_name, split=theirs, data_dir=data_dir or None, download=False
            )
        except Exception as e:  # tfds raises several types for a missing/unprepared dataset
            raise DatasetError(
                f"cannot open TFDS dataset {full_name!r} split {theirs!r} in"
                f" {data_dir or 'the default data dir'}: {e}\nPrepare it with: tfds build"
                f" {tfds_name} --file_format=array_record (see jaxseg/data/tfds_datasets.py)"
            ) from e
        sources[ours] = TfdsSource(source, adapter, table, f"{full_name}:{theirs}")
    info = SegmentationInfo(class_names, ignore_label, default_palette(len(class_names)))
    return sources, info
