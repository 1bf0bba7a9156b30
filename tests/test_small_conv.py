"""small_conv.conv_general_dilated equals lax's (values, gradients) and avoids XLA:CPU's
slow convolutions: on tiny maps, depthwise, and kernel gradients."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export, lax

from jaxseg.models import get_model, small_conv
from jaxseg.models.conv_kernel_grad import kernel_gradient, kernel_outweighs_map, worth_it
from jaxseg.models.platforms import xla_options
from jaxseg.models.small_conv import SMALL_OUTPUT_PIXELS, Conv, conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")
# (input side, kernel, stride, padding, dilation): the small maps the models meet. ResNet's
# last stages on 64x64 images (2x2, stride-2 entry from 4x4, dilated stages), the 7x7/2
# stem on a tiny image, VGG's fc6 (7x7 on 9x9: 3x3 out), U-Net bottlenecks, 1x1 outputs.
CASES = [
    pytest.param(2, 3, 1, ((1, 1), (1, 1)), 1, id="2x2-3x3"),
    pytest.param(4, 3, 2, ((1, 1), (1, 1)), 1, id="4x4-3x3s2"),
    pytest.param(4, 3, 1, ((2, 2), (2, 2)), 2, id="4x4-3x3-dilated2"),
    pytest.param(3, 3, 1, "SAME", 1, id="3x3-same"),
    pytest.param(7, 7, 2, ((3, 3), (3, 3)), 1, id="7x7-7x7s2"),
    pytest.param(9, 7, 1, "VALID", 1, id="fc6-9x9-7x7"),
    pytest.param(1, 3, 1, ((1, 1), (1, 1)), 1, id="1x1-3x3"),
    pytest.param(5, 3, 2, ((0, 1), (1, 0)), 1, id="asymmetric-padding"),
]


def _inputs(side, kernel_size, in_features=6, out_features=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, side, side, in_features)).astype(np.float32)
    kernel = rng.normal(size=(kernel_size, kernel_size, in_features, out_features))
    return jnp.asarray(x), jnp.asarray(kernel.astype(np.float32))


def _both(stride, padding, dilation, feature_group_count=1):
    def options(x, kernel):
        numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC)
        return dict(
            window_strides=(stride, stride),
            padding=padding,
            rhs_dilation=(dilation, dilation),
            dimension_numbers=numbers,
            feature_group_count=feature_group_count,
        )

    def ours(x, kernel):
        return conv_general_dilated(x, kernel, **options(x, kernel))

    def reference(x, kernel):
        return lax.conv_general_dilated(x, kernel, **options(x, kernel))

    return ours, reference


def _values_and_grads(function, x, kernel, cotangent):
    def run(x, kernel):
        out, vjp = jax.vjp(function, x, kernel)
        return (out, *vjp(cotangent))

    return jax.jit(run)(x, kernel)


def _assert_same_values_and_grads(ours, reference, x, kernel, cotangent):
    """Output and both gradients equal to float32 rounding (relative to each one's size)."""
    got = _values_and_grads(ours, x, kernel, cotangent)
    want = _values_and_grads(reference, x, kernel, cotangent)
    for got_part, want_part in zip(got, want, strict=True):
        want_part = np.asarray(want_part)
        np.testing.assert_allclose(got_part, want_part, atol=1e-5 * np.abs(want_part).max())


def _convolutions(function, *args) -> list[str]:
    text = jax.jit(function).lower(*args).compile().as_text()
    return [line for line in text.splitlines() if " convolution(" in line]


@pytest.mark.parametrize("side, kernel_size, stride, padding, dilation", CASES)
def test_values_and_gradients_equal_lax(side, kernel_size, stride, padding, dilation):
    x, kernel = _inputs(side, kernel_size)
    ours, reference = _both(stride, padding, dilation)
    want_out = reference(x, kernel)
    assert want_out.shape[1] * want_out.shape[2] <= SMALL_OUTPUT_PIXELS
    cotangent = jnp.asarray(np.random.default_rng(1).normal(size=want_out.shape), jnp.float32)
    got = _values_and_grads(ours, x, kernel, cotangent)
    want = _values_and_grads(reference, x, kernel, cotangent)
    # The same products summed in another order: float32 rounding apart (measured <= 3e-7
    # of the largest value); a wrong tap or offset is off by the values' own size.
    for got_part, want_part in zip(got, want, strict=True):
        want_part = np.asarray(want_part)
        np.testing.assert_allclose(got_part, want_part, atol=1e-5 * np.abs(want_part).max())

    # ...and on CPU, none of it runs as an XLA convolution (what is slow there).
    def loss(x, kernel):
        return jnp.sum(jnp.sin(ours(x, kernel)))

    assert _convolutions(lambda x, k: jnp.sum(jnp.sin(reference(x, k))), x, kernel)
    assert not _convolutions(jax.value_and_grad(loss, (0, 1)), x, kernel)


def test_larger_maps_and_other_layouts_keep_xlas_convolution():
    x, kernel = _inputs(8, 3)  # 8x8 out: XLA's own lowering is the faster one there
    ours, _ = _both(1, "SAME", 1)
    assert _convolutions(ours, x, kernel)
    assert "platform_index" not in str(jax.make_jaxpr(ours)(x, kernel))
    nchw = jnp.transpose(_inputs(2, 3)[0], (0, 3, 1, 2))
    out = conv_general_dilated(
        nchw, jnp.transpose(kernel, (3, 2, 0, 1)), (1, 1), "SAME", dimension_numbers=None
    )
    assert out.shape == (2, 5, 2, 2)


def test_export_carries_both_forms():
    x, kernel = _inputs(2, 3)
    ours, reference = _both(1, "SAME", 1)
    exported = export.export(jax.jit(ours), platforms=("cpu", "cuda"))(x, kernel)
    module = exported.mlir_module()
    assert "stablehlo.convolution" in module and "dot_general" in module
    np.testing.assert_allclose(exported.call(x, kernel), reference(x, kernel), atol=1e-4)


def test_conv_keeps_flax_parameters():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(1, 2, 2, 3)), jnp.float32)
    reference = nn.Conv(4, (3, 3), name="conv")
    variables = reference.init(jax.random.key(0), x)
    ours = Conv(4, (3, 3), name="conv")
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, variables
    )
    np.testing.assert_allclose(ours.apply(variables, x), reference.apply(variables, x), atol=1e-5)


