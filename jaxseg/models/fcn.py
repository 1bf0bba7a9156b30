"""FCN-32s/16s/8s (Long, Shelhamer & Darrell 2015): score, upsample, fuse skips, upsample.

The coarsest feature (VGG16: fc7) is scored by a 1x1 conv, upsampled 2x by a
transposed conv initialised to bilinear interpolation, and summed with the
scored pool4 (FCN-16s), again with the scored pool3 (FCN-8s); a last
upsampling returns to the input size.

Alignment. "same": padded convs (fc6 included), floor pooling, input sides a
multiple of 32, every map exactly aligned, no crop. "caffe": the reference
nets: conv1_1 padded by 100, Caffe's ceil-mode pooling, fc6 unpadded,
transposed convs without padding, and the skip and final maps cropped at the
offsets Caffe computed for them; any input size works.

At-once training (the paper's FCN-8s-at-once) scales pool4 and pool3 by
0.01 and 0.0001 before scoring them: `skip_scales=(0.01, 0.0001)`.
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.base import SegmentationModel
from jaxseg.models.encoders import Encoder, build_encoder
from jaxseg.models.heads import ScoreHead
from jaxseg.models.layers import check_divisible, crop_at, score_and_sum
from jaxseg.models.upsample import ResizeUpsample, TransposedConvUpsample, check_upsample_kind

ALIGNMENTS = ("same", "caffe")
# Crop offsets of the reference Caffe nets (voc-fcn{32,16,8}s): skip maps by
# name, and the final map by the stride it is upsampled from.
CAFFE_SKIP_OFFSETS = {"pool4": 5, "pool3": 9}
CAFFE_FINAL_OFFSETS = {32: 19, 16: 27, 8: 31}


def default_fcn_features(encoder: Encoder) -> tuple[str, ...]:
    """The paper's choice on any encoder: the deepest (coarsest) feature, then the first
    feature at 1/2 and 1/4 of its stride (VGG16: fc7, pool4, pool3)."""
    top = encoder.max_stride()
    return (
        encoder.feature_at(top, "deepest"),
        encoder.feature_at(top // 2, "first"),
        encoder.feature_at(top // 4, "first"),
    )


class FCN(SegmentationModel):
    """Fully convolutional network.

    Attributes:
      num_classes: output channels.
      num_skips: 0 (FCN-32s), 1 (FCN-16s) or 2 (FCN-8s).
      encoder: encoder name ("vgg16", "resnet50", ...), `encoder_options` its options.
      features: the coarsest feature then the skips, coarse to fine; default
        `default_fcn_features` (VGG16: ("fc7", "pool4", "pool3"), ResNet:
        ("stride32", "stride16", "stride8")). Only the first num_skips + 1 are used.
      upsample: "transposed" (bilinear-initialised) or "resize" (bilinear).
      train_upsample: learn the transposed conv kernels (else fixed bilinear).
      alignment: "same" or "caffe" (see module docstring).
      skip_scales: factors applied to the skip features before scoring.
      zero_init_scores: FCN's zero-initialised score layers.
      encoder_frozen_bn: the encoder's batch norm keeps its statistics in training.
    """

    num_classes: int
    num_skips: int = 2
    encoder: str = "vgg16"
    encoder_options: Mapping | None = None
    features: Sequence[str] | None = None
    upsample: str = "transposed"
    train_upsample: bool = True
    alignment: str = "same"
    skip_scales: Sequence[float] | None = None
    zero_init_scores: bool = True
    encoder_frozen_bn: bool = False

    def _encoder(self, detached: bool = False) -> Encoder:
        options = dict(self.encoder_options or {})
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"alignment {self.alignment!r} is not one of {ALIGNMENTS}")
        check_upsample_kind(self.upsample)
        if self.alignment == "caffe":
            if self.encoder != "vgg16" or self.upsample != "transposed":
                raise ValueError(
                    "alignment='caffe' reproduces the reference VGG16 nets with transposed-conv"
                    f" upsampling; for encoder={self.encoder!r}, upsample={self.upsample!r} use"
                    " alignment='same'"
                )
            options.update(input_padding=100, ceil_mode=True, fc6_padding="VALID")
        return build_encoder(self.encoder, options, detached=detached)

    def _feature_names(self, encoder: Encoder) -> tuple[str, ...]:
        names = tuple(self.features or default_fcn_features(encoder))
        if not 0 <= self.num_skips < len(names):
            raise ValueError(
                f"num_skips={self.num_skips} needs {self.num_skips + 1} features, got {names}"
            )
        names = names[: self.num_skips + 1]
        encoder.require(names, "FCN")
        if self.skip_scales is not None and len(self.skip_scales) < self.num_skips:
            raise ValueError(
                f"skip_scales {tuple(self.skip_scales)} needs one factor per skip"
                f" ({self.num_skips})"
            )
        if self.alignment == "caffe" and any(n not in CAFFE_SKIP_OFFSETS for n in names[1:]):
            raise ValueError(f"alignment='caffe' knows the crops of {sorted(CAFFE_SKIP_OFFSETS)}")
        return names

    def input_multiple(self) -> int:
        if self.alignment == "caffe":
            return 1  # the 100-pixel padding and the crops take any size
        return self.tile_period()

    def tile_period(self) -> int:
        encoder = self._encoder(detached=True)
        return encoder.feature_strides()[self._feature_names(encoder)[0]]

    def _upsample(self, factor, name):
        if self.upsample == "resize":
            return ResizeUpsample(factor, name=name)
        return TransposedConvUpsample(
            factor,
            trainable=self.train_upsample,
            bilinear_init=True,
            padding=0 if self.alignment == "caffe" else None,
            name=name,
        )

    @nn.compact
    def __call__(self, x, train: bool = False):
        height, width = x.shape[1:3]
        caffe = self.alignment == "caffe"
        encoder = self._encoder()
        names = self._feature_names(encoder)
        strides = encoder.feature_strides()
        if not caffe:
            check_divisible(height, width, strides[names[0]], f"FCN on {self.encoder}")

        features = encoder(
            self.compute_input(x), train, frozen_bn=self.encoder_frozen_bn, remat=self.remat
        )
        score = ScoreHead(self.num_classes, self.zero_init_scores, name="score_fr")(
            features[names[0]]
        )
        stride = strides[names[0]]
        for index, name in enumerate(names[1:]):
            score = self._upsample(stride // strides[name], f"upscore_{name}")(score)
            skip = features[name]
            if self.skip_scales is not None:
                skip = skip * self.skip_scales[index]
            skip_score = ScoreHead(self.num_classes, self.zero_init_scores, name=f"score_{name}")(
                skip
            )
            score = score_and_sum(score, skip_score, CAFFE_SKIP_OFFSETS[name] if caffe else None)
            stride = strides[name]
        score = self._upsample(stride, f"upscore{stride}")(score)
        if caffe:
            score = crop_at(score, CAFFE_FINAL_OFFSETS[stride], height, width)
        return score.astype(jnp.float32)
