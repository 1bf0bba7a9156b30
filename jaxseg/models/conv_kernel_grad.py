"""A stride-1 convolution whose kernel gradient is one well-shaped GEMM (for XLA:CPU).

Why: XLA differentiates a convolution with respect to its kernel as another convolution, in
which the batch becomes the feature axis and the whole image the window. On CPU that one
runs far below the machine's GEMM rate: measured on this project's 2-core machine, for a 3x3
"same" convolution on 4x128x128x64 -> 64, the forward convolution takes 18 ms (268 GFLOP/s),
the input gradient 17-37 ms and the kernel gradient 160-190 ms (26 GFLOP/s). It was 5x
oneDNN's time in PyTorch over the paper U-Net, the largest single gap in the train step.

The same sums as one GEMM over every (n, row, column) position, in one of two layouts, the
one that copies less (both keep NHWC, so no transposes):
- shifts (wide inputs): the kh row shifts of x side by side on the channel axis, against
  the kw column shifts of dy:
      dW[i, j, c, o] = sum_{n, r, u} x[n, r + i*dh - top, u, c] * dy[n, r, u + left - j*dw, o]
  (each taken as zero outside its map), a (N*H_out*W) x (kh*C) by (N*H_out*W) x (kw*O)
  product: kh*C + kw*O values copied per position;
- im2col (narrow inputs, e.g. RGB): the kh*kw shifted views of the padded x side by side,
  against dy as it is: kh*kw*C values copied per position.
Kernel gradient alone, XLA's form -> this one, same machine: 4x128x128x64 -> 64 169 -> 72
ms; 4x32x32x256 -> 256 84 -> 23 ms; VGG16's 2x114x114x128 -> 256 316 -> 112 ms; FCN's
100-pixel-padded 2x454x454x64 -> 64 1887 -> 427 ms and 2x454x454x3 -> 64 116 -> 56 ms
(im2col). A 1x1 convolution's kernel gradient is then a plain GEMM; forward + backward of
ResNet-50's 1x1 convs on CamVid crops, 8x64x80x256 -> 64: 223 -> 84 ms, 8x32x40x256 -> 256:
88 -> 32 ms. With few outputs the copies cost more than the GEMM saves (16x64x64x16 -> 16:
4.2 -> 5.6 ms), and a large kernel on a small map (VGG's fc6, 7x7 on 15x15) gains nothing;
hence `worth_it`.

The forward pass and the input gradient stay XLA's own convolutions, which are fast there.
`conv_general_dilated` in small_conv.py chooses this form on CPU only
(`jax.lax.platform_dependent`).
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ("NHWC", "HWIO", "NHWC")
MIN_OUT_FEATURES = 32  # below, the copies outweigh the GEMM (module docstring)
MAX_KERNEL_AREA = 9  # 3x3; larger kernels run on small maps here (fc6), where it gains nothing


def worth_it(kernel_shape) -> bool:
    """Whether the GEMM kernel gradient beats XLA:CPU's for an HWIO kernel of this shape."""
    kh, kw, _, outputs = kernel_shape
    return kh * kw <= MAX_KERNEL_AREA and outputs >= MIN_OUT_FEATURES


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


def _sum_over_positions(a, b, precision):
    """a^T b for (P, M) and (P, N): the sum over positions, which both hold in rows."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=precision)


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
    n, height, width, _ = x.shape
    out_h, out_w = dy.shape[1], dy.shape[2]
    (top, _), (left, _) = pads
    if kh * kw * channels <= kh * channels + kw * outputs:  # im2col copies less
        xp = jnp.pad(x, ((0, 0), *pads, (0, 0)))
        views = [
            xp[:, i * dh : i * dh + out_h, j * dw : j * dw + out_w]
            for i in range(kh)
            for j in range(kw)
        ]
        columns = jnp.concatenate(views, axis=-1).reshape(-1, kh * kw * channels)
        product = _sum_over_positions(columns, dy.reshape(-1, outputs), precision)
        return product.reshape(kh, kw, channels, outputs)  # rows (i, j, c) are HWIO's
    # Row shifts of x: row r of shift i is x's row r + i*dh - top (zero outside).
    below = max(0, (kh - 1) * dh + out_h - top - height)
    xp = jnp.pad(x, ((0, 0), (top, below), (0, 0), (0, 0)))
    rows = jnp.concatenate([xp[:, i * dh : i * dh + out_h] for i in range(kh)], axis=-1)
    # Column shifts of dy: column u of shift j is dy's column u + left - j*dw (zero outside).
    before = (kw - 1) * dw
    after = max(0, width + left - out_w)
    dyp = jnp.pad(dy, ((0, 0), (0, 0), (before, after), (0, 0)))
    starts = [before + left - j * dw for j in range(kw)]
    columns = jnp.concatenate([dyp[:, :, s : s + width] for s in starts], axis=-1)
    product = _sum_over_positions(
        rows.reshape(-1, kh * channels), columns.reshape(-1, kw * outputs), precision
    )
    return jnp.transpose(product.reshape(kh, channels, kw, outputs), (0, 2, 1, 3))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_gemm_kernel_grad(x, kernel, pads, dilation, precision=None):
    """`lax.conv_general_dilated(x, kernel, (1, 1), pads, rhs_dilation=dilation)` (NHWC,
    HWIO), differentiated with `kernel_gradient` for the kernel.

    pads: ((top, bottom), (left, right)) as tuples; dilation: (dh, dw).
    """
    return _conv(x, kernel, pads, dilation, precision)


def _forward(x, kernel, pads, dilation, precision):
    return _conv(x, kernel, pads, dilation, precision), (x, kernel)


def _backward(pads, dilation, precision, residuals, dy):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda x: _conv(x, kernel, pads, dilation, precision), x)
    (dx,) = input_vjp(dy)
    dkernel = kernel_gradient(x, dy, kernel.shape, pads, dilation, precision)
    return dx, dkernel.astype(kernel.dtype)


conv_gemm_kernel_grad.defvjp(_forward, _backward)