def test_resnet_on_small_images_runs_no_convolution_on_tiny_maps():
    # FCN-8s/ResNet-18 on 64x64: layer4 is 2x2, where XLA:CPU was 100x slower than a GEMM.
    model = get_model("fcn8s", num_classes=3, encoder="resnet18", upsample="transposed")
    x = jnp.zeros((1, 64, 64, 3))
    variables = model.init(jax.random.key(0), x)
    text = jax.jit(model.apply).lower(variables, x).compile().as_text()
    # (output height, width, window) of every convolution; 1x1 windows are plain GEMMs.
    found = re.findall(
        r"= f32\[1,(\d+),(\d+),\d+\]\S* convolution\(.*window=\{size=(\d+x\d+)", text
    )
    assert any(window != "1x1" for _, _, window in found)  # larger maps keep XLA's conv
    tiny = [c for c in found if int(c[0]) * int(c[1]) <= 4 and c[2] != "1x1"]
    assert not tiny, tiny


# (input height, width, stride, padding, dilation) of the depthwise convs the models use:
# SegFormer's Mix-FFN (3x3, "same"), DeepLabV3+'s separable ASPP at rates 6-36 (here on maps
# smaller than the rate, as on small images) and decoder, and a strided one.
DEPTHWISE_CASES = [
    pytest.param(6, 7, 1, ((1, 1), (1, 1)), 1, id="mix-ffn-3x3"),
    pytest.param(5, 6, 1, ((6, 6), (6, 6)), 6, id="aspp-rate6"),
    pytest.param(4, 5, 1, ((18, 18), (18, 18)), 18, id="aspp-rate18"),
    pytest.param(7, 6, 2, "SAME", 1, id="stride2-same"),
    pytest.param(9, 8, 1, ((0, 2), (2, 1)), 1, id="asymmetric-padding"),
    pytest.param(6, 7, 1, "VALID", 1, id="valid"),
    # Padded beyond the kernel's reach: the input gradient's padding is negative (a crop).
    pytest.param(5, 6, 1, ((3, 3), (3, 3)), 1, id="padded-beyond-reach"),
]


