"""Building blocks shared by every model: conv-BN-ReLU, crops and skip merges."""

import flax.linen as nn
import jax.numpy as jnp


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
        x = nn.Conv(
            self.features,
            (self.kernel_size, self.kernel_size),
            padding=self.padding,
            kernel_dilation=self.dilation,
            use_bias=not self.use_batch_norm,
            kernel_init=nn.initializers.kaiming_normal(),
        )(x)
        if self.use_batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
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
