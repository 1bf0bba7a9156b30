"""conv_transpose equals jax.lax.conv_transpose (values, gradients) and avoids its CPU lowering."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxseg.models.conv_transpose import conv_transpose, has_subpixel_form
from jaxseg.models.upsample import TransposedConvUpsample

DILATED_WINDOW = re.compile(r"window=\{[^}]*\b(lhs|rhs)_dilate=")
# (kernel, stride, padding, input (H, W)): every configuration the models use.
MODEL_CASES = [
    pytest.param(2, 2, 0, (8, 8), id="unet-2x2s2"),
    pytest.param(4, 2, 1, (6, 6), id="fcn-same-4x4s2"),
    pytest.param(16, 8, 4, (4, 4), id="fcn-same-16x16s8"),
    pytest.param(64, 32, 16, (2, 2), id="fcn-same-64x64s32"),
    pytest.param(4, 2, 0, (5, 7), id="fcn-caffe-4x4s2-odd"),
    pytest.param(4, 2, 0, (6, 6), id="fcn-caffe-4x4s2"),
    pytest.param(16, 8, 0, (7, 3), id="fcn-caffe-16x16s8-odd"),
    pytest.param(64, 32, 0, (3, 5), id="fcn-caffe-64x64s32-odd"),
    pytest.param(64, 32, 0, (2, 2), id="fcn-caffe-64x64s32"),
]
# Taken by neither model: other multiples of the stride, and shapes left to lax.
OTHER_CASES = [
    pytest.param(6, 2, 2, (5, 4), id="3-taps"),
    pytest.param(6, 3, 0, (4, 5), id="odd-stride"),
    pytest.param(3, 2, 1, (5, 5), id="fallback-3x3s2"),
    pytest.param(4, 2, 4, (5, 5), id="fallback-padding-k"),
]


def _reference(x, kernel, stride, padding):
    pad = kernel.shape[0] - 1 - padding
    return jax.lax.conv_transpose(
        x,
        kernel,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


# Tolerance. The rewrite sums the same products as lax in another order (one GEMM over
# shifted copies of the input instead of an input-dilated conv, whose zero taps add exact
# zeros), so the two differ only by float32 rounding (2^-24 = 6e-8 per operation). An
# output sums C * (k / s)^2 products, an input gradient O * k^2 (up to 16384 here), a kernel
# gradient N * H * W; the measured differences are 1e-7 to 1e-6 of max |reference| (the
# largest, 1.0e-6, for the 64x64/32 input gradient). So every comparison allows
# 1e-5 * max |reference| (and rtol 1e-5): 10x the worst seen, while a wrong tap, flip or
# crop offset gives errors of the order of the values themselves.
def _assert_close(got, want):
    want = np.asarray(want)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def _values_and_grads(function, x, kernel, cotangent):
    def run(x, kernel):
        out, vjp = jax.vjp(function, x, kernel)
        return (out, *vjp(cotangent))

    return jax.jit(run)(x, kernel)


def _inputs(kernel_size, size, in_features=5, out_features=4, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *size, in_features)).astype(np.float32)
    kernel = rng.normal(size=(kernel_size, kernel_size, in_features, out_features))
    return jnp.asarray(x), jnp.asarray(kernel.astype(np.float32))


@pytest.mark.parametrize("kernel_size, stride, padding, size", MODEL_CASES + OTHER_CASES)
def test_values_and_gradients_equal_lax(kernel_size, stride, padding, size):
    x, kernel = _inputs(kernel_size, size)
    want_out = _reference(x, kernel, stride, padding)
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=want_out.shape), jnp.float32)
    want = _values_and_grads(lambda x, k: _reference(x, k, stride, padding), x, kernel, cotangent)
    got = _values_and_grads(
        lambda x, k: conv_transpose(x, k, stride, padding), x, kernel, cotangent
    )
    assert got[0].shape == (
        2,
        (size[0] - 1) * stride + kernel_size - 2 * padding,
        (size[1] - 1) * stride + kernel_size - 2 * padding,
        4,
    )
    for got_part, want_part in zip(got, want):
        assert got_part.shape == want_part.shape
        _assert_close(got_part, want_part)


def _dilated_convolutions(function, *args) -> list[str]:
    """Compiled CPU HLO convolutions with a dilated input or kernel window.

    lax's transposed conv (and its gradients) are such convolutions; XLA may swap the
    operands of the forward one, so it shows up as either lhs_dilate or rhs_dilate.
    """
    text = jax.jit(function).lower(*args).compile().as_text()
    return [line for line in text.splitlines() if DILATED_WINDOW.search(line)]


@pytest.mark.parametrize("kernel_size, stride, padding, size", MODEL_CASES)
def test_cpu_lowering_has_no_input_dilated_convolution(kernel_size, stride, padding, size):
    assert has_subpixel_form(kernel_size, stride, padding)
    x, kernel = _inputs(kernel_size, size)

    def loss(x, kernel):
        return jnp.sum(jnp.sin(conv_transpose(x, kernel, stride, padding)))

    def reference_loss(x, kernel):
        return jnp.sum(jnp.sin(_reference(x, kernel, stride, padding)))

    # The check means something: lax's own form compiles to dilated convolutions on CPU.
    assert _dilated_convolutions(jax.value_and_grad(reference_loss, (0, 1)), x, kernel)
    dilated = _dilated_convolutions(jax.value_and_grad(loss, (0, 1)), x, kernel)
    assert not dilated, dilated


def test_export_carries_both_forms_and_runs_the_cpu_one():
    x, kernel = _inputs(4, (5, 6))

    def upsample(x, kernel):
        return conv_transpose(x, kernel, 2, 1)

    exported = export.export(jax.jit(upsample), platforms=("cpu", "cuda"))(x, kernel)
    module = exported.mlir_module()
    assert "lhs_dilate" in module  # the default (GPU) branch: XLA's own transposed conv
    # The CPU branch: one GEMM from 2x2 taps x 5 channels to 2x2 sub-pixels x 4 channels.
    assert "dot_general" in module and "tensor<20x16xf32>" in module
    _assert_close(exported.call(x, kernel), _reference(x, kernel, 2, 1))


@pytest.mark.parametrize(
    "options, size",
    [
        (dict(factor=2, features=6, kernel_size=2, bilinear_init=False, use_bias=True), (4, 4)),
        (dict(factor=8), (3, 3)),
        (dict(factor=32, padding=0), (3, 2)),
    ],
)
def test_upsampler_computes_the_lax_transposed_conv(options, size):
    module = TransposedConvUpsample(**options)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, *size, 3)), jnp.float32)
    variables = module.init(jax.random.key(0), x)
    params = jax.tree.map(
        lambda p: p + jax.random.normal(jax.random.key(1), p.shape), variables["params"]
    )
    kernel = params["kernel"]
    size_k, factor = kernel.shape[0], options["factor"]
    padding = options.get("padding", (size_k - factor) // 2)
    want = _reference(x, kernel, factor, padding) + params.get("bias", 0.0)
    _assert_close(jax.jit(module.apply)({"params": params}, x), want)


def test_non_square_kernel_is_an_error():
    with pytest.raises(ValueError, match="square HWIO kernel"):
        conv_transpose(jnp.zeros((1, 2, 2, 1)), jnp.zeros((2, 3, 1, 1)), 2, 0)