@pytest.mark.parametrize("height, width, stride, padding, dilation", DEPTHWISE_CASES)
def test_depthwise_values_and_gradients_equal_lax(height, width, stride, padding, dilation):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, height, width, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 5)), jnp.float32)
    ours, reference = _both(stride, padding, dilation, feature_group_count=5)
    want_out = reference(x, kernel)
    cotangent = jnp.asarray(rng.normal(size=want_out.shape), jnp.float32)
    _assert_same_values_and_grads(ours, reference, x, kernel, cotangent)

    def loss(x, kernel):
        return jnp.sum(jnp.sin(ours(x, kernel)))

    assert not _convolutions(jax.value_and_grad(loss, (0, 1)), x, kernel)  # none on CPU
    # A grouped conv that is not depthwise (2 channels a group) keeps XLA's convolution.
    grouped = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
    x4 = x[..., :4]
    numbers = lax.conv_dimension_numbers(x4.shape, grouped.shape, NHWC)
    assert _convolutions(
        lambda x, k: conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=numbers, feature_group_count=2
        ),
        x4,
        grouped,
    )


def _primitive_count(jaxpr, name: str) -> int:
    """How often primitive `name` occurs in a jaxpr, its sub-jaxprs (cond branches, custom
    rules) included."""
    count = 0
    for equation in jaxpr.eqns:
        count += equation.primitive.name == name
        for value in equation.params.values():
            for inner in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr's Jaxpr
                if hasattr(inner, "eqns"):
                    count += _primitive_count(inner, name)
    return count


