"""A stride-1 convolution whose kernel gradient (and, where the kernel outweighs the map, input
gradient) is one well-shaped GEMM (for XLA:CPU).

Why: XLA differentiates a convolution with respect to its kernel as another convolution, in
which the batch becomes the feature axis and the whole image the window. With jaxseg's XLA
options (`platforms.xla_options`: XLA's own convolutions rather than YNNPACK's) that one is
fast for 3x3 kernels on "same" or "valid" padding, faster than the GEMM below (paper U-Net,
the 18 convs summed: 559 ms against 822 ms). It stays slow in two cases, measured on this
project's 2-core machine, forward + backward:
- 1x1 convolutions (ResNet-50's bottlenecks, ASPP's and SegFormer's projections):
  8x64x80x256 -> 64 38.7 -> 31.6 ms, 8x64x80x64 -> 256 33.8 -> 18.8 ms as a GEMM;
- convolutions padded beyond their kernel's reach, whose kernel-gradient window then spans
  mostly padding: FCN's first layer, 3x3 with the paper's 100-pixel padding on
  2x454x454x3 -> 64, 4821 -> 218 ms as a GEMM.
(Under XLA's default YNNPACK convolutions every kernel gradient is slow, about 26 GFLOP/s:
compile with `xla_options`, as jaxseg's trainer, evaluator and predictor do.)

The GEMM: the kh*kw shifted views of the padded input side by side on the channel axis
(im2col, tap-major as HWIO flattens), against the output gradient as it is, summed over
every (n, row, column) position; for a 1x1 kernel the input itself. Both keep NHWC, so no
transposes. The forward pass stays XLA's own convolution.

The input gradient: XLA computes it as a convolution with the kernel's input and output
channels swapped, and on CPU first copies the kernel into that order, a strided copy that
costs more than the products when the kernel is large and the map small (3x3x1024x1024,
37 MB: 72 ms of the paper U-Net's train step for one copy). When the kernel has at least as
many output channels as the output has positions (N * H_out * W_out: the U-Net's 8x8 bottom
level at batch 4), `input_gradient` reads the kernel as it lies instead: the output
gradient times the kernel (one GEMM, contracting its output channels) gives each tap's
contribution, and the kh*kw taps are added at their shifts. Measured, the two gradients,
batch 4, XLA -> both as GEMMs: 8x8x1024 -> 1024 117 -> 49 ms, 8x8x512 -> 1024
35 -> 19 ms, 8x8x256 -> 256 4.0 -> 3.2 ms (equal outputs and positions); at half as many
outputs as positions the GEMMs lose (16x16x512 -> 512: 40 -> 47 ms).

`conv_general_dilated` in small_conv.py chooses these forms on CPU only
(`jax.lax.platform_dependent`), where `worth_it` or `kernel_outweighs_map`.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
MIN_OUT_FEATURES = 32  # below, the GEMM did not pay (3x3, 16x64x64x16 -> 16: 4.2 -> 5.6 ms)
MAX_KERNEL_AREA = 9  # 3x3; im2col copies the input kernel-area times


def worth_it(kernel_shape, pads, dilation) -> bool:
    """Whether the GEMM kernel gradient beats XLA:CPU's (with `xla_options`) for a stride-1
    convolution with this HWIO kernel, ((top, bottom), (left, right)) pads and dilation."""
    kh, kw, _, outputs = kernel_shape
    if kh * kw > MAX_KERNEL_AREA or outputs < MIN_OUT_FEATURES:
        return False
    reach = [(k - 1) * d + 1 for k, d in zip((kh, kw), dilation, strict=True)]
    padded_beyond = any(p >= r for side, r in zip(pads, reach, strict=True) for p in side)
    return kh * kw == 1 or padded_beyond


def kernel_outweighs_map(kernel_shape, output_shape) -> bool:
    """Whether both gradients of a stride-1 convolution are faster as GEMMs on XLA:CPU: a kernel
    of at most MAX_KERNEL_AREA taps with at least as many output channels as the NHWC
    `output_shape` has positions (module docstring). The forward pass is the same either way,
    so an export with a symbolic batch, for inference, keeps XLA's gradients."""
    kh, kw, _, outputs = kernel_shape
    if not all(isinstance(size, int) for size in output_shape[:3]):
        return False  # a symbolic batch (an export for any batch size): XLA's form
    positions = output_shape[0] * output_shape[1] * output_shape[2]
    return kh * kw <= MAX_KERNEL_AREA and outputs >= positions


