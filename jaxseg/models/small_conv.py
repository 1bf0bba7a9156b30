"""Convolution equal to `jax.lax.conv_general_dilated`, run on CPU as one GEMM on tiny maps,
as shifted multiply-adds when depthwise, and with a GEMM kernel gradient elsewhere.

Why: XLA:CPU runs a 3x3 convolution whose output is only a few pixels across (a ResNet's
last stage on 64x64 images works on 2x2 maps) at a small fraction of its speed elsewhere.
Measured on this project's 2-core machine, 3x3 "same" convolutions, batch 16, forward /
forward+backward: 2x2x512 -> 512 442 / 890 ms as XLA lowers it, 3.0 / 7.7 ms as im2col + one
matmul; 2x2x256 16 / 34 vs 0.8 / 2.0 ms; 1x1x512 8.6 / 15.6 vs 1.5 / 4.1 ms; 4x4x512 19 / 38
vs 13 / 36 ms; from 8x8 on XLA's own lowering is the faster one. So a convolution whose
output has at most SMALL_OUTPUT_PIXELS pixels is computed, on CPU only, as the same sums:
the k*k shifted (strided, dilated) views of the padded input concatenated on the channel
axis and multiplied by the kernel reshaped to (k*k*C, O). Elsewhere, and for larger maps,
XLA's lowering is kept; `jax.lax.platform_dependent` puts both forms in the traced
function, so an exported model carries the right one for each platform (as
conv_transpose.py does for transposed convolutions).

Depthwise convolutions (one kernel per channel: DeepLabV3+'s separable convs, SegFormer's
Mix-FFN) are slower still on XLA:CPU, which has no fast kernel for grouped convolutions:
measured on this machine, forward+backward of a 3x3 depthwise conv, batch 8, 64x80x256:
26.4 s as XLA lowers it, 2.4 s as the sum of the 9 shifted views times their per-channel
taps (16x20x512 at rate 6 / 12: 2.9 / 3.7 s against 0.67 / 0.49 s; medians of 5, a busy
machine, so the ratios are what counts). On CPU only, the same way. At stride 1 the input
gradient is written out as well (`_depthwise_stride1`): autodiff of the views pads each
tap's cotangent to full size and adds them, and in SegFormer's train step XLA fused that sum
with a transpose into a loop of 9 strided reads per element that took 1.07 s of the step's
3.1 s (XLA's profile; CamVid crops, batch 8). Written as one padded cotangent against the
turned kernel, SegFormer-B0's step on those crops is 1.65x faster and DeepLabV3+'s 1.05x
(paired in one process, same weights and batch; README, "Performance"). Their kernel
gradient, nine per-tap sums over the batch, runs image by image on large batches
(`_depthwise_kernel_gradient`: 1.03-1.06x more on those steps).

Stride-1 convolutions on larger maps keep XLA's convolutions, except the kernel gradient of
1x1 ones and of ones padded beyond their kernel (FCN's first layer), which is one GEMM on CPU,
and both gradients of ones whose kernel outweighs their map (the U-Net's 8x8 bottom level,
FCN's fc7), GEMMs too (conv_kernel_grad.py).

`conv_general_dilated` has lax's signature, so `nn.Conv(..., conv_general_dilated=...)`
(`Conv` below) uses it with the same parameters, names and initialisation.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.models import onednn_conv
from jaxseg.models.conv_kernel_grad import conv_gemm_gradients, kernel_outweighs_map, worth_it
from jaxseg.models.platforms import per_platform

SMALL_OUTPUT_PIXELS = 16  # 4x4: im2col is faster up to here on XLA:CPU (module docstring)
LOOP_MIN_ELEMENTS = 2**20  # a depthwise kernel gradient this large is summed image by image


def _nhwc(dimension_numbers) -> bool:
    """Whether the dimension numbers are NHWC / HWIO / NHWC (what flax's Conv passes)."""
    if dimension_numbers is None:
        return False
    numbers = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), dimension_numbers)
    return (
        tuple(numbers.lhs_spec) == (0, 3, 1, 2)
        and tuple(numbers.rhs_spec) == (3, 2, 0, 1)
        and tuple(numbers.out_spec) == (0, 3, 1, 2)
    )


