import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxseg.data.shapes import CLASS_NAMES, load_shapes, render_example
from jaxseg.metrics import confusion_matrix, segmentation_metrics


def test_rendering_is_a_pure_function_of_the_seed():
    a = render_example(np.random.default_rng([0, 0, 5]), 48)
    b = render_example(np.random.default_rng([0, 0, 5]), 48)
    c = render_example(np.random.default_rng([0, 0, 6]), 48)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (48, 48, 3) and a[0].dtype == np.uint8 and a[1].shape == (48, 48)


def test_builder_writes_array_record_readable_without_tensorflow(data_dir):
    sources, info = load_shapes(
        data_dir, image_size=32, num_train=64, num_validation=16, num_test=8
    )
    assert [len(sources[s]) for s in ("train", "validation", "test")] == [64, 16, 8]
    root = os.path.join(data_dir, "jaxseg_shapes")
    files = [f for _, _, names in os.walk(root) for f in names]
    assert any(".array_record" in f for f in files)
    example = sources["train"][3]
    assert example["image"].shape == (32, 32, 3) and example["mask"].shape == (32, 32)
    assert info.num_classes == len(CLASS_NAMES) == 5
    assert info.class_frequencies[0] > 0.5 and all(f > 0 for f in info.class_frequencies)
    present = np.unique(np.concatenate([sources["train"][i]["mask"].ravel() for i in range(64)]))
    np.testing.assert_array_equal(present, np.arange(5))


def test_rebuilding_in_another_dir_gives_identical_data(data_dir, tmp_path):
    first, _ = load_shapes(data_dir, image_size=32, num_train=64, num_validation=16, num_test=8)
    second, _ = load_shapes(
        str(tmp_path), image_size=32, num_train=64, num_validation=16, num_test=8
    )
    for index in (0, 17, 63):
        np.testing.assert_array_equal(
            first["train"][index]["image"], second["train"][index]["image"]
        )
        np.testing.assert_array_equal(first["train"][index]["mask"], second["train"][index]["mask"])


def test_generating_says_so_in_one_line_without_tfds_download_words_or_bars(tmp_path, capfd):
    load_shapes(str(tmp_path), image_size=16, num_train=4, num_validation=2, num_test=2)
    out, err = capfd.readouterr()
    assert out == (
        "jaxseg: generating its built-in shapes dataset (8 images of 16x16; nothing is"
        f" downloaded) in {tmp_path / 'jaxseg_shapes'}/s16_n4-2-2_seed0/1.0.0, once\n"
    )
    assert "Downloading" not in out + err and "Shuffling" not in err and "%|" not in err
    load_shapes(str(tmp_path), image_size=16, num_train=4, num_validation=2, num_test=2)
    assert capfd.readouterr().out == ""  # read back: nothing said


def test_colour_alone_does_not_solve_it():
    """A per-pixel (1x1 conv) classifier, fitted on colours, cannot tell the shapes apart."""
    rng = np.random.default_rng(0)
    examples = [render_example(np.random.default_rng([1, 0, i]), 48) for i in range(300)]
    images = np.stack([e[0] for e in examples]).reshape(-1, 3).astype(np.float32) / 255
    masks = np.stack([e[1] for e in examples]).reshape(-1)
    features = np.concatenate([images, images**2, images[:, :1] * images[:, 1:]], axis=1)
    weights = {"w": jnp.zeros((features.shape[1], 5)), "b": jnp.zeros(5)}
    tx = optax.adam(0.05)
    opt_state = tx.init(weights)

    @jax.jit
    def step(weights, opt_state, x, y):
        def loss(w):
            return optax.softmax_cross_entropy_with_integer_labels(x @ w["w"] + w["b"], y).mean()

        grads = jax.grad(loss)(weights)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(weights, updates), opt_state

    for _ in range(300):
        batch = rng.integers(0, len(masks), 8192)
        weights, opt_state = step(weights, opt_state, features[batch], masks[batch])
    predictions = jnp.argmax(features @ weights["w"] + weights["b"], -1)
    metrics = segmentation_metrics(confusion_matrix(jnp.asarray(masks), predictions, 5))
    assert metrics["miou"] < 0.3, metrics
    assert max(metrics["iou_per_class"][1:]) < 0.15, metrics
