"""Folder datasets: the real data under ../shared/data, and every kind of bad input."""

import os

import numpy as np
import pytest
from helpers import SHARED_DATA
from PIL import Image

from jaxseg.data import DatasetError, load_dataset
from jaxseg.data.folder import read_class_table

needs_shared = pytest.mark.skipif(
    not SHARED_DATA.exists(), reason="../shared/data is absent (a fresh clone)"
)


@needs_shared
def test_camvid_splits_classes_and_void():
    sources, info = load_dataset(
        "folder",
        root=str(SHARED_DATA / "camvid"),
        split_dir="splits",
        class_table="classes.csv",
        ignore_label=11,
    )
    assert {k: len(v) for k, v in sources.items()} == {"train": 367, "val": 101, "test": 233}
    assert info.num_classes == 11 and info.class_names[0] == "Sky" and info.ignore_label == 11
    assert info.palette[3] == (128, 64, 128)  # Road's SegNet colour
    # The dataset README's train frequencies (% of non-void pixels): Road 32.96, Sky 17.54.
    assert info.class_frequencies[3] == pytest.approx(0.3296, abs=5e-4)
    assert info.class_frequencies[0] == pytest.approx(0.1754, abs=5e-4)
    weights = info.median_frequency_weights()  # README: 0.2793, 0.2017, 4.7865, 0.1490, 1.0 ...
    np.testing.assert_allclose(weights[:5], [0.2793, 0.2017, 4.7865, 0.1490, 1.0], rtol=0.01)
    example = sources["test"][0]
    assert example["image"].shape == (360, 480, 3) and example["mask"].shape == (360, 480)
    assert set(np.unique(example["mask"])) <= set(range(12))


@needs_shared
def test_isbi_binary_masks_and_holdout():
    holdout = [str(i) for i in range(25, 30)]
    sources, info = load_dataset(
        "folder",
        root=str(SHARED_DATA / "isbi2012_membrane"),
        splits=("train",),
        mask_format="binary",
        class_names=("membrane", "cell"),
        holdout=holdout,
    )
    assert len(sources["train"]) == 25 and len(sources["validation"]) == 5
    assert [e.id for e in sources["validation"].examples] == holdout
    example = sources["train"][0]
    assert example["image"].shape == (512, 512, 3)  # greyscale made RGB
    assert set(np.unique(example["mask"])) == {0, 1}
    assert info.class_frequencies[0] == pytest.approx(0.22, abs=0.02)  # membrane ~22%


@needs_shared
def test_dsb_instances_give_border_weights():
    sources, info = load_dataset(
        "folder",
        root=str(SHARED_DATA / "dsb2018_nuclei_subset"),
        splits=("train", "val"),
        split_dir="splits",
        class_names=("background", "nucleus"),
        instances_dir="instances",
    )
    assert len(sources["train"]) == 116 and len(sources["val"]) == 29
    example = sources["train"][0]
    weight, mask = example["weight"], example["mask"]
    class_weights = info.median_frequency_weights()
    assert weight.shape == mask.shape
    np.testing.assert_allclose(weight[mask == 1], class_weights[1], rtol=1e-6)
    assert weight[mask == 0].min() >= class_weights[0] - 1e-6
    assert weight.max() > class_weights[0] + 1  # borders between close nuclei


def _write(path, array, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8), mode).save(path)


def _tiny_dataset(root, n=3, size=(6, 8)):
    rng = np.random.default_rng(0)
    for i in range(n):
        _write(root / "images" / "train" / f"im{i}.png", rng.integers(0, 255, (*size, 3)))
        _write(root / "masks" / "train" / f"im{i}.png", rng.integers(0, 3, size))
    return dict(root=str(root), splits=("train",), class_names=("a", "b", "c"))


def test_index_masks_load(tmp_path):
    sources, info = load_dataset("folder", **_tiny_dataset(tmp_path))
    assert len(sources["train"]) == 3 and info.num_classes == 3


def test_truncated_image_names_the_file(tmp_path):
    options = _tiny_dataset(tmp_path)
    path = tmp_path / "images" / "train" / "im1.png"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"im1.png: cannot read the image"):
        load_dataset("folder", **options)