def _shifted_views(x, kernel_size, strides, pads, dilation) -> list:
    """The kernel's taps as views of the padded input, tap-major: view (i, j) holds the
    input pixel that tap (i, j) meets at each output position."""
    (kh, kw), (sh, sw), (dh, dw) = kernel_size, strides, dilation
    # lax.pad: a negative pad crops (a depthwise input gradient can need one).
    zero = jnp.zeros((), x.dtype)
    x = lax.pad(x, zero, ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
    out_h = (x.shape[1] - dh * (kh - 1) - 1) // sh + 1
    out_w = (x.shape[2] - dw * (kw - 1) - 1) // sw + 1
    return [
        x[
            :,
            i * dh : i * dh + sh * (out_h - 1) + 1 : sh,
            j * dw : j * dw + sw * (out_w - 1) + 1 : sw,
        ]
        for i in range(kh)
        for j in range(kw)
    ]


def _im2col_conv(x, kernel, strides, pads, dilation, precision=None):
    """The convolution as one matmul: shifted views of the padded input against the kernel."""
    views = _shifted_views(x, kernel.shape[:2], strides, pads, dilation)
    columns = jnp.concatenate(views, axis=-1)  # (N, out_h, out_w, kh * kw * C), tap-major
    # HWIO flattens tap-major too: row (i, j, c) meets column block (i, j), channel c.
    return jnp.matmul(columns, kernel.reshape(-1, kernel.shape[-1]), precision=precision)


def _depthwise_sum(x, kernel, strides, pads, dilation):
    """A depthwise convolution (kernel (kh, kw, 1, C)) as the sum over taps of each shifted
    view times that tap's per-channel weights."""
    views = _shifted_views(x, kernel.shape[:2], strides, pads, dilation)
    taps = kernel.reshape(-1, kernel.shape[-1])  # (kh * kw, C), tap-major as the views
    out = views[0] * taps[0]
    for view, tap in zip(views[1:], taps[1:], strict=True):
        out = out + view * tap
    return out


def _depthwise_conv(x, kernel, strides, pads, dilation):
    """`_depthwise_sum`; at stride 1 with the input gradient written as the same kind of sum
    (`_depthwise_stride1`)."""
    if tuple(strides) == (1, 1):
        return _depthwise_stride1(x, kernel, pads, dilation)
    return _depthwise_sum(x, kernel, strides, pads, dilation)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise_stride1(x, kernel, pads, dilation):
    """A stride-1 `_depthwise_sum` whose input gradient pads the cotangent once.

    Autodiff of the shifted views pads each tap's cotangent to the padded input's size and
    adds the kh*kw results (slow in SegFormer's train step: module docstring). The input
    gradient is itself a depthwise correlation: of the cotangent, padded so that every tap
    meets again the pixels it met, against the kernel turned by 180 degrees.
    """
    return _depthwise_sum(x, kernel, (1, 1), pads, dilation)


def _depthwise_stride1_forward(x, kernel, pads, dilation):
    return _depthwise_stride1(x, kernel, pads, dilation), (x, kernel)


def _depthwise_stride1_backward(pads, dilation, residuals, dy):
    x, kernel = residuals
    kernel_size = kernel.shape[:2]
    reach = [(k - 1) * d for k, d in zip(kernel_size, dilation, strict=True)]
    back_pads = tuple((r - low, r - high) for r, (low, high) in zip(reach, pads, strict=True))
    dx = _depthwise_sum(dy, kernel[::-1, ::-1], (1, 1), back_pads, dilation)
    dkernel = _depthwise_kernel_gradient(x, dy, kernel_size, pads, dilation)
    return dx.astype(x.dtype), dkernel.reshape(kernel.shape).astype(kernel.dtype)


def _depthwise_kernel_gradient(x, dy, kernel_size, pads, dilation):
    """Per tap, the sum over (n, row, column) of its view of `x` times `dy`: (kh * kw, C), in
    float32. A batch of at least LOOP_MIN_ELEMENTS input elements is summed image by image.

    Why: each tap's sum reads the whole input and output gradient once, kh * kw passes over
    the batch; one image at a time those passes run about 3x faster (measured; presumably a
    cache effect, as an image's arrays are an eighth of the batch's, but that is not pinned
    down: one image of the largest shape is 2.6 MB an array, more than this machine's 2 MiB
    of L2 per core). Measured on 3x3 convs of SegFormer-B0's Mix-FFN (CamVid
    crops, batch 8), whole batch -> image by image: 64x80x128 57-68 -> 21 ms, 32x40x256
    32 -> 9-10 ms, 16x20x640 19-20 -> 6.4 ms; below the threshold the loop costs more than
    it saves (8x10x1024: 3.0 -> 4.6 ms). Equal to float rounding (the images' sums added in
    order).
    """

    def tap_sums(x, dy):
        views = _shifted_views(x, kernel_size, (1, 1), pads, dilation)
        return jnp.stack([jnp.sum(view * dy, axis=(0, 1, 2), dtype=jnp.float32) for view in views])

    batch = x.shape[0]
    if not isinstance(batch, int) or batch == 1 or x.size < LOOP_MIN_ELEMENTS:
        return tap_sums(x, dy)

    def add_image(index, total):
        return total + tap_sums(
            lax.dynamic_slice_in_dim(x, index, 1), lax.dynamic_slice_in_dim(dy, index, 1)
        )

    taps = kernel_size[0] * kernel_size[1]
    return lax.fori_loop(0, batch, add_image, jnp.zeros((taps, x.shape[-1]), jnp.float32))


_depthwise_stride1.defvjp(_depthwise_stride1_forward, _depthwise_stride1_backward)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
):
    """`jax.lax.conv_general_dilated`, with faster forms on CPU for tiny outputs and for
    depthwise convolutions.

    Args and returns: those of `jax.lax.conv_general_dilated`. On CPU only, for NHWC/HWIO
    convolutions without input dilation: with a kernel larger than 1x1, a depthwise one (one
    group per input channel, one output per group) is computed as shifted multiply-adds and
    one without groups whose output has at most SMALL_OUTPUT_PIXELS pixels as one matmul
    (im2col); a stride-1 one without groups that is 1x1 or padded beyond its kernel, with
    enough outputs (`conv_kernel_grad.worth_it`), is XLA's convolution with the kernel
    gradient as one GEMM; a stride-1 one without groups with at least as many output channels
    as output positions (`conv_kernel_grad.kernel_outweighs_map`) has both gradients as GEMMs.
    Within `onednn_conv.onednn_convolutions()`, one without groups with more output
    positions than output channels is oneDNN's (`onednn_conv.conv_with_onednn`, both
    gradients too) where `onednn_conv.usable`.
    All compute the same sums in another order (equal to float rounding).
    """

    def reference(lhs, rhs):
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )

    dilation = tuple(rhs_dilation or (1, 1))
    simple = (
        lhs.ndim == 4
        and _nhwc(dimension_numbers)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and batch_group_count == 1
        and preferred_element_type is None
    )
    channels = lhs.shape[-1] if lhs.ndim == 4 else 0
    depthwise = feature_group_count == channels == rhs.shape[-1] and rhs.shape[2] == 1
    pointwise = rhs.shape[0] * rhs.shape[1] == 1  # 1x1: only the kernel gradient is slow
    if not simple or not (feature_group_count == 1 or (depthwise and not pointwise)):
        return reference(lhs, rhs)
    if isinstance(padding, str):
        effective = [(k - 1) * d + 1 for k, d in zip(rhs.shape[:2], dilation, strict=True)]
        padding = lax.padtype_to_pads(lhs.shape[1:3], effective, window_strides, padding)
    pads = tuple(tuple(p) for p in padding)
    if depthwise and not pointwise:

        def shifted(lhs, rhs):
            return _depthwise_conv(lhs, rhs, tuple(window_strides), pads, dilation)

        return per_platform(lhs, rhs, cpu=shifted, default=reference)
    out_shape = jax.eval_shape(reference, lhs, rhs).shape
    if out_shape[1] * out_shape[2] <= SMALL_OUTPUT_PIXELS and not pointwise:

        def im2col(lhs, rhs):
            return _im2col_conv(lhs, rhs, tuple(window_strides), pads, dilation, precision)

        return per_platform(lhs, rhs, cpu=im2col, default=reference)
    stride_1 = tuple(window_strides) == (1, 1)
    gemm_input = stride_1 and kernel_outweighs_map(rhs.shape, out_shape)
    gemm_kernel = stride_1 and worth_it(rhs.shape, pads, dilation)
    positions = out_shape[0] * out_shape[1] * out_shape[2]
    map_outweighs_kernel = isinstance(positions, int) and positions > rhs.shape[-1]
    if map_outweighs_kernel and onednn_conv.usable(lhs, rhs, pads):

        def onednn(lhs, rhs):
            strides = tuple(window_strides)
            return onednn_conv.conv_with_onednn(lhs, rhs, strides, pads, dilation)

        return per_platform(lhs, rhs, cpu=onednn, default=reference)
    if not (gemm_input or gemm_kernel):
        return reference(lhs, rhs)

    def gemm_gradients(lhs, rhs):
        return conv_gemm_gradients(lhs, rhs, pads, dilation, precision, gemm_input)

    return per_platform(lhs, rhs, cpu=gemm_gradients, default=reference)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
Conv.__doc__ = "`flax.linen.Conv` computing with `conv_general_dilated` (this module)."
