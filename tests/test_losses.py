import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.losses import mean_pixel_cross_entropy, pixel_cross_entropy, soft_dice_loss


def _numpy_ce(logits, labels):
    logits = logits - logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, labels[..., None], -1)[..., 0]


@pytest.fixture
def example():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 3)).astype(np.float32)
    labels = rng.integers(0, 3, (2, 3, 4))
    labels[0, 0, :2] = 255
    return logits, labels


def test_ignore_label_is_excluded(example):
    logits, labels = example
    valid = labels != 255
    expected = _numpy_ce(logits, np.where(valid, labels, 0))[valid].mean()
    got = mean_pixel_cross_entropy(jnp.asarray(logits), jnp.asarray(labels))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    jitted = jax.jit(mean_pixel_cross_entropy)(logits, labels)
    assert float(jitted) == pytest.approx(expected, rel=1e-5)


def test_class_weights_match_weighted_mean(example):
    logits, labels = example
    weights = np.array([0.5, 2.0, 1.0], np.float32)
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    w = weights[safe] * valid
    expected = (w * _numpy_ce(logits, safe)).sum() / w.sum()
    total, weight_sum = pixel_cross_entropy(logits, labels, class_weights=weights)
    assert float(total / weight_sum) == pytest.approx(expected, rel=1e-5)
    assert float(weight_sum) == pytest.approx(w.sum())


def test_pixel_weights_multiply(example):
    logits, labels = example
    pixel_weights = np.random.default_rng(1).uniform(0.5, 3, labels.shape).astype(np.float32)
    valid = labels != 255
    safe = np.where(valid, labels, 0)
    w = pixel_weights * valid
    expected = (w * _numpy_ce(logits, safe)).sum() / w.sum()
    got = mean_pixel_cross_entropy(logits, labels, pixel_weights=pixel_weights)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_wrong_class_weight_shape_is_an_error(example):
    logits, labels = example
    with pytest.raises(ValueError, match=r"class_weights has shape \(2,\); expected \(3,\)"):
        pixel_cross_entropy(logits, labels, class_weights=np.ones(2))


def test_gradient_is_finite_and_zero_on_ignored_pixels(example):
    logits, labels = example
    grads = jax.grad(mean_pixel_cross_entropy)(jnp.asarray(logits), jnp.asarray(labels))
    assert np.isfinite(grads).all()
    np.testing.assert_array_equal(grads[labels == 255], 0)
    assert np.abs(grads[labels != 255]).sum() > 0


def test_all_ignored_gives_zero_loss_and_zero_gradient():
    logits = jnp.ones((1, 2, 2, 3))
    labels = jnp.full((1, 2, 2), 255)
    assert float(mean_pixel_cross_entropy(logits, labels)) == 0.0
    np.testing.assert_array_equal(jax.grad(mean_pixel_cross_entropy)(logits, labels), 0)


def test_dice_is_zero_for_perfect_confident_prediction():
    labels = jnp.array([[0, 1], [2, 255]])
    logits = jax.nn.one_hot(jnp.where(labels == 255, 0, labels), 3) * 100.0
    assert float(soft_dice_loss(logits[None], labels[None])) == pytest.approx(0.0, abs=1e-4)
    wrong = jnp.roll(logits, 1, axis=-1)
    assert float(soft_dice_loss(wrong[None], labels[None])) > 0.5
