"""SegFormer (Xie et al. 2021): a Mix Transformer encoder and the all-MLP decoder.

The decoder is transformers' SegformerDecodeHead: each stage projected by a linear layer to
`decoder_hidden_size` channels, upsampled (bilinear, half-pixel centres) to stride 4,
concatenated deepest first, fused by a 1x1 conv (no bias) + batch norm + ReLU, dropout, and
classified by a 1x1 conv at stride 4; the base class resizes the scores to the input.

Tiled prediction is allowed but is not the whole image's: the model has no positional
encoding (`position_dependent` is False) and its strided convs and sequence reductions all
lie on a 32-pixel grid (`tile_period` 32), but attention is global over its input, so a
tile's prediction differs from the whole image's everywhere in the tile, not only near its
edges (tested). Predict whole images (`tile=None`) where they fit, or with tiles as large as
memory allows (the paper's Cityscapes evaluation slides 1024x1024 windows).
"""

from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.base import SegmentationModel
from jaxseg.models.encoders import Encoder
from jaxseg.models.small_conv import Conv
from jaxseg.models.upsample import resize

STAGES = ("stage1", "stage2", "stage3", "stage4")
# transformers' decoder_hidden_size of the released SegFormer-B0/B1/B2 models.
DECODER_HIDDEN_SIZES = {"mit_b0": 256, "mit_b1": 256, "mit_b2": 768}


class SegFormer(SegmentationModel):
    """SegFormer: MiT encoder -> all-MLP decoder -> 1x1 classifier at stride 4.

    Parameter names follow transformers' SegformerForSemanticSegmentation checkpoints
    ("linear_c2" = decode_head.linear_c.1.proj, "linear_fuse", "batch_norm", "classifier").

    Attributes:
      num_classes: output channels of the classifier.
      decoder_hidden_size: channels of the decoder; None: the released model's for the
        encoder (256 for mit_b0/b1, 768 for mit_b2; 256 for another encoder).
      classifier_dropout: dropout before the classifier in training (rng "dropout").
      encoder: any encoder with features "stage1".."stage4" ("mit_b0", "mit_b1", "mit_b2").
      encoder_options: the encoder's options (MiT: `drop_path_rate`, 0.1).
      encoder_frozen_bn: the encoder's batch norm keeps its statistics (MiT has none).
    """

    num_classes: int
    decoder_hidden_size: int | None = None
    classifier_dropout: float = 0.1
    encoder: str = "mit_b0"
    encoder_options: Mapping | None = None
    encoder_frozen_bn: bool = False

    def check_options(self) -> None:
        size = self.decoder_hidden_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ConfigError(
                f"SegFormer: decoder_hidden_size={size!r} is not allowed; it must be an"
                " integer >= 1, or None for the released model's"
            )
        if not 0 <= self.classifier_dropout < 1:
            raise ConfigError(
                f"SegFormer: classifier_dropout={self.classifier_dropout!r} is not in [0, 1)"
            )

    def required_features(self, encoder: Encoder) -> tuple[str, ...]:
        encoder.require(STAGES, "SegFormer")
        return STAGES

    def input_multiple(self) -> int:
        return self.build_encoder(detached=True).max_stride()

    def global_context(self) -> bool:
        return True  # attention over the whole input, padding included

    def hidden_size(self) -> int:
        if self.decoder_hidden_size is not None:
            return self.decoder_hidden_size
        return DECODER_HIDDEN_SIZES.get(self.encoder, 256)

    def decode(self, features, encoder: Encoder, input_size, train: bool):
        size = self.hidden_size()
        height, width = features["stage1"].shape[1:3]
        projected = []
        for index, stage in enumerate(STAGES, start=1):
            x = features[stage]
            x = nn.Dense(size, dtype=x.dtype, name=f"linear_c{index}")(x)
            if x.shape[1:3] != (height, width):
                x = resize(x, height, width, "bilinear")
            projected.append(x)
        x = jnp.concatenate(projected[::-1], axis=-1)  # stage4 first, as transformers
        x = Conv(size, (1, 1), use_bias=False, dtype=x.dtype, name="linear_fuse")(x)
        x = nn.BatchNorm(
            use_running_average=not train,
            momentum=0.9,
            epsilon=1e-5,
            dtype=x.dtype,
            name="batch_norm",
        )(x)
        x = nn.relu(x)
        return nn.Dropout(self.classifier_dropout, deterministic=not train)(x)
