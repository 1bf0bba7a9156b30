"""Flax NNX users can use jaxseg's (Linen) models through `flax.nnx.bridge.ToNNX`.

The wrapped model has the Linen model's variables (params as `nnx.Param`, batch
statistics as `nnx.BatchStat`, in one tree under the Linen module names), gives the same
logits, and trains with `nnx.value_and_grad` + `nnx.Optimizer` exactly as the Linen model
does with `jax.value_and_grad` + optax. In train mode the Linen batch norms write their
batch statistics, so the call must name that collection mutable:
`model(x, train=True, mutable=["batch_stats"])`; the bridge then stores the new
statistics on the NNX module (inside `nnx.jit` and `nnx.value_and_grad` too).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import jaxseg

NUM_CLASSES = 3
LEARNING_RATE = 1e-3


def _tiny_unet(**options):
    return jaxseg.get_model("unet", num_classes=NUM_CLASSES, base_features=4, depth=2, **options)


@pytest.fixture(scope="module")
def batch():
    images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    labels = jax.random.randint(jax.random.key(2), (2, 32, 32), 0, NUM_CLASSES)
    return images, labels


def _wrap(linen_model, images):
    """What an NNX user writes: wrap, then initialise from a sample input."""
    return nnx.bridge.ToNNX(linen_model, rngs=nnx.Rngs(0)).lazy_init(images)


def _load_linen_variables(model, variables):
    """Copies Linen variables ({"params": ..., "batch_stats": ...}) into the wrapped model."""
    params = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(params, variables["params"])
    states = [params]
    if "batch_stats" in variables:
        stats = nnx.state(model, nnx.BatchStat)
        nnx.replace_by_pure_dict(stats, variables["batch_stats"])
        states.append(stats)
    nnx.update(model, *states)


def _shapes(tree):
    return jax.tree.map(jnp.shape, tree)


@nnx.jit
def train_step(model, optimizer, images, labels):
    def loss_fn(model):
        logits = model(images, train=True, mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@pytest.mark.parametrize("use_batch_norm", [True, False], ids=["batch_norm", "no_batch_norm"])
def test_bridge_init_and_apply_match_linen(batch, use_batch_norm):
    images, _ = batch
    linen_model = _tiny_unet(use_batch_norm=use_batch_norm)
    variables = linen_model.init(jax.random.key(0), images)
    model = _wrap(linen_model, images)

    # Same variable tree (paths and shapes) as Linen's init, by collection.
    assert _shapes(nnx.to_pure_dict(nnx.state(model, nnx.Param))) == _shapes(variables["params"])
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    if use_batch_norm:
        assert _shapes(stats) == _shapes(variables["batch_stats"])
    else:
        assert "batch_stats" not in variables and stats == {}

    # With the Linen variables copied in, the NNX call gives Linen's logits.
    _load_linen_variables(model, variables)
    logits = model(images)
    expected = linen_model.apply(variables, images)
    assert logits.shape == expected.shape == (2, 32, 32, NUM_CLASSES)
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-6)


def test_bridge_train_step_matches_linen(batch):
    images, labels = batch
    linen_model = _tiny_unet()
    variables = linen_model.init(jax.random.key(0), images)
    model = _wrap(linen_model, images)
    _load_linen_variables(model, variables)
    optimizer = nnx.Optimizer(model, optax.adamw(LEARNING_RATE), wrt=nnx.Param)

    loss = train_step(model, optimizer, images, labels)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

    assert np.isfinite(loss)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), params, variables["params"])
    assert all(jax.tree.leaves(changed)), changed
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), stats, variables["batch_stats"])
    assert all(jax.tree.leaves(changed)), changed
    assert int(optimizer.step[...]) == 1

    # The same step in Linen + optax gives the same loss, parameters and statistics.
    @jax.jit
    def linen_step(variables):
        def loss_fn(params):
            logits, updates = linen_model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        tx = optax.adamw(LEARNING_RATE)
        steps, _ = tx.update(grads, tx.init(variables["params"]), variables["params"])
        return loss, optax.apply_updates(variables["params"], steps), updates["batch_stats"]

    linen_loss, linen_params, linen_stats = linen_step(variables)
    np.testing.assert_allclose(loss, linen_loss, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), params, linen_params
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6), stats, linen_stats
    )

    # A second step runs on the updated state.
    assert np.isfinite(train_step(model, optimizer, images, labels))
    assert int(optimizer.step[...]) == 2


def test_bridge_train_mode_needs_mutable_batch_stats(batch):
    """Without `mutable=["batch_stats"]` a train-mode call fails as Linen's apply does."""
    images, _ = batch
    model = _wrap(_tiny_unet(), images)
    with pytest.raises(Exception, match="batch_stats"):
        model(images, train=True)
