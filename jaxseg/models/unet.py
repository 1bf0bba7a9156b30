"""U-Net (Ronneberger et al. 2015): the original valid-conv form and the modern padded form.

Original: unpadded 3x3 convs, no normalisation, 2x2 up-convolutions, the skip
maps centre-cropped before concatenation, so the output is smaller than the
input (572x572 -> 388x388 at depth 4). Modern: padded convs with batch norm,
output size = input size.
"""

from collections.abc import Mapping

from jaxseg.errors import ConfigError
from jaxseg.models.base import Pads, SegmentationModel
from jaxseg.models.encoders import Encoder
from jaxseg.models.layers import DoubleConv, check_divisible, crop_and_concat, nearest_valid
from jaxseg.models.remat import checkpointed
from jaxseg.models.upsample import (
    ResizeUpsample,
    TransposedConvUpsample,
    check_upsample_kind,
)

PADDINGS = ("SAME", "VALID")


def _valid_output_size(input_size: int, depth: int) -> int | None:
    """Output side of the unpadded U-Net, or None when `input_size` is not valid."""
    size = input_size
    for _ in range(depth):
        size -= 4  # two unpadded 3x3 convs
        if size <= 0 or size % 2:  # 2x2 pooling needs an even size
            return None
        size //= 2
    size -= 4
    for _ in range(depth):
        if size <= 0:
            return None
        size = 2 * size - 4  # 2x2 up-conv, then two unpadded 3x3 convs
    return size if size > 0 else None


def unet_output_size(input_size: int, depth: int = 4, padding: str = "VALID") -> int:
    """Output side length of a U-Net for an input side length.

    Raises ValueError naming the nearest valid sizes when the input cannot be
    taken: for "SAME" padding, not divisible by 2**depth; for "VALID", a
    pooled map of odd size or a map that shrinks to nothing.
    """
    if padding == "SAME":
        if input_size % 2**depth == 0 and input_size > 0:
            return input_size
        raise ValueError(
            f"input size {input_size} is not divisible by 2**depth = {2**depth};"
            f" nearest valid sizes: {nearest_valid(input_size, lambda s: s % 2**depth == 0)}"
        )
    output = _valid_output_size(input_size, depth)
    if output is None:
        nearest = nearest_valid(input_size, lambda s: _valid_output_size(s, depth) is not None)
        raise ValueError(
            f"input size {input_size} is not valid for the original (unpadded) U-Net at depth"
            f" {depth}: every pooled map must have an even size and no map may shrink to"
            f" nothing; nearest valid input sizes: {nearest}"
        )
    return output


def unet_input_size(output_size: int, depth: int = 4) -> int:
    """Input side length the original (unpadded) U-Net needs to give `output_size`."""
    size = output_size
    for _ in range(depth):
        size += 4
        if size % 2:
            break
        size //= 2
    else:
        size += 4
        for _ in range(depth):
            size = 2 * size + 4
        if _valid_output_size(size, depth) == output_size:
            return size
    outputs = {_valid_output_size(s, depth) for s in range(1, 2 * output_size + 2 ** (depth + 5))}
    nearest = nearest_valid(output_size, lambda s: s in outputs)
    raise ValueError(
        f"no input gives a {output_size}-pixel output from the original U-Net at depth {depth};"
        f" nearest valid output sizes: {nearest}"
    )


def unet_tile_padding(height: int, width: int, depth: int = 4):
    """How to pad a (height x width) image and label map for the original (unpadded) U-Net.

    The net predicts the centre of its input tile. The output side O is the
    smallest valid one >= the label side; the labels are padded to O (with the
    ignore label) and the image to the matching input side by mirroring, the
    paper's extrapolation of the missing context.

    Returns:
      (image_pads, label_pads), each ((top, bottom), (left, right)).
    """
    image_pads, label_pads = [], []
    for side in (height, width):
        output = next(o for o in range(side, side + 2 ** (depth + 2)) if _output_is_valid(o, depth))
        tile = unet_input_size(output, depth)
        label_top = (output - side) // 2
        image_top = (tile - output) // 2 + label_top
        label_pads.append((label_top, output - side - label_top))
        image_pads.append((image_top, tile - side - image_top))
    return tuple(image_pads), tuple(label_pads)