def test_depthwise_input_gradient_pads_the_cotangent_once():
    """Autodiff of the 9 shifted views would pad each tap's cotangent to full size (9 pads,
    which XLA fused into a slow loop in SegFormer's step); the stride-1 form pads the
    cotangent once: 3 pads in all (the forward's input, the cotangent, the input again for
    the kernel gradient)."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, 6, 7, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 5)), jnp.float32)
    ours, _ = _both(1, ((1, 1), (1, 1)), 1, feature_group_count=5)

    def loss(x, kernel):
        return jnp.sum(jnp.sin(ours(x, kernel)))

    jaxpr = jax.make_jaxpr(jax.grad(loss, (0, 1)))(x, kernel).jaxpr
    assert _primitive_count(jaxpr, "pad") == 3


def _loops(jaxpr) -> int:
    """Loops in a jaxpr: a fori_loop with a fixed trip count is a scan, otherwise a while."""
    return _primitive_count(jaxpr, "scan") + _primitive_count(jaxpr, "while")


@pytest.mark.parametrize(
    "height, width, stride, padding, dilation",
    [case for case in DEPTHWISE_CASES if case.values[2] == 1],
)
def test_depthwise_kernel_gradient_image_by_image_equals_lax(
    height, width, stride, padding, dilation, monkeypatch
):
    """Above LOOP_MIN_ELEMENTS the kernel gradient is summed image by image (a loop over the
    batch); here the threshold is lowered so that these small batches take that form."""
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.normal(size=(3, height, width, 5)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 1, 5)), jnp.float32)
    ours, reference = _both(stride, padding, dilation, feature_group_count=5)
    cotangent = jnp.asarray(rng.normal(size=reference(x, kernel).shape), jnp.float32)

    def loops(threshold):
        monkeypatch.setattr(small_conv, "LOOP_MIN_ELEMENTS", threshold)
        vjp = jax.vjp(ours, x, kernel)[1]
        return _loops(jax.make_jaxpr(vjp)(cotangent).jaxpr)

    assert loops(threshold=x.size + 1) == 0
    assert loops(threshold=x.size) == 1  # the batch is large enough: one loop over it
    _assert_same_values_and_grads(ours, reference, x, kernel, cotangent)
    # bfloat16: both forms sum in float32; each is the float32 gradient of the same bfloat16
    # inputs to bfloat16 rounding of the products (relative to the largest tap).
    x16, kernel16, cotangent16 = (a.astype(jnp.bfloat16) for a in (x, kernel, cotangent))
    exact = jax.vjp(reference, *(a.astype(jnp.float32) for a in (x16, kernel16)))[1](
        cotangent16.astype(jnp.float32)
    )[1]
    for threshold in (x.size, x.size + 1):  # image by image, then the whole batch at once
        monkeypatch.setattr(small_conv, "LOOP_MIN_ELEMENTS", threshold)
        got = jax.vjp(ours, x16, kernel16)[1](cotangent16)[1]
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(
            np.asarray(got, np.float32), exact, atol=2e-2 * np.abs(exact).max()
        )


def test_depthwise_kernel_gradient_loops_over_images_only_for_large_batches():
    """The threshold on SegFormer-B0's Mix-FFN shapes (CamVid crops, batch 8): the three
    larger stages loop, the last (8x10x1024, 655,360 elements) does not; a single image
    never does."""
    sizes = {(8, 64, 80, 128): True, (8, 16, 20, 640): True, (8, 8, 10, 1024): False}
    sizes[(1, 256, 256, 128)] = False
    for shape, loops in sizes.items():
        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        kernel = jax.ShapeDtypeStruct((3, 3, 1, shape[-1]), jnp.float32)

        ours, _ = _both(1, ((1, 1), (1, 1)), 1, feature_group_count=shape[-1])

        def gradient(x, kernel, ours=ours):
            return jax.grad(lambda x, k: jnp.sum(ours(x, k)), (0, 1))(x, kernel)

        jaxpr = jax.make_jaxpr(gradient)(x, kernel).jaxpr
        assert (_loops(jaxpr) == 1) == loops, shape


def test_models_with_depthwise_convs_train_without_grouped_convolutions_on_cpu():
    """DeepLabV3+ (separable ASPP and decoder) and SegFormer (Mix-FFN): the compiled CPU
    train step has no grouped (depthwise) convolution left, the slow kind there."""
    for name, options in (
        ("deeplabv3plus", dict(encoder="resnet18")),
        ("segformer", dict(encoder="mit_b0")),
    ):
        model = get_model(name, num_classes=3, **options)
        x = jnp.zeros((1, 64, 64, 3))
        variables = model.init(jax.random.key(0), x)

        def loss(params, x, model=model, variables=variables):
            out = model.apply(
                {**variables, "params": params},
                x,
                train=True,
                mutable=True,
                rngs={"dropout": jax.random.key(1)},
            )[0]
            return jnp.sum(out)

        text = jax.jit(jax.grad(loss)).lower(variables["params"], x).compile().as_text()
        convolutions = [line for line in text.splitlines() if " convolution(" in line]
        assert convolutions, name  # the dense convs stay XLA's
        assert not [c for c in convolutions if "feature_group_count" in c], name


# (height, width, kernel, padding, dilation, in features) of stride-1 convolutions on maps
# larger than SMALL_OUTPUT_PIXELS with MIN_OUT_FEATURES outputs that take the GEMM kernel
# gradient (`worth_it`): 1x1 convs, and 3x3 ones padded beyond their kernel's reach on some
# side (FCN's 100-pixel first layer), RGB or wider, uneven, dilated.
KERNEL_GRAD_CASES = [
    pytest.param(7, 9, (1, 1), "VALID", 1, 64, id="1x1"),
    pytest.param(6, 5, (1, 1), "VALID", 1, 3, id="1x1-rgb"),
    pytest.param(9, 8, (3, 3), ((4, 4), (4, 4)), 1, 3, id="rgb-padded-beyond"),
    pytest.param(8, 9, (3, 3), ((3, 0), (1, 1)), 1, 16, id="uneven-padded-beyond-on-top"),
    pytest.param(8, 7, (3, 3), ((5, 5), (5, 5)), 2, 32, id="dilated2-padded-beyond"),
]
# Shapes only `kernel_gradient` itself meets (the conv keeps XLA's form for them): U-Net's
# 3x3 "same" and "valid", DeepLab's dilated 3x3, a 1x3, VGG's fc6 (7x7, valid) and a 5x5
# kernel at dilation 3.
LARGE_KERNEL_CASES = [
    pytest.param(9, 11, (3, 3), "SAME", 1, 32, id="3x3-same"),
    pytest.param(10, 9, (3, 3), "VALID", 1, 16, id="3x3-valid"),
    pytest.param(12, 10, (3, 3), ((2, 2), (2, 2)), 2, 16, id="3x3-dilated2"),
    pytest.param(8, 9, (3, 3), ((0, 1), (2, 0)), 1, 16, id="uneven-padding"),
    pytest.param(7, 9, (1, 3), ((0, 0), (1, 1)), 1, 16, id="1x3"),
    pytest.param(13, 12, (7, 7), "VALID", 1, 16, id="fc6-7x7-valid"),
    pytest.param(9, 8, (5, 5), ((6, 6), (6, 6)), 3, 16, id="5x5-dilated3"),
]


def _kernel_grad_inputs(height, width, kernel_size, padding, dilation, in_features):
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(2, height, width, in_features)), jnp.float32)
    kernel = rng.normal(size=(*kernel_size, in_features, 32)).astype(np.float32)
    ours, reference = _both(1, padding, dilation)
    out_shape = jax.eval_shape(reference, x, kernel).shape
    cotangent = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    if isinstance(padding, str):
        effective = [(k - 1) * dilation + 1 for k in kernel_size]
        padding = lax.padtype_to_pads(x.shape[1:3], effective, (1, 1), padding)
    pads = tuple(tuple(p) for p in padding)
    return x, jnp.asarray(kernel), cotangent, pads, ours, reference


@pytest.mark.parametrize(
    "height, width, kernel_size, padding, dilation, in_features",
    KERNEL_GRAD_CASES + LARGE_KERNEL_CASES,
)
def test_kernel_gradient_alone_equals_lax(
    height, width, kernel_size, padding, dilation, in_features
):
    x, kernel, cotangent, pads, _, reference = _kernel_grad_inputs(
        height, width, kernel_size, padding, dilation, in_features
    )
    want = jax.vjp(lambda k: reference(x, k), kernel)[1](cotangent)[0]
    got = jax.jit(kernel_gradient, static_argnums=(2, 3, 4))(
        x, cotangent, kernel.shape, pads, (dilation, dilation)
    )
    # The same products summed in another order: float32 rounding apart; a wrong shift is
    # off by the values' own size.
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(np.asarray(want)).max())


@pytest.mark.parametrize(
    "height, width, kernel_size, padding, dilation, in_features", KERNEL_GRAD_CASES
)
def test_conv_with_gemm_kernel_gradient_equals_lax(
    height, width, kernel_size, padding, dilation, in_features
):
    x, kernel, cotangent, _, ours, reference = _kernel_grad_inputs(
        height, width, kernel_size, padding, dilation, in_features
    )
    assert cotangent.shape[1] * cotangent.shape[2] > SMALL_OUTPUT_PIXELS
    _assert_same_values_and_grads(ours, reference, x, kernel, cotangent)

    # On CPU the forward and input-gradient convolutions stay XLA's; the kernel gradient,
    # which XLA runs as a convolution whose window is the whole map, is a dot.
    def windows(conv):
        def loss(x, kernel):
            return jnp.sum(jnp.sin(conv(x, kernel)))

        text = jax.jit(jax.grad(loss, (0, 1))).lower(x, kernel).compile().as_text()
        return set(re.findall(r" convolution\(.*window=\{size=(\d+x\d+)", text))

    kernel_window = "x".join(map(str, kernel_size))
    assert windows(reference) - {kernel_window}  # XLA's kernel gradient
    if kernel_size == (1, 1):
        assert windows(ours) <= {kernel_window}  # XLA may run a 1x1 one as a dot
    else:
        assert windows(ours) == {kernel_window}


def test_gemm_kernel_gradient_only_where_it_pays():
    """3x3 "same", few outputs, large kernels, strides: XLA's convolution throughout."""
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 16, 16, 16)), jnp.float32)
    same = ((1, 1), (1, 1))
    for kernel_shape, stride in (
        ((3, 3, 16, 32), 1),
        ((1, 1, 16, 16), 1),
        ((7, 7, 16, 32), 1),
        ((1, 1, 16, 32), 2),
    ):
        pads = same if kernel_shape[0] == 3 else ((0, 0), (0, 0))
        assert not (worth_it(kernel_shape, pads, (1, 1)) and stride == 1)
        ours, _ = _both(stride, "SAME", 1)
        jaxpr = str(jax.make_jaxpr(ours)(x, jnp.zeros(kernel_shape, jnp.float32)))
        assert "platform_index" not in jaxpr, kernel_shape
    # Padded as far as the kernel reaches, and one pixel less (dilated 2: reach 5).
    assert worth_it((3, 3, 16, 32), ((0, 0), (3, 0)), (1, 1))
    assert not worth_it((3, 3, 16, 32), ((2, 2), (2, 2)), (1, 1))
    assert worth_it((3, 3, 16, 32), ((5, 0), (0, 0)), (2, 2))
    assert not worth_it((3, 3, 16, 32), ((4, 4), (4, 4)), (2, 2))
    kernel = jnp.zeros((1, 1, 16, 32), jnp.float32)
    assert worth_it(kernel.shape, ((0, 0), (0, 0)), (1, 1))
    ours, reference = _both(1, "SAME", 1)
    assert "platform_index" in str(jax.make_jaxpr(ours)(x, kernel))
    # An export carries both forms; the other platforms get XLA's.
    exported = export.export(jax.jit(ours), platforms=("cpu", "cuda"))(x, kernel)
    assert "stablehlo.convolution" in exported.mlir_module()
    np.testing.assert_allclose(exported.call(x, kernel), reference(x, kernel), atol=1e-5)


