"""Building blocks shared by every model: conv-BN-ReLU, crops and skip merges.

Layers compute in the dtype of their input (float32 parameters cast to it; batch norm
statistics in float32): the model sets the compute dtype once, by casting its input.
"""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.pool_grad import masked_max_pool
from jaxseg.models.small_conv import Conv


class ConvBNReLU(nn.Module):
    """3x3 (by default) convolution, optional batch norm, ReLU.

    With batch norm the conv has no bias (BN's shift replaces it), which is
    what the reference U-Net/ResNet implementations count.
    """

    features: int
    kernel_size: int = 3
    padding: str = "SAME"
    use_batch_norm: bool = True
    dilation: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        x = Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding=self.padding,
            kernel_dilation=self.dilation,
            use_bias=not self.use_batch_norm,
            kernel_init=nn.initializers.kaiming_normal(),
            dtype=x.dtype,
        )(x)
        if self.use_batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=x.dtype)(x)
        return nn.relu(x)


class DoubleConv(nn.Module):
    """Two ConvBNReLU: one U-Net level ("two 3x3 convolutions, each followed by a ReLU")."""

    features: int
    padding: str = "SAME"
    use_batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train: bool):
        for _ in range(2):
            x = ConvBNReLU(self.features, padding=self.padding, use_batch_norm=self.use_batch_norm)(
                x, train
            )
        return x


def center_crop(x: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """Crops the spatial centre of an NHWC map to (height, width).

    When the margin is odd the extra pixel is removed from the bottom/right,
    as in the U-Net paper's crop (floor of half the margin on top/left).
    """
    in_h, in_w = x.shape[1:3]
    if height > in_h or width > in_w:
        raise ValueError(f"cannot crop a {in_h}x{in_w} map to the larger {height}x{width}")
    top, left = (in_h - height) // 2, (in_w - width) // 2
    return x[:, top : top + height, left : left + width, :]


def crop_and_concat(skip: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """U-Net skip merge: centre-crop `skip` to `x`'s size, concatenate channels."""
    skip = center_crop(skip, *x.shape[1:3])
    return jnp.concatenate([skip, x], axis=-1)


def crop_at(x: jnp.ndarray, offset: int, height: int, width: int) -> jnp.ndarray:
    """Crops (height, width) starting at (offset, offset): FCN's Caffe `Crop` layer."""
    in_h, in_w = x.shape[1:3]
    if offset < 0 or offset + height > in_h or offset + width > in_w:
        raise ValueError(
            f"crop of {height}x{width} at offset {offset} does not fit in a {in_h}x{in_w} map"
        )
    return x[:, offset : offset + height, offset : offset + width, :]


def max_pool(x: jnp.ndarray, window: int, stride: int, padding: int = 0, ceil_mode: bool = False):
    """Max pooling with PyTorch/Caffe semantics: symmetric -inf `padding`, optional ceil mode.

    `ceil_mode` rounds the output size up (Caffe's pooling) by padding the
    bottom/right with -inf so the last partial window counts.

    The padding is an explicit -inf `jnp.pad` before an unpadded pool: the same values and
    gradients as a padded `reduce_window` (XLA folds the pad into the window), and the form
    converters take (jax2onnx's max-pool rule drops a pool's own padding). The pool is
    `masked_max_pool`: on CPU its gradient is a mask, not XLA's select-and-scatter.
    """
    pads = []
    for size in x.shape[1:3]:
        extra = 0
        if ceil_mode:
            span = size + 2 * padding - window
            extra = -span % stride
        pads.append((padding, padding + extra))
    if any(any(pad) for pad in pads):
        x = jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-jnp.inf)
    return masked_max_pool(x, window, stride)


def nearest_valid(size: int, is_valid, limit: int = 4096) -> list[int]:
    """The closest sizes below and above `size` (within `limit`) for which `is_valid` holds."""
    below = next((s for s in range(size - 1, 0, -1) if is_valid(s)), None)
    above = next((s for s in range(size + 1, size + limit) if is_valid(s)), None)
    return [s for s in (below, above) if s is not None]


def check_divisible(height: int, width: int, stride: int, model: str) -> None:
    """Raises ValueError naming the nearest valid sizes if a side is not a multiple of `stride`."""
    for side, size in (("height", height), ("width", width)):
        if size <= 0 or size % stride:
            raise ValueError(
                f"{model}: input {side} {size} is not divisible by the output stride {stride};"
                f" nearest valid sizes: {nearest_valid(size, lambda s: s % stride == 0)}"
            )


def score_and_sum(score: jnp.ndarray, skip_score: jnp.ndarray, offset: int | None = None):
    """FCN skip merge: add a (cropped) scored skip map to the upsampled coarser scores.

    `offset=None` centre-crops the skip map to `score`'s size (the "same"
    variant, where sizes already agree); an int is Caffe's crop offset.
    """
    height, width = score.shape[1:3]
    if offset is None:
        skip_score = center_crop(skip_score, height, width)
    else:
        skip_score = crop_at(skip_score, offset, height, width)
    return score + skip_score