def _output_is_valid(output: int, depth: int) -> bool:
    try:
        unet_input_size(output, depth)
    except ValueError:
        return False
    return True


class UNet(SegmentationModel):
    """U-Net: contracting path, expanding path of up-convs and crop-and-concat merges.

    Attributes:
      num_classes: output channels of the final 1x1 conv.
      base_features: channels of the first level (64 in the paper).
      depth: number of 2x2 poolings (4 in the paper).
      padding: "SAME" (modern) or "VALID" (original, output smaller than input).
      use_batch_norm: batch norm after every conv (modern form).
      upsample: "transposed" (the paper's 2x2 up-convolution) or "resize"
        (bilinear resize then a 2x2 conv, the paper's "upsampling followed by a
        2x2 convolution"). Both bring the channels to the skip's.
      encoder: "unet" (the paper's contracting path, shaped by the fields
        above) or any registered encoder ("vgg16", "resnet34", ...) with
        `encoder_options`; its "stride{s}" features are the skips, its
        coarsest the bottom. If its finest skip is coarser than the input, the
        scores are resized (bilinear) to the input size.
      encoder_frozen_bn: the encoder's batch norm keeps its statistics in training.
    """

    num_classes: int
    base_features: int = 64
    depth: int = 4
    padding: str = "SAME"
    use_batch_norm: bool = True
    upsample: str = "transposed"
    encoder: str = "unet"
    encoder_options: Mapping | None = None
    encoder_frozen_bn: bool = False

    def check_options(self) -> None:
        if self.padding not in PADDINGS:
            raise ConfigError(f"padding {self.padding!r} is not one of {PADDINGS}")
        check_upsample_kind(self.upsample)
        if self.padding != "SAME" and self.encoder != "unet":
            raise ConfigError("the original unpadded U-Net needs encoder='unet'")

    def model_encoder_options(self) -> dict:
        if self.encoder != "unet":
            return {}
        return dict(
            base_features=self.base_features,
            depth=self.depth,
            padding=self.padding,
            use_batch_norm=self.use_batch_norm,
        )

    def check_size(self, height: int, width: int) -> None:
        if self.padding == "VALID":
            unet_output_size(height, self.depth, "VALID")
            unet_output_size(width, self.depth, "VALID")
        else:
            check_divisible(height, width, self.input_multiple(), f"U-Net on {self.encoder}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        if self.padding == "VALID":
            return unet_output_size(height, self.depth), unet_output_size(width, self.depth)
        return height, width

    def input_multiple(self) -> int:
        if self.padding == "VALID":
            return 1  # input_padding makes any image a valid tile
        return self.build_encoder(detached=True).max_stride()

    def tile_period(self) -> int:
        return 2**self.depth if self.padding == "VALID" else self.input_multiple()

    def input_padding(self, height: int, width: int) -> tuple[Pads, Pads] | None:
        if self.padding != "VALID":
            return None
        return unet_tile_padding(height, width, self.depth)

    def _upsample(self, factor, features, name):
        if self.upsample == "resize":
            return ResizeUpsample(factor, features, conv_size=2, use_bias=True, name=name)
        return TransposedConvUpsample(
            factor, features, kernel_size=2, bilinear_init=False, use_bias=True, name=name
        )

    def decode(self, features, encoder: Encoder, input_size, train: bool):
        strides = encoder.strides()
        *skips, x = (features[f"stride{s}"] for s in strides)
        for level in reversed(range(len(skips))):
            # The upsampling belongs to the checkpointed block: it keeps less (remat.py).
            def block(module, x, skip, level=level):
                factor = strides[level + 1] // strides[level]
                x = module._upsample(factor, skip.shape[-1], f"up{level}")(x)
                x = crop_and_concat(skip, x)
                return DoubleConv(
                    skip.shape[-1], module.padding, module.use_batch_norm, name=f"decoder{level}"
                )(x, train)

            x = checkpointed(self, block, self.remat)(x, skips[level])
        return x  # classified by the base's 1x1 "classifier", resized to the input if coarser