def test_corrupt_image_names_the_file(tmp_path):
    options = _tiny_dataset(tmp_path)
    (tmp_path / "images" / "train" / "im2.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"im2.png: cannot read the image"):
        load_dataset("folder", **options)


def test_mask_size_mismatch_names_both_files(tmp_path):
    options = _tiny_dataset(tmp_path)
    _write(tmp_path / "masks" / "train" / "im0.png", np.zeros((5, 8)))
    with pytest.raises(
        DatasetError,
        match=r"masks/train/im0.png: mask is 5x8 \(HxW\) but its image"
        r" .*images/train/im0.png is 6x8",
    ):
        load_dataset("folder", **options)


def test_mask_value_outside_classes_and_ignore(tmp_path):
    options = _tiny_dataset(tmp_path)
    _write(tmp_path / "masks" / "train" / "im1.png", np.full((6, 8), 7))
    with pytest.raises(
        DatasetError,
        match=r"im1.png: mask values \[7\] are neither classes 0..2"
        r" nor the ignore label 255",
    ):
        load_dataset("folder", **options)
    _write(tmp_path / "masks" / "train" / "im1.png", np.full((6, 8), 255))
    assert len(load_dataset("folder", **options)[0]["train"]) == 3  # ignore is fine


def test_image_without_mask(tmp_path):
    options = _tiny_dataset(tmp_path)
    os.remove(tmp_path / "masks" / "train" / "im2.png")
    with pytest.raises(DatasetError, match=r"images/train/im2.png: no mask .*masks/train/im2.png"):
        load_dataset("folder", **options)


def test_a_mask_without_an_image_is_named_in_a_warning(tmp_path, caplog):
    options = _tiny_dataset(tmp_path)
    os.rename(tmp_path / "images" / "train" / "im1.png", tmp_path / "images" / "train" / "x.png")
    _write(tmp_path / "masks" / "train" / "x.png", np.zeros((6, 8)))
    sources, _ = load_dataset("folder", **options)
    assert [e.id for e in sources["train"].examples] == ["im0", "im2", "x"]
    orphan = tmp_path / "masks" / "train" / "im1.png"
    assert f"1 mask(s) of split 'train' have no image in {tmp_path / 'images' / 'train'}" in (
        caplog.text
    )
    assert f"are not used:\n  {orphan}" in caplog.text


def test_empty_directory(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "masks" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"images/train: no images found for split 'train'"):
        load_dataset("folder", root=str(tmp_path), splits=("train",), class_names=("a", "b"))
    with pytest.raises(DatasetError, match=r"no dataset at .*/nope \(data.options.root\)"):
        load_dataset("folder", root=str(tmp_path / "nope"), splits=("train",), class_names=("a",))
    (tmp_path / "nope").mkdir()
    with pytest.raises(DatasetError, match=r"nope/images/train: no such directory"):
        load_dataset("folder", root=str(tmp_path / "nope"), splits=("train",), class_names=("a",))


def test_colour_masks_and_unknown_colour(tmp_path):
    (tmp_path / "classes.csv").write_text(
        "id,name,r,g,b\n0,sky,0,0,255\n1,road,128,64,128\n2,void,0,0,0\n"
    )
    mask = np.zeros((6, 8, 3), np.uint8)
    mask[:3] = (0, 0, 255)
    mask[3:] = (128, 64, 128)
    mask[5, 7] = (0, 0, 0)  # void
    _write(tmp_path / "images" / "train" / "a.png", np.zeros((6, 8, 3)))
    _write(tmp_path / "masks" / "train" / "a.png", mask)
    options = dict(
        root=str(tmp_path),
        splits=("train",),
        mask_format="colour",
        class_table="classes.csv",
        ignore_label=2,
    )
    sources, info = load_dataset("folder", **options)
    assert info.class_names == ("sky", "road")
    decoded = sources["train"][0]["mask"]
    assert (decoded[:3] == 0).all() and decoded[4, 0] == 1
    # The ignore row of the table ("void") must map to the ignore label, not a class
    assert decoded[5, 7] == 2  # colour (0,0,0) has id 2 = the ignore label
    mask[0, 0] = (1, 2, 3)
    _write(tmp_path / "masks" / "train" / "a.png", mask)
    with pytest.raises(
        DatasetError, match=r"a.png: colours \[\(1, 2, 3\)\] are not in the colour table"
    ):
        load_dataset("folder", **options)


def test_binary_masks_reject_other_values(tmp_path):
    _write(tmp_path / "images" / "train" / "a.png", np.zeros((4, 4, 3)))
    _write(tmp_path / "masks" / "train" / "a.png", np.array([[0, 255, 0, 128]] * 4))
    with pytest.raises(
        DatasetError, match=r"a.png: a binary mask holds 0 and 255 \(or 0 and 1\); found \[128\]"
    ):
        load_dataset("folder", root=str(tmp_path), splits=("train",), mask_format="binary")


def test_skip_drops_bad_examples_and_logs_them(tmp_path, caplog):
    options = _tiny_dataset(tmp_path, n=4)
    (tmp_path / "images" / "train" / "im2.png").write_bytes(b"garbage")
    os.remove(tmp_path / "masks" / "train" / "im3.png")
    sources, _ = load_dataset("folder", **options, on_error="skip")
    assert [e.id for e in sources["train"].examples] == ["im0", "im1"]
    assert "skipped 2 of 4 examples in split 'train'" in caplog.text
    assert "im2.png: cannot read the image" in caplog.text and "im3.png" in caplog.text


def test_class_table_errors(tmp_path):
    (tmp_path / "bad.csv").write_text("id,name\n0,a\n2,b\n")
    with pytest.raises(DatasetError, match=r"bad.csv: class ids must be 0..1"):
        read_class_table(str(tmp_path / "bad.csv"))
    with pytest.raises(DatasetError, match=r"missing.csv: cannot read the class table"):
        read_class_table(str(tmp_path / "missing.csv"))
