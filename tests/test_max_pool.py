"""Max pooling written as an explicit -inf pad + unpadded pool (the form ONNX converters
take) computes what the padded `reduce_window` form did: values, gradients, and the
compiled program; on CPU the pool's gradient is a mask (jaxseg/models/pool_grad.py) equal to
XLA's (bitwise where the windows tile the map, to float rounding where they overlap)."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxseg.models.layers import max_pool
from jaxseg.models.platforms import plain_lax_forms, xla_options
from jaxseg.models.pool_grad import masked_max_pool, tiling_max_pool


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

    if window == stride:  # each position in one window: the same single term
        np.testing.assert_array_equal(grad(ours), grad(before))
    else:  # a position in several windows adds their gradients in another order
        np.testing.assert_allclose(grad(ours), grad(before), rtol=1e-6, atol=1e-6)


def _instructions(compiled_text: str) -> list[str]:
    """The compiled HLO's instructions, without names and source locations."""
    lines = [line for line in compiled_text.splitlines() if " = " in line]
    lines = [re.sub(r", metadata=\{[^}]*\}", "", line) for line in lines]
    return [re.sub(r"%[\w.\-]+", "%v", line).strip() for line in lines]


def test_xla_compiles_both_forms_to_the_same_program():
    """XLA folds the -inf pad into the pool's window: nothing changes for speed (the plain
    lax forms, as GPUs and TPUs run them)."""
    x = jnp.ones((2, 32, 32, 8))

    def compiled(f):
        forward = jax.jit(f).lower(x).compile().as_text()
        backward = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))).lower(x).compile()
        return _instructions(forward), _instructions(backward.as_text())

    with plain_lax_forms():
        ours = compiled(lambda x: max_pool(x, 3, 2, 1))
    assert ours == compiled(lambda x: _padded_reduce_window(x, 3, 2, 1, False))
    assert not [line for line in ours[0] if " pad(" in line]  # folded into the window


# ---------------------------------------------------------------- windows that tile the map


TILING_CASES = [
    ((2, 8, 8, 3), 2, jnp.float32),
    ((3, 12, 6, 5), 3, jnp.float32),
    ((2, 8, 10, 4), 2, jnp.bfloat16),
]


@pytest.mark.parametrize("shape, window, dtype", TILING_CASES)
@pytest.mark.parametrize("jit", [True, False])
def test_tiling_pool_values_and_gradients_equal_reduce_window(shape, window, dtype, jit):
    # Integers in [-2, 2]: most windows hold their maximum twice or more (ReLU's zeros do
    # the same), where a different tie rule would send the gradient elsewhere.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(-2, 3, shape), dtype)
    ours = lambda x: tiling_max_pool(x, window)  # noqa: E731
    reference = lambda x: nn.max_pool(x, (window, window), (window, window))  # noqa: E731
    if jit:
        ours, reference = jax.jit(ours), jax.jit(reference)
    got, got_vjp = jax.vjp(ours, x)
    want, want_vjp = jax.vjp(reference, x)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_array_equal(np.float32(got), np.float32(want))
    cotangent = jnp.asarray(rng.normal(size=want.shape), dtype)
    (got_grad,), (want_grad,) = got_vjp(cotangent), want_vjp(cotangent)
    assert got_grad.dtype == dtype
    np.testing.assert_array_equal(np.float32(got_grad), np.float32(want_grad))
    # Every window passes its gradient to exactly one position.
    assert int(jnp.sum(got_grad != 0)) == int(jnp.sum(cotangent != 0))


def test_max_pool_takes_the_masked_form():
    def jaxpr(*args):
        return str(jax.make_jaxpr(lambda x: max_pool(x, *args))(jnp.ones((1, 15, 13, 2))))

    assert "platform_index" in jaxpr(2, 2, 0, True)  # VGG's ceil-mode pool: 16x14 after the pad
    assert "platform_index" in jaxpr(2, 2)  # 15x13: the last row and column are left out
    assert "platform_index" in jaxpr(3, 2, 1)  # ResNet's overlapping windows
    with plain_lax_forms():
        assert "platform_index" not in jaxpr(2, 2, 0, True)


# ---------------------------------------------------------------- windows that overlap

# (shape, window, stride): ResNet's stem pool (3x3/2), stride 1, windows with gaps between
# them, and a map the windows do not reach the end of.
OVERLAPPING_CASES = [
    ((2, 9, 11, 3), 3, 2, jnp.float32),
    ((2, 7, 6, 4), 3, 1, jnp.float32),
    ((1, 10, 9, 2), 2, 3, jnp.float32),
    ((2, 12, 10, 3), 3, 2, jnp.bfloat16),
]


@pytest.mark.parametrize("shape, window, stride, dtype", OVERLAPPING_CASES)
def test_overlapping_pool_values_and_gradients_equal_reduce_window(shape, window, stride, dtype):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.integers(-2, 3, shape), dtype)  # ties in most windows
    reference = lambda x: nn.max_pool(x, (window, window), (stride, stride))  # noqa: E731
    got, got_vjp = jax.vjp(jax.jit(lambda x: masked_max_pool(x, window, stride)), x)
    want, want_vjp = jax.vjp(jax.jit(reference), x)
    np.testing.assert_array_equal(np.float32(got), np.float32(want))
    cotangent = jnp.asarray(rng.normal(size=want.shape), dtype)
    (got_grad,), (want_grad,) = got_vjp(cotangent), want_vjp(cotangent)
    assert got_grad.dtype == dtype
    # Same positions; a position in several windows sums their gradients in another order.
    np.testing.assert_array_equal(got_grad != 0, want_grad != 0)
    tolerance = 1e-6 if dtype == jnp.float32 else 2e-2
    np.testing.assert_allclose(
        np.float32(got_grad), np.float32(want_grad), rtol=tolerance, atol=tolerance
    )


def _compiled_gradient(f, x) -> str:
    loss = jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))
    return jax.jit(loss, compiler_options=xla_options()).lower(x).compile().as_text()


@pytest.mark.parametrize("window, stride", [(2, 2), (3, 2)])  # U-Net's, VGG's; ResNet's
def test_cpu_gradient_has_no_select_and_scatter(window, stride):
    """What the form is for: XLA:CPU expands select-and-scatter into an argmax carrying
    int32 iotas and a scatter; the mask has neither."""
    x = jnp.ones((2, 16, 16, 8))
    plain = _compiled_gradient(lambda x: nn.max_pool(x, (window,) * 2, (stride,) * 2), x)
    ours = _compiled_gradient(lambda x: masked_max_pool(x, window, stride), x)
    assert "scatter(" in plain or "select-and-scatter(" in plain
    assert "scatter(" not in ours and "select-and-scatter(" not in ours
    assert " iota(" not in ours


def test_export_carries_both_forms():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 8, 8, 2)), jnp.float32)
    exported = export.export(jax.jit(lambda x: tiling_max_pool(x, 2)), platforms=("cpu", "cuda"))(x)
    assert "reduce_window" in exported.mlir_module()
    np.testing.assert_array_equal(exported.call(x), nn.max_pool(x, (2, 2), (2, 2)))


def test_tiling_pool_refuses_a_map_it_does_not_tile():
    with pytest.raises(ValueError, match="does not tile into 2x2 windows"):
        tiling_max_pool(jnp.ones((1, 5, 4, 1)), 2)
