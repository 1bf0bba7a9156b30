import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.metrics import confusion_matrix, segmentation_metrics


def test_confusion_matrix_hand_computed():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    preds = np.array([[0, 1, 1, 1], [2, 0, 2, 0]])
    expected = np.array([[1, 1, 0], [1, 2, 0], [1, 0, 1]])  # the 255 pixel is dropped
    got = confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), 3, 255)
    np.testing.assert_array_equal(got, expected)
    jitted = jax.jit(confusion_matrix, static_argnums=(2, 3))(labels, preds, 3, 255)
    np.testing.assert_array_equal(jitted, expected)


def test_metrics_hand_computed():
    confusion = np.array([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    m = segmentation_metrics(confusion)
    assert m["pixel_acc"] == pytest.approx(4 / 7)
    assert m["mean_acc"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    iou = [1 / (2 + 3 - 1), 2 / (3 + 3 - 2), 1 / (2 + 1 - 1)]
    np.testing.assert_allclose(m["iou_per_class"], iou)
    assert m["miou"] == pytest.approx(np.mean(iou))
    assert m["fwiou"] == pytest.approx((2 * iou[0] + 3 * iou[1] + 2 * iou[2]) / 7)


def test_absent_class_is_nan_and_left_out_of_the_means():
    # class 2 occurs neither in labels nor predictions; class 3 only in predictions
    confusion = np.array([[3, 0, 0, 1], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    m = segmentation_metrics(confusion)
    assert np.isnan(m["iou_per_class"][2])
    assert m["iou_per_class"][3] == 0.0
    assert m["miou"] == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert np.isnan(m["acc_per_class"][2]) and np.isnan(m["acc_per_class"][3])
    assert m["mean_acc"] == pytest.approx((3 / 4 + 1) / 2)
    assert m["fwiou"] == pytest.approx((4 * 3 / 4 + 2 * 1) / 6)


def test_ignore_label_counts_nowhere():
    labels = jnp.array([255, 255, 1, 0])
    preds = jnp.array([1, 0, 1, 0])
    m = segmentation_metrics(confusion_matrix(labels, preds, 2))
    assert m["pixel_acc"] == 1.0 and m["miou"] == 1.0


def test_all_ignored_gives_nan_not_an_error():
    m = segmentation_metrics(confusion_matrix(jnp.full((4,), 255), jnp.zeros((4,), int), 3))
    assert np.isnan(m["miou"]) and np.isnan(m["pixel_acc"])


def test_confusion_matrix_sums_across_devices():
    devices = jax.devices()
    assert len(devices) == 4, "conftest fakes 4 CPU devices"
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, (8, 5, 5))
    labels[0, 0] = 255
    preds = rng.integers(0, 4, (8, 5, 5))
    sharded = jax.jit(lambda a, b: confusion_matrix(a, b, 4))(
        jax.device_put(labels, sharding), jax.device_put(preds, sharding)
    )
    reference = np.zeros((4, 4), int)
    for label, pred in zip(labels.ravel(), preds.ravel()):
        if label != 255:
            reference[label, pred] += 1
    np.testing.assert_array_equal(sharded, reference)
