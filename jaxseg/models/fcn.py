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

from jaxseg.errors import ConfigError
from jaxseg.models.base import CaffeAlignment, SegmentationModel
from jaxseg.models.encoders import Encoder, build_encoder
from jaxseg.models.heads import ScoreHead
from jaxseg.models.layers import crop_at, score_and_sum
from jaxseg.models.upsample import ResizeUpsample, TransposedConvUpsample, check_upsample_kind

ALIGNMENTS = ("same", "caffe")


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

    def check_options(self) -> None:
        if self.alignment not in ALIGNMENTS:
            raise ConfigError(f"alignment {self.alignment!r} is not one of {ALIGNMENTS}")
        check_upsample_kind(self.upsample)
        if self.alignment == "caffe" and self.upsample != "transposed":
            raise ConfigError(
                "alignment='caffe' reproduces the reference nets' transposed-conv upsampling;"
                f" with upsample={self.upsample!r} use alignment='same'"
            )

    def _caffe(self) -> CaffeAlignment | None:
        """The encoder's Caffe form with alignment="caffe" (else None)."""
        if self.alignment != "caffe":
            return None
        probe = build_encoder(self.encoder, self.encoder_options, detached=True)
        caffe = probe.caffe_alignment()
        if caffe is None:
            raise ConfigError(
                f"alignment='caffe' reproduces a reference Caffe net; encoder {self.encoder!r}"
                " has no Caffe form (vgg16 has): use alignment='same'"
            )
        return caffe

    def model_encoder_options(self) -> dict:
        caffe = self._caffe()
        return dict(caffe.options) if caffe else {}

    def required_features(self, encoder: Encoder) -> tuple[str, ...]:
        names = tuple(self.features or default_fcn_features(encoder))
        if not 0 <= self.num_skips < len(names):
            raise ConfigError(
                f"num_skips={self.num_skips} needs {self.num_skips + 1} features, got {names}"
            )
        names = names[: self.num_skips + 1]
        encoder.require(names, "FCN")
        if self.skip_scales is not None and len(self.skip_scales) < self.num_skips:
            raise ConfigError(
                f"skip_scales {tuple(self.skip_scales)} needs one factor per skip"
                f" ({self.num_skips})"
            )
        caffe = self._caffe()
        if caffe and any(n not in caffe.skip_offsets for n in names[1:]):
            raise ConfigError(
                f"alignment='caffe' knows the crops of {sorted(caffe.skip_offsets)} only"
            )
        return names

    def input_multiple(self) -> int:
        if self.alignment == "caffe":
            return 1  # the 100-pixel padding and the crops take any size
        return self.tile_period()

    def tile_period(self) -> int:
        encoder = self.build_encoder(detached=True)
        return encoder.feature_strides()[self.required_features(encoder)[0]]

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

    def decode(self, features, encoder: Encoder, input_size, train: bool):
        """Scores the coarsest feature, then upsamples and adds each scored skip: FCN fuses
        scores, not features, so its output is already the class scores."""
        caffe = self._caffe()
        names = self.required_features(encoder)
        strides = encoder.feature_strides()
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
            score = score_and_sum(score, skip_score, caffe.skip_offsets[name] if caffe else None)
            stride = strides[name]
        score = self._upsample(stride, f"upscore{stride}")(score)
        if caffe:
            score = crop_at(score, caffe.final_offsets[stride], *input_size)
        return score

    def head(self, scores):
        return scores  # the decoder's output is already scores (score_fr, score_pool4, ...)
