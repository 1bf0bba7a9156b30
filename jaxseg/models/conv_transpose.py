"""Transposed convolution equal to `jax.lax.conv_transpose`, run on CPU as GEMM + depth-to-space."""

# What is computed: `jax.lax.conv_transpose(x, kernel, (s, s), ((q, q), (q, q)),
# ("NHWC", "HWIO", "NHWC"))` with q = k - 1 - padding, i.e. PyTorch's
# `ConvTranspose2d(stride=s, padding=padding)` with the kernel flipped (lax does not flip
# it); output side (in - 1) * s + k - 2 * padding.
#
# Why a rewrite: XLA lowers that op as a convolution over the input dilated by s (s - 1
# zeros between pixels), so on CPU it multiplies k^2 taps per output pixel of which only
# (k / s)^2 are non-zero, and its gradients are as wasteful. When s divides k (U-Net's
# 2x2/2, FCN's 2f x 2f / f) the same sums are a stride-1 correlation of the undilated
# input with (k / s)^2 taps and s^2 x out channels, followed by depth-to-space and a crop
# (the sub-pixel equivalence). It is chosen with `jax.lax.platform_dependent` for CPU
# only: elsewhere XLA's own lowering of the transposed convolution is kept, and an
# exported function carries both forms (an ONNX export only the plain one: platforms.py).
#
# Derivation (one axis, p = padding, full output p = 0): out[o] = sum_i x[i] k[s i + k-1-p - o].
# With m = k / s and o = s q + r (0 <= r < s) the non-zero terms are i = q + t - (m - 1)
# for t in [0, m), with weight k[s t + s-1-r]: a stride-1 correlation of x padded by m - 1
# on both sides with the taps W[t, r] = k[s t + s-1-r], block q giving the outputs
# s q .. s q + s - 1; padding p crops the full output by p on each side.

import jax
import jax.numpy as jnp

from jaxseg.models.platforms import per_platform

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def lax_conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int):
    """`conv_transpose` as plain `jax.lax.conv_transpose`: the reference, and the GPU/TPU form.

    Args:
      x, kernel, stride, padding: as for `conv_transpose`.

    Returns:
      The transposed convolution as XLA lowers it itself (an input-dilated convolution).
    """
    size = kernel.shape[0]
    pad = size - 1 - padding
    return jax.lax.conv_transpose(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=_DIMENSION_NUMBERS
    )


def _subpixel_conv_transpose(x, kernel, stride: int, padding: int):
    """The same function as one matmul over (k / s)^2 shifted inputs + depth-to-space + crop."""
    batch, height, width, _ = x.shape
    size, _, in_features, out_features = kernel.shape
    taps = size // stride
    blocks_h, blocks_w = height + taps - 1, width + taps - 1
    # kernel[s t + s-1-r] -> weights[t, r]: split each spatial axis into (t, s-1-r), flip r.
    kernel = kernel.reshape(taps, stride, taps, stride, in_features, out_features)
    weights = kernel[:, ::-1, :, ::-1].transpose(0, 2, 4, 1, 3, 5)
    weights = weights.reshape(taps * taps * in_features, stride * stride * out_features)
    # The stride-1 correlation with taps x taps windows, written as im2col + one GEMM rather
    # than a convolution: XLA CPU computes a convolution's kernel gradient as a convolution
    # with a window as large as the map (16x16/8 upsampling: 10x slower than lax's form),
    # while a GEMM's gradients are GEMMs.
    if taps > 1:
        halo = taps - 1
        x = jnp.pad(x, ((0, 0), (halo, halo), (halo, halo), (0, 0)))
        x = jnp.concatenate(
            [
                x[:, row : row + blocks_h, col : col + blocks_w, :]
                for row in range(taps)
                for col in range(taps)
            ],
            axis=-1,
        )
    blocks = jax.lax.dot_general(x, weights, (((3,), (0,)), ((), ())))
    out = blocks.reshape(batch, blocks_h, blocks_w, stride, stride, out_features)
    out = out.transpose(0, 1, 3, 2, 4, 5).reshape(
        batch, blocks_h * stride, blocks_w * stride, out_features
    )
    if padding:
        out = out[:, padding : out.shape[1] - padding, padding : out.shape[2] - padding, :]
    return out


def has_subpixel_form(kernel_size: int, stride: int, padding: int) -> bool:
    """Whether a square kernel/stride/padding takes the CPU rewrite (else plain lax everywhere).

    Args:
      kernel_size: side of the square kernel.
      stride: the upsampling factor.
      padding: PyTorch-style padding (cropped from each side of the full output).

    Returns:
      True when the stride divides the kernel (stride > 1) and the padding is in [0, k - 1],
      the range where lax's own padding k - 1 - padding is non-negative.
    """
    return stride > 1 and kernel_size % stride == 0 and 0 <= padding <= kernel_size - 1


def conv_transpose(x: jnp.ndarray, kernel: jnp.ndarray, stride: int, padding: int) -> jnp.ndarray:
    """A square stride-`stride` transposed convolution of an NHWC map (see the module docstring).

    Args:
      x: (N, H, W, C) input.
      kernel: (k, k, C, O) HWIO kernel, unflipped as `jax.lax.conv_transpose` takes it.
      stride: the upsampling factor s.
      padding: PyTorch-style padding p (0 is Caffe's FCN; (k - s) // 2 gives s x the input).

    Returns:
      (N, (H - 1) s + k - 2p, (W - 1) s + k - 2p, O), equal (to float rounding) to
      `jax.lax.conv_transpose` with padding k - 1 - p on every side, on every backend.
    """
    size = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != size:
        raise ValueError(f"conv_transpose needs a square HWIO kernel, got shape {kernel.shape}")
    if not has_subpixel_form(size, stride, padding):
        return lax_conv_transpose(x, kernel, stride, padding)

    def subpixel(x, kernel):
        return _subpixel_conv_transpose(x, kernel, stride, padding)

    def reference(x, kernel):
        return lax_conv_transpose(x, kernel, stride, padding)

    return per_platform(x, kernel, cpu=subpixel, default=reference)
