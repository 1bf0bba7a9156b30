"""DeepLabV3 (Chen et al. 2017) and DeepLabV3+ (Chen et al. 2018): atrous spatial pyramid pooling.

The encoder runs at output stride 16 or 8 (its last stages dilated instead of strided:
the model passes `output_stride` to it). ASPP looks at the deepest feature through a 1x1
conv, three 3x3 atrous convs and an image-level pooling branch, concatenated and projected
to `channels` with dropout. DeepLabV3 adds a 3x3 conv + BN + ReLU and classifies
(torchvision's `deeplabv3_resnet50` layout); DeepLabV3+ upsamples the ASPP output to the
stride-4 feature, concatenates that feature projected to 48 channels, fuses with a 3x3
(separable) conv and classifies, then upsamples x4 (segmentation_models_pytorch's
`DeepLabV3Plus`, align_corners=True resizes as there).

Parameter names map one to one to the reference state dicts (jaxseg/models/pretrained.py):
ASPP's "branch0" is the 1x1 conv, "branch1..3" the atrous convs, "pooling" the image-level
branch, "project" the projection.

Image-level pooling averages the whole input: a pixel's prediction depends on every other
pixel, so a tiled prediction differs from the whole image's (see `_DeepLab`).
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.base import SegmentationModel
from jaxseg.models.encoders import ENCODERS, Encoder
from jaxseg.models.remat import checkpointed
from jaxseg.models.small_conv import Conv
from jaxseg.models.upsample import resize
from jaxseg.registry import option_parameters

OUTPUT_STRIDES = (8, 16)
LOW_LEVEL_STRIDE = 4  # DeepLabV3+'s decoder feature
LOW_LEVEL_CHANNELS = 48  # "proposed by the authors": 48 low-level channels


def conv_bn_relu(
    x, features: int, kernel: int, train: bool, name: str, dilation: int = 1, separable=False
):
    """Conv (no bias, symmetric padding) + BatchNorm + ReLU in the caller's scope.

    Separable: a depthwise `kernel` conv ("{name}_depthwise") then a pointwise 1x1
    ("{name}_pointwise"), as smp's SeparableConv2d; otherwise one conv ("{name}_conv").
    """
    pad = dilation * (kernel - 1) // 2
    options = dict(
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation,
        use_bias=False,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        dtype=x.dtype,
    )
    if separable and kernel > 1:
        x = Conv(
            x.shape[-1],
            (kernel, kernel),
            feature_group_count=x.shape[-1],
            name=f"{name}_depthwise",
            **options,
        )(x)
        options.update(padding="VALID", kernel_dilation=1)
        x = Conv(features, (1, 1), name=f"{name}_pointwise", **options)(x)
    else:
        x = Conv(features, (kernel, kernel), name=f"{name}_conv", **options)(x)
    x = nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=x.dtype, name=f"{name}_bn"
    )(x)
    return nn.relu(x)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three atrous 3x3, image pooling; concat, project.

    Attributes:
      channels: output channels of every branch and of the projection (256).
      rates: the three atrous rates.
      separable: depthwise-separable atrous convs (DeepLabV3+ as in smp).
      dropout: dropout rate after the projection (rng "dropout"; off when not training).
    """

    channels: int
    rates: Sequence[int]
    separable: bool = False
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, train: bool):
        branches = [conv_bn_relu(x, self.channels, 1, train, "branch0")]
        for index, rate in enumerate(self.rates, start=1):
            branches.append(
                conv_bn_relu(x, self.channels, 3, train, f"branch{index}", rate, self.separable)
            )
        pooled = jnp.mean(x, axis=(1, 2), keepdims=True)
        pooled = conv_bn_relu(pooled, self.channels, 1, train, "pooling")
        # Bilinear upsampling of a 1x1 map (the references' interpolate) is a broadcast.
        branches.append(jnp.broadcast_to(pooled, (*x.shape[:3], self.channels)))
        x = conv_bn_relu(jnp.concatenate(branches, axis=-1), self.channels, 1, train, "project")
        return nn.Dropout(self.dropout, deterministic=not train)(x)