def test_bfloat16_kernel_gradient_stays_in_bfloat16():
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, 9, 9, 16)), jnp.bfloat16)
    kernel = jnp.asarray(rng.normal(size=(1, 1, 16, 32)), jnp.bfloat16)
    ours, reference = _both(1, "SAME", 1)
    got = jax.grad(lambda k: jnp.sum(ours(x, k).astype(jnp.float32)))(kernel)
    want = jax.grad(lambda k: jnp.sum(reference(x, k).astype(jnp.float32)))(kernel)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=0.05, atol=0.5
    )


# (height, width, kernel, padding, dilation, in features) of stride-1 convolutions, batch 1
# with 64 outputs, whose output has more than SMALL_OUTPUT_PIXELS and at most 64 positions:
# the kernel outweighs the map, so both gradients are GEMMs (`kernel_outweighs_map`).
INPUT_GEMM_CASES = [
    pytest.param(5, 6, (3, 3), "SAME", 1, 16, id="3x3-same"),
    pytest.param(7, 8, (3, 3), "VALID", 1, 16, id="3x3-valid"),
    pytest.param(6, 7, (3, 3), ((2, 2), (2, 2)), 2, 8, id="3x3-dilated2"),
    pytest.param(6, 7, (3, 3), ((0, 1), (2, 0)), 1, 16, id="uneven-padding"),
    pytest.param(2, 2, (3, 3), ((3, 3), (3, 3)), 1, 3, id="rgb-padded-beyond"),
    pytest.param(5, 8, (1, 1), "VALID", 1, 16, id="1x1"),
    pytest.param(5, 7, (1, 3), ((0, 0), (1, 1)), 1, 16, id="1x3"),
]


