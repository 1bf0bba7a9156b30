"""Max pooling written as an explicit -inf pad + unpadded pool (the form ONNX converters
take) computes what the padded `reduce_window` form did: values, gradients, and the
compiled program."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models.layers import max_pool


def _padded_reduce_window(x, window, stride, padding, ceil_mode):
    """The form before: the padding (and Caffe's ceil-mode extra) inside the pool."""
    pads = []
    for size in x.shape[1:3]:
        extra = -(size + 2 * padding - window) % stride if ceil_mode else 0
        pads.append((padding, padding + extra))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pads)


CASES = [(3, 2, 1, False), (2, 2, 0, True), (3, 2, 0, True), (2, 2, 0, False)]


@pytest.mark.parametrize("window, stride, padding, ceil_mode", CASES)
def test_values_and_gradients_equal_the_padded_pool(window, stride, padding, ceil_mode):
    # Ties (repeated values) and negative maps: where a wrong -inf/0 pad or a different
    # tie rule would show.
    x = jnp.asarray(np.random.default_rng(0).integers(-4, 2, (2, 15, 13, 3)), jnp.float32)
    ours = jax.jit(lambda x: max_pool(x, window, stride, padding, ceil_mode))
    before = jax.jit(lambda x: _padded_reduce_window(x, window, stride, padding, ceil_mode))
    np.testing.assert_array_equal(ours(x), before(x))
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=ours(x).shape), jnp.float32)

    def grad(f):
        return jax.grad(lambda x: jnp.sum(f(x) * cotangent))(x)

    np.testing.assert_array_equal(grad(ours), grad(before))


def _instructions(compiled_text: str) -> list[str]:
    """The compiled HLO's instructions, without names and source locations."""
    lines = [line for line in compiled_text.splitlines() if " = " in line]
    lines = [re.sub(r", metadata=\{[^}]*\}", "", line) for line in lines]
    return [re.sub(r"%[\w.\-]+", "%v", line).strip() for line in lines]


def test_xla_compiles_both_forms_to_the_same_program():
    """XLA folds the -inf pad into the pool's window: nothing changes for speed."""
    x = jnp.ones((2, 32, 32, 8))

    def compiled(f):
        forward = jax.jit(f).lower(x).compile().as_text()
        backward = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))).lower(x).compile()
        return _instructions(forward), _instructions(backward.as_text())

    ours = compiled(lambda x: max_pool(x, 3, 2, 1))
    assert ours == compiled(lambda x: _padded_reduce_window(x, 3, 2, 1, False))
    assert not [line for line in ours[0] if " pad(" in line]  # folded into the window