class _DeepLab(SegmentationModel):
    """What DeepLabV3 and DeepLabV3+ share: the checks of their options (the fields each
    declares: `output_stride`, `atrous_rates`, `channels`, `aspp_separable`,
    `aspp_dropout`), the encoder's output stride and ASPP."""

    def check_options(self) -> None:
        name = type(self).__name__
        if self.output_stride not in OUTPUT_STRIDES:
            raise ConfigError(
                f"{name}: output_stride={self.output_stride!r} is not one of {OUTPUT_STRIDES}"
            )
        if "output_stride" not in option_parameters(ENCODERS.get(self.encoder)):
            raise ConfigError(
                f"{name}: encoder {self.encoder!r} has no output_stride option (ASPP needs a"
                " dilated encoder); resnet18/34/50 have"
            )
        rates = self.rates()
        if len(rates) != 3 or not all(isinstance(r, int) and r >= 1 for r in rates):
            raise ConfigError(f"{name}: atrous_rates={tuple(rates)!r} must be three integers >= 1")
        if self.channels < 1 or not 0 <= self.aspp_dropout < 1:
            raise ConfigError(
                f"{name}: channels={self.channels!r} must be >= 1 and"
                f" aspp_dropout={self.aspp_dropout!r} in [0, 1)"
            )

    def rates(self) -> tuple[int, ...]:
        """ASPP's atrous rates: `atrous_rates`, or the paper's (6, 12, 18) at output stride
        16, doubled at 8 (torchvision's deeplabv3_resnet50: (12, 24, 36) at 8)."""
        if self.atrous_rates is not None:
            return tuple(self.atrous_rates)
        return tuple(rate * 16 // self.output_stride for rate in (6, 12, 18))

    def model_encoder_options(self) -> dict:
        return {"output_stride": self.output_stride}

    def input_multiple(self) -> int:
        return self.build_encoder(detached=True).max_stride()

    # position_dependent() stays False and tile_period() is the output stride: the model
    # does not look at where a pixel lies, and a shift by the stride shifts the features.
    # But image pooling is not local: a tile's prediction uses the tile's own average, so
    # tiles differ from the whole image everywhere (slightly), not only near their edges;
    # they see what the model saw when trained on crops. Whole-image prediction (tile=None,
    # evaluate.py's default) is the single-pass reference.

    def global_context(self) -> bool:
        return True  # image pooling: padding an image changes its prediction everywhere

    def aspp(self, x, train: bool):
        """ASPP ("aspp") on the deepest feature (called inside a checkpointed block)."""
        return ASPP(
            self.channels, self.rates(), self.aspp_separable, self.aspp_dropout, name="aspp"
        )(x, train)


class DeepLabV3(_DeepLab):
    """DeepLabV3: ASPP on a dilated encoder, a 3x3 conv + BN + ReLU, a 1x1 classifier.

    Defaults are torchvision's `deeplabv3_resnet50` (output stride 8, rates (12, 24, 36)).

    Attributes:
      num_classes: output channels.
      encoder: an encoder with an `output_stride` option ("resnet18/34/50"),
        `encoder_options` its other options.
      output_stride: 8 or 16 (the encoder's last stages dilated).
      atrous_rates: ASPP's three rates; None: (6, 12, 18) at output stride 16, (12, 24, 36)
        at 8.
      channels: ASPP and head channels (256).
      aspp_separable: depthwise-separable atrous convs.
      aspp_dropout: dropout after the ASPP projection.
      encoder_frozen_bn: the encoder's batch norm keeps its statistics in training.
    """

    num_classes: int
    encoder: str = "resnet50"
    encoder_options: Mapping | None = None
    encoder_frozen_bn: bool = False
    output_stride: int = 8
    atrous_rates: Sequence[int] | None = None
    channels: int = 256
    aspp_separable: bool = False
    aspp_dropout: float = 0.5

    def required_features(self, encoder: Encoder) -> tuple[str, ...]:
        names = (f"stride{encoder.max_stride()}",)
        encoder.require(names, "DeepLabV3")
        return names

    def decode(self, features, encoder: Encoder, input_size, train: bool):
        (deepest,) = self.required_features(encoder)
        x = checkpointed(self, lambda module, x: module.aspp(x, train), self.remat)(
            features[deepest]
        )

        def head_block(module, x):
            return conv_bn_relu(x, module.channels, 3, train, "head")

        return checkpointed(self, head_block, self.remat)(x)  # then the 1x1 "classifier"


class DeepLabV3Plus(_DeepLab):
    """DeepLabV3+: DeepLabV3's ASPP with a decoder on the stride-4 feature.

    Defaults are segmentation_models_pytorch's `DeepLabV3Plus` (ResNet-34, output stride
    16, rates (12, 24, 36), separable convs in ASPP and decoder). As smp's `make_dilated`,
    a dilated ResNet layer dilates its first block too (`dilate_first_block`, which
    torchvision's `replace_stride_with_dilation` does not).

    Attributes:
      num_classes: output channels.
      encoder: an encoder with an `output_stride` option and a stride-4 feature.
      output_stride: 8 or 16.
      atrous_rates: ASPP's three rates.
      channels: ASPP and decoder channels (256).
      aspp_separable: depthwise-separable atrous convs (the decoder's 3x3 convs are
        always separable, as in smp).
      aspp_dropout: dropout after the ASPP projection.
      encoder_frozen_bn: the encoder's batch norm keeps its statistics in training.
    """

    num_classes: int
    encoder: str = "resnet34"
    encoder_options: Mapping | None = None
    encoder_frozen_bn: bool = False
    output_stride: int = 16
    atrous_rates: Sequence[int] | None = (12, 24, 36)
    channels: int = 256
    aspp_separable: bool = True
    aspp_dropout: float = 0.5

    def model_encoder_options(self) -> dict:
        options = super().model_encoder_options()
        if "dilate_first_block" in option_parameters(ENCODERS.get(self.encoder)):
            options["dilate_first_block"] = True
        return options

    def required_features(self, encoder: Encoder) -> tuple[str, ...]:
        names = (f"stride{encoder.max_stride()}", f"stride{LOW_LEVEL_STRIDE}")
        encoder.require(names, "DeepLabV3Plus")
        return names

    def decode(self, features, encoder: Encoder, input_size, train: bool):
        deepest, low_level = self.required_features(encoder)

        def aspp_block(module, x):
            x = module.aspp(x, train)
            return conv_bn_relu(x, module.channels, 3, train, "aspp_conv", separable=True)

        def fuse_block(module, x, skip):
            # smp: nn.Upsample(scale_factor=4 (2 at output stride 8), align_corners=True).
            x = resize(x, *skip.shape[1:3], align_corners=True)
            skip = conv_bn_relu(skip, LOW_LEVEL_CHANNELS, 1, train, "low_level")
            x = jnp.concatenate([x, skip], axis=-1)
            return conv_bn_relu(x, module.channels, 3, train, "fuse", separable=True)

        x = checkpointed(self, aspp_block, self.remat)(features[deepest])
        x = checkpointed(self, fuse_block, self.remat)(x, features[low_level])
        scores = nn.Conv(self.num_classes, (1, 1), dtype=x.dtype, name="classifier")(x)
        # smp's segmentation head upsamples x4 with align_corners=True; so does this one.
        height, width = scores.shape[1:3]
        return resize(
            scores, height * LOW_LEVEL_STRIDE, width * LOW_LEVEL_STRIDE, align_corners=True
        )

    def head(self, scores):
        return scores  # the decoder ends with the classifier and its x4 upsampling