def _conv(x, kernel, pads, dilation, precision):
    return lax.conv_general_dilated(
        x,
        kernel,
        (1, 1),
        pads,
        rhs_dilation=dilation,
        dimension_numbers=NHWC,
        precision=precision,
    )


def kernel_gradient(x, dy, kernel_shape, pads, dilation, precision=None):
    """d(sum(conv(x, W) * dy)) / dW for a stride-1 NHWC/HWIO convolution, as one GEMM.

    Args:
      x: the input (N, H, W, C).
      dy: the output's cotangent (N, H_out, W_out, O).
      kernel_shape: (kh, kw, C, O).
      pads: ((top, bottom), (left, right)).
      dilation: (dh, dw), the kernel's.
      precision: lax precision of the product.

    Returns:
      (kh, kw, C, O), in the dtype of x and dy.
    """
    (kh, kw, channels, outputs), (dh, dw) = kernel_shape, dilation
    out_h, out_w = dy.shape[1], dy.shape[2]
    xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    views = [
        xp[:, i * dh : i * dh + out_h, j * dw : j * dw + out_w]
        for i in range(kh)
        for j in range(kw)
    ]
    columns = jnp.concatenate(views, axis=-1).reshape(-1, kh * kw * channels)
    # a^T b over the positions, which both hold in rows: no transposes.
    product = lax.dot_general(
        columns, dy.reshape(-1, outputs), (((0,), (0,)), ((), ())), precision=precision
    )
    return product.reshape(kh, kw, channels, outputs)  # rows (i, j, c) are HWIO's


def input_gradient(dy, kernel, input_shape, pads, dilation, precision=None):
    """d(sum(conv(x, W) * dy)) / dx for a stride-1 NHWC/HWIO convolution, as one GEMM and
    shifted adds, reading the kernel in its HWIO order.

    Args:
      dy: the output's cotangent (N, H_out, W_out, O).
      kernel: (kh, kw, C, O).
      input_shape: x's shape (N, H, W, C).
      pads, dilation, precision: as for `kernel_gradient`.

    Returns:
      (N, H, W, C), in the dtype of dy and the kernel.
    """
    kh, kw, channels, outputs = kernel.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    height, width = input_shape[1], input_shape[2]
    (top, _), (left, _) = pads
    dh, dw = dilation
    # Row (n, y, x) holds what each tap (i, j) sends back to input pixel
    # (y + i * dh - top, x + j * dw - left): the kernel's rows are tap-major (HWIO).
    rows = kernel.reshape(kh * kw * channels, outputs)
    taps = lax.dot_general(dy, rows, (((3,), (1,)), ((), ())), precision=precision)
    taps = taps.reshape(*dy.shape[:3], kh * kw, channels)
    zero = jnp.zeros((), taps.dtype)
    total = None
    for i in range(kh):
        for j in range(kw):
            # Put tap (i, j)'s map at its shift in the input's frame; pads that fall outside
            # the input are cut (negative padding), and their gradient is dropped.
            row, col = i * dh - top, j * dw - left
            rows_pad = (row, height - row - out_h, 0)
            cols_pad = (col, width - col - out_w, 0)
            placed = lax.pad(
                taps[:, :, :, i * kw + j], zero, ((0, 0, 0), rows_pad, cols_pad, (0, 0, 0))
            )
            total = placed if total is None else total + placed
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_gemm_gradients(x, kernel, pads, dilation, precision=None, gemm_input=False):
    """`lax.conv_general_dilated(x, kernel, (1, 1), pads, rhs_dilation=dilation)` (NHWC,
    HWIO), differentiated with `kernel_gradient` for the kernel and, with `gemm_input`,
    `input_gradient` for the input (else XLA's).

    pads: ((top, bottom), (left, right)) as tuples; dilation: (dh, dw).
    """
    return _conv(x, kernel, pads, dilation, precision)


def _forward(x, kernel, pads, dilation, precision, gemm_input):
    return _conv(x, kernel, pads, dilation, precision), (x, kernel)


def _backward(pads, dilation, precision, gemm_input, residuals, dy):
    x, kernel = residuals
    if gemm_input:
        dx = input_gradient(dy, kernel, x.shape, pads, dilation, precision).astype(x.dtype)
    else:
        _, input_vjp = jax.vjp(lambda x: _conv(x, kernel, pads, dilation, precision), x)
        (dx,) = input_vjp(dy)
    dkernel = kernel_gradient(x, dy, kernel.shape, pads, dilation, precision)
    return dx, dkernel.astype(kernel.dtype)


conv_gemm_gradients.defvjp(_forward, _backward)
