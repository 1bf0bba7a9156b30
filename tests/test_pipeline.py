"""The input pipeline: order and augmentation are a function of (seed, step); state restores."""

import numpy as np
import pytest

from jaxseg.data.pipeline import LoaderConfig, batches, eval_dataset, train_dataset
from jaxseg.data.transforms import AugmentConfig

AUGMENT = AugmentConfig(
    crop_size=(12, 12), scale_range=(0.7, 1.4), flip=True, rotation_degrees=10, brightness=0.2
)


def _source(n=20, size=16):
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.integers(0, 255, (size, size, 3), np.uint8),
            "mask": np.full((size, size), i % 5, np.uint8),
        }
        for i in range(n)
    ]


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_state_replays_exactly_the_same_batches(num_workers):
    loader = LoaderConfig(global_batch_size=4, num_workers=num_workers, prefetch=2)
    dataset = train_dataset(_source(), AUGMENT, loader, seed=3)
    iterator = batches(dataset)
    _take(iterator, 7)  # past the first epoch (20 examples = 5 batches)
    state = iterator.get_state()
    expected = _take(iterator, 6)
    _assert_same(_take(batches(dataset, state), 6), expected)
    # ... and the same stream as a fresh iterator skipped to that point
    fresh = batches(train_dataset(_source(), AUGMENT, loader, seed=3))
    _assert_same(_take(fresh, 13)[7:], expected)


def test_seed_changes_order_and_augmentation_and_epochs_reshuffle():
    loader = LoaderConfig(global_batch_size=4)
    first = _take(batches(train_dataset(_source(), AUGMENT, loader, seed=0)), 10)
    other = _take(batches(train_dataset(_source(), AUGMENT, loader, seed=1)), 10)
    assert not np.array_equal(first[0]["image"], other[0]["image"])

    def labels(batch_list):  # each example's mask is one class, i % 5
        return [int(np.bincount(m[m != 255]).argmax()) for b in batch_list for m in b["mask"]]

    epoch1, epoch2 = labels(first[:5]), labels(first[5:])
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2  # same examples, new order


def test_processes_read_disjoint_parts_of_each_global_batch():
    loader = LoaderConfig(global_batch_size=4)
    whole = _take(batches(train_dataset(_source(), AUGMENT, loader, seed=0)), 3)
    parts = [
        _take(
            batches(
                train_dataset(_source(), AUGMENT, loader, seed=0, process_index=p, process_count=2)
            ),
            3,
        )
        for p in range(2)
    ]
    for step in range(3):
        joined = np.concatenate([parts[0][step]["image"], parts[1][step]["image"]])
        np.testing.assert_array_equal(joined, whole[step]["image"])
    with pytest.raises(ValueError, match="batch size 4 is not divisible by the 3 processes"):
        train_dataset(_source(), AUGMENT, loader, seed=0, process_count=3)


def test_eval_pads_the_last_batch_with_ignored_blanks_and_pads_sizes():
    source = _source(n=5, size=10)
    out = list(batches(eval_dataset(source, LoaderConfig(4), ignore_label=255, multiple=8)))
    assert len(out) == 2 and out[0]["image"].shape == (4, 16, 16, 3)
    assert (out[1]["mask"][1:] == 255).all() and (out[1]["mask"][0, :10, :10] == 4).all()
    assert (out[0]["mask"][:, 10:, :] == 255).all()  # padding is ignored
    parts = [
        list(batches(eval_dataset(source, LoaderConfig(4), 255, process_index=p, process_count=2)))
        for p in range(2)
    ]
    assert [len(p) for p in parts] == [2, 2]


def test_eval_images_of_different_sizes():
    source = _source(n=2, size=10) + _source(n=2, size=14)
    with pytest.raises(
        ValueError,
        match=r"evaluation images of different sizes \[\(10, 10\), \(14, 14\)\]"
        r" in one batch; set data.eval_pad_to",
    ):
        list(batches(eval_dataset(source, LoaderConfig(4), ignore_label=255)))
    out = list(batches(eval_dataset(source, LoaderConfig(4), 255, pad_to=(14, 16))))
    assert out[0]["image"].shape == (4, 14, 16, 3)
    assert (out[0]["mask"][0, 10:] == 255).all() and (out[0]["mask"][2, :, 14:] == 255).all()
