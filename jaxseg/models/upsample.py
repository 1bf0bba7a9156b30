"""Upsamplers: a bilinear-initialised transposed convolution, and resize (+ conv).

Pixel-centre convention. `jax.image.resize` treats pixel i as the unit cell
[i, i+1) with its centre at i + 0.5 (half-pixel centres). For bilinear this is
PyTorch's `F.interpolate(..., align_corners=False)`: output pixel j samples the
input at (j + 0.5) / factor - 0.5, clamped to the edge. `align_corners=True`
(PyTorch's other mode: the corner pixel centres of input and output coincide, so
input index i maps to i * (out - 1) / (in - 1)) is reproduced with
`jax.image.scale_and_translate`.

Transposed conv vs resize. A stride-f transposed convolution whose kernel is
the FCN bilinear filter of size 2f computes exactly the half-pixel bilinear
interpolation above wherever the kernel footprint lies inside the input, i.e.
everywhere except a border of f // 2 output pixels on each side. There the
transposed conv sees zeros beyond the edge (its weights no longer sum to one,
so borders darken towards zero), while resize renormalises, which equals
clamping to the edge pixel.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.models.conv_transpose import conv_transpose
from jaxseg.models.small_conv import Conv

UPSAMPLE_KINDS = ("transposed", "resize")
RESIZE_METHODS = ("bilinear", "nearest")


def bilinear_filter(kernel_size: int) -> np.ndarray:
    """The 2-D bilinear interpolation filter FCN uses to initialise upsampling."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    grid = np.arange(kernel_size)
    profile = 1 - np.abs(grid - center) / factor
    return np.outer(profile, profile).astype(np.float32)


def bilinear_kernel_init(key, shape, dtype=jnp.float32):
    """HWIO transposed-conv kernel init: channel c -> c bilinear, 0 across channels."""
    del key
    kernel_h, kernel_w, in_features, out_features = shape
    if kernel_h != kernel_w:
        raise ValueError(f"bilinear init needs a square kernel, got {kernel_h}x{kernel_w}")
    kernel = np.zeros(shape, np.float32)
    filt = bilinear_filter(kernel_h)
    for channel in range(min(in_features, out_features)):
        kernel[:, :, channel, channel] = filt
    return jnp.asarray(kernel, dtype)


def resize(
    x: jnp.ndarray, height: int, width: int, method: str = "bilinear", align_corners: bool = False
) -> jnp.ndarray:
    """Resizes an NHWC map to (height, width) with the convention in the module docstring."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"resize method {method!r} is not one of {RESIZE_METHODS}")
    batch, in_h, in_w, channels = x.shape
    if method == "nearest" and not align_corners:
        return _resize_nearest(x, height, width)
    if not align_corners:
        return jax.image.resize(x, (batch, height, width, channels), method, antialias=False)
    if method != "bilinear":
        raise ValueError("align_corners=True is defined for bilinear resizing only")

    def scale(n_in, n_out):
        return (n_out - 1) / (n_in - 1) if n_in > 1 and n_out > 1 else n_out / n_in

    scales = jnp.array([scale(in_h, height), scale(in_w, width)], jnp.float32)
    # Pixel centres: out = in * s + t; corner centres 0.5 -> 0.5 gives t = 0.5 - 0.5 s.
    translation = 0.5 - 0.5 * scales
    return jax.image.scale_and_translate(
        x,
        (batch, height, width, channels),
        (1, 2),
        scales,
        translation,
        "linear",
        antialias=False,
    )


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """The input pixel each output pixel copies: the one whose cell [i, i + 1) holds the
    output's centre (j + 0.5) * in / out, in exact integer arithmetic."""
    return ((2 * np.arange(size_out) + 1) * size_in // (2 * size_out)).astype(np.int32)


def _resize_nearest(x, height: int, width: int):
    """Nearest-neighbour resizing as a gather of constant indices (`nearest_indices`).

    `jax.image.resize(method="nearest")` is the same rule computed in float32, which puts a
    centre lying exactly on a cell border (2 -> 41 pixels, output 20) in the cell before
    it; onnxruntime's Resize, which jax2onnx emits for it, rounds such ties down even where
    jax does not (every other pixel of a 2x downsampling). A Gather is exact everywhere.
    """
    if x.shape[1] != height:
        x = x[:, nearest_indices(x.shape[1], height)]
    if x.shape[2] != width:
        x = x[:, :, nearest_indices(x.shape[2], width)]
    return x


def check_upsample_kind(kind: str) -> None:
    if kind not in UPSAMPLE_KINDS:
        raise ValueError(f"upsample kind {kind!r} is not one of {UPSAMPLE_KINDS}")


class TransposedConvUpsample(nn.Module):
    """Upsamples an NHWC map by an integer `factor` with a transposed convolution.

    The kernel is `kernel_size` (default 2 * factor, FCN) square, padded so
    that the output is exactly `factor` times the input (PyTorch padding
    (k - f) // 2), or with `padding` p: (in - 1) * f + k - 2p (Caffe's FCN
    uses p = 0 and crops). `bilinear_init` starts it as bilinear
    interpolation; `trainable=False` freezes it (the kernel is then a
    constant, not a parameter). `features=None` keeps the channel count.
    """

    factor: int
    features: int | None = None
    kernel_size: int | None = None
    padding: int | None = None
    bilinear_init: bool = True
    trainable: bool = True
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        features = self.features or in_features
        size = self.kernel_size or 2 * self.factor
        padding = self.padding
        if padding is None:
            if (size - self.factor) % 2:
                raise ValueError(
                    f"transposed conv kernel {size} with stride {self.factor} cannot give an output"
                    f" exactly {self.factor}x its input; use an even kernel - stride difference"
                )
            padding = (size - self.factor) // 2
        shape = (size, size, in_features, features)
        init = bilinear_kernel_init if self.bilinear_init else nn.initializers.lecun_normal()
        if self.trainable:
            kernel = self.param("kernel", init, shape)
        else:
            kernel = init(None, shape)
        # PyTorch's ConvTranspose2d padding p (lax's k - 1 - p on the dilated input); on CPU
        # conv_transpose runs it as an exactly equal stride-1 conv + depth-to-space.
        x = conv_transpose(x, kernel.astype(x.dtype), self.factor, padding)
        if self.use_bias:
            x = x + self.param("bias", nn.initializers.zeros, (features,)).astype(x.dtype)
        return x


class ResizeUpsample(nn.Module):
    """Upsamples an NHWC map by an integer `factor` with `resize`, then optionally a conv.

    `method` and `align_corners` as in `resize`. With `conv_size` > 0, or when
    `features` differs from the input's channels (then 1x1), a "SAME"
    convolution follows (the U-Net paper's "upsampling followed by a 2x2
    convolution").
    """

    factor: int
    features: int | None = None
    method: str = "bilinear"
    align_corners: bool = False
    conv_size: int = 0
    use_bias: bool = False

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        features = self.features or in_features
        x = resize(
            x, x.shape[1] * self.factor, x.shape[2] * self.factor, self.method, self.align_corners
        )
        if self.conv_size or features != in_features:
            size = self.conv_size or 1
            x = Conv(
                features,
                (size, size),
                padding="SAME",
                use_bias=self.use_bias,
                dtype=x.dtype,
                name="Conv_0",
            )(x)
        return x
