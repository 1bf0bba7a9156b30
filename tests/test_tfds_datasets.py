"""TFDS datasets through tfds.data_source, mocked (nothing can be downloaded here)."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxseg.data import DatasetError, load_dataset
from jaxseg.data.tfds_datasets import CITYSCAPES_TRAIN_IDS


def _records(image_key, mask_key, masks):
    return [
        {image_key: np.full((*m.shape[:2], 3), i, np.uint8), mask_key: m}
        for i, m in enumerate(masks)
    ]


def _mock(records_by_split):
    def as_data_source(builder, split, **kwargs):
        del builder, kwargs
        return records_by_split[str(split)]

    return tfds.testing.mock_data(as_data_source_fn=as_data_source)


def test_oxford_pet_trimap_border_is_ignored_or_a_class():
    trimap = np.array([[1, 2], [3, 1]], np.uint8)[..., None]
    records = _records("image", "segmentation_mask", [trimap, trimap])
    with _mock({"train": records, "test": records[:1]}):
        sources, info = load_dataset("tfds", tfds_name="oxford_iiit_pet")
        assert info.class_names == ("background", "pet") and len(sources["test"]) == 1
        np.testing.assert_array_equal(sources["train"][1]["mask"], [[1, 0], [255, 1]])
        assert sources["train"][1]["image"].shape == (2, 2, 3)
        sources, info = load_dataset("tfds", tfds_name="oxford_iiit_pet", border_as_class=True)
        assert info.class_names == ("background", "pet", "border")
        np.testing.assert_array_equal(sources["train"][0]["mask"], [[1, 0], [2, 1]])


def test_oxford_pet_invalid_trimap_value_names_the_record():
    records = _records("image", "segmentation_mask", [np.array([[1, 9]], np.uint8)[..., None]])
    with _mock({"train": records, "test": records}):
        sources, _ = load_dataset("tfds", tfds_name="oxford_iiit_pet")
        with pytest.raises(DatasetError, match=r"oxford_iiit_pet:train\[0\]: mask values \[9\]"):
            sources["train"][0]


def test_scene_parse150_zero_is_ignored_and_classes_shift():
    annotation = np.repeat(np.array([[0, 1], [150, 7]], np.uint8)[..., None], 3, axis=-1)
    records = _records("image", "annotation", [annotation])
    with _mock({"train": records, "test": records}):
        sources, info = load_dataset("tfds", tfds_name="scene_parse150", ignore_label=255)
        assert info.num_classes == 150 and set(sources) == {"train", "validation"}
        np.testing.assert_array_equal(sources["validation"][0]["mask"], [[255, 0], [149, 6]])


def test_cityscapes_label_ids_to_train_ids():
    labels = np.array([[7, 26, 0, 33]], np.uint8)[..., None]  # road, car, unlabeled, bicycle
    records = _records("image_left", "segmentation_label", [labels])
    with _mock({"train": records, "validation": records, "test": records}):
        sources, info = load_dataset(
            "tfds", tfds_name="cityscapes", builder_config="semantic_segmentation"
        )
        assert info.num_classes == 19 and len(CITYSCAPES_TRAIN_IDS) == 19
        np.testing.assert_array_equal(sources["train"][0]["mask"], [[0, 13, 255, 18]])


def test_unprepared_dataset_says_how_to_build_it(tmp_path):
    with pytest.raises(
        DatasetError,
        match=r"(?s)cannot open TFDS dataset 'oxford_iiit_pet'.*tfds build"
        r" oxford_iiit_pet --file_format=array_record",
    ):
        load_dataset("tfds", tfds_name="oxford_iiit_pet", data_dir=str(tmp_path))
    with pytest.raises(DatasetError, match=r"no TFDS adapter for 'mnist'; supported: \["):
        load_dataset("tfds", tfds_name="mnist")