@pytest.mark.parametrize(
    "height, width, kernel_size, padding, dilation, in_features", INPUT_GEMM_CASES
)
def test_conv_with_gemm_gradients_equals_lax(
    height, width, kernel_size, padding, dilation, in_features
):
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(1, height, width, in_features)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(*kernel_size, in_features, 64)), jnp.float32)
    ours, reference = _both(1, padding, dilation)
    out_shape = jax.eval_shape(reference, x, kernel).shape
    assert SMALL_OUTPUT_PIXELS < out_shape[1] * out_shape[2] <= 64
    assert kernel_outweighs_map(kernel.shape, out_shape)
    cotangent = jnp.asarray(rng.normal(size=out_shape), jnp.float32)
    _assert_same_values_and_grads(ours, reference, x, kernel, cotangent)

    # On CPU only the forward convolution is left: XLA's input gradient (a convolution over
    # the kernel with its channels swapped) and kernel gradient are dots.
    def loss(conv):
        return jax.grad(lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel))), (0, 1))

    compiled = jax.jit(loss(ours), compiler_options=xla_options()).lower(x, kernel).compile()
    assert len(re.findall(r" convolution\(", compiled.as_text())) <= 1
    assert len(_convolutions(loss(reference), x, kernel)) >= 2


def test_gemm_input_gradient_only_where_the_kernel_outweighs_the_map():
    assert kernel_outweighs_map((3, 3, 512, 1024), (4, 8, 8, 1024))  # the paper U-Net's bottom
    assert kernel_outweighs_map((3, 3, 16, 64), (1, 8, 8, 64))  # as many outputs as positions
    assert not kernel_outweighs_map((3, 3, 16, 64), (1, 8, 9, 64))
    assert not kernel_outweighs_map((3, 3, 512, 512), (4, 16, 16, 512))  # its level above
    assert not kernel_outweighs_map((5, 5, 16, 64), (1, 4, 5, 64))  # more taps than 3x3
    # A symbolic batch (an export for any batch size) cannot be compared: XLA's form.
    assert not kernel_outweighs_map((3, 3, 16, 64), export.symbolic_shape("b, 8, 8, 64"))
    # Through the conv: the 8x9 map keeps XLA's form throughout (3x3 "same": no GEMM).
    ours, _ = _both(1, "SAME", 1)
    kernel = jnp.zeros((3, 3, 16, 64), jnp.float32)
    assert "platform_index" in str(jax.make_jaxpr(ours)(jnp.zeros((1, 8, 8, 16)), kernel))
    assert "platform_index" not in str(jax.make_jaxpr(ours)(jnp.zeros((1, 8, 9, 16)), kernel))
