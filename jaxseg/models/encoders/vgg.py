"""VGG16 as FCN uses it: 13 3x3 convs, 5 max-pools, fc6/fc7 as convolutions."""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.base import CaffeAlignment, Encoder, FeatureSpec
from jaxseg.models.layers import max_pool
from jaxseg.models.remat import checkpointed
from jaxseg.models.small_conv import Conv

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (width, convs) per block
# The reference voc-fcn{32,16,8}s nets: conv1_1 padded by 100, ceil-mode pooling, fc6
# unpadded, and the crop offsets Caffe computed for pool4, pool3 and the final maps.
CAFFE = CaffeAlignment(
    options=dict(input_padding=100, ceil_mode=True, fc6_padding="VALID"),
    skip_offsets={"pool4": 5, "pool3": 9},
    final_offsets={32: 19, 16: 27, 8: 31},
)


class VGG16(Encoder):
    """VGG16 made fully convolutional (Long et al. 2015).

    Features: conv{b}_{last} (before pooling) and pool{b} for blocks 1-5, and
    fc6, fc7 (7x7 and 1x1 convolutions, ReLU, dropout) when `include_fc`.

    Attributes:
      include_fc: add fc6 (7x7x4096) and fc7 (1x1x4096), each ReLU + dropout.
      fc_dropout: dropout rate after fc6 and fc7 (0.5 in the paper).
      input_padding: padding of conv1_1; FCN pads 100 so that any input
        survives fc6's unpadded 7x7 conv ("caffe" alignment). 1 = "same".
      ceil_mode: Caffe pooling, which rounds the output size up.
      fc6_padding: "SAME" or "VALID" (Caffe's FCN: VALID).
    """

    include_fc: bool = True
    fc_dropout: float = 0.5
    input_padding: int = 1
    ceil_mode: bool = False
    fc6_padding: str = "SAME"

    def caffe_alignment(self) -> CaffeAlignment:
        return CAFFE

    def feature_specs(self) -> dict[str, FeatureSpec]:
        specs = {}
        for block, (width, convs) in enumerate(VGG16_BLOCKS, start=1):
            specs[f"conv{block}_{convs}"] = FeatureSpec(2 ** (block - 1), width)
            specs[f"pool{block}"] = FeatureSpec(2**block, width)
        if self.include_fc:
            specs.update(fc6=FeatureSpec(32, 4096), fc7=FeatureSpec(32, 4096))
        return specs

    @nn.compact
    def __call__(
        self, x, train: bool = False, frozen_bn: bool = False, remat: str = "none"
    ) -> dict[str, jnp.ndarray]:
        del frozen_bn  # no batch norm; `train` switches dropout
        features = {}
        for block, (width, convs) in enumerate(VGG16_BLOCKS, start=1):

            def stage(module, x, block=block, width=width, convs=convs):
                for index in range(1, convs + 1):
                    pad = module.input_padding if (block, index) == (1, 1) else 1
                    x = Conv(
                        width,
                        (3, 3),
                        padding=((pad, pad), (pad, pad)),
                        dtype=x.dtype,
                        name=f"conv{block}_{index}",
                    )(x)
                    x = nn.relu(x)
                return x

            x = checkpointed(self, stage, remat)(x)
            features[f"conv{block}_{convs}"] = x
            x = max_pool(x, 2, 2, ceil_mode=self.ceil_mode)
            features[f"pool{block}"] = x
        if self.include_fc:

            def fully_connected(module, x):
                outputs = []
                for name, size, padding in (("fc6", 7, module.fc6_padding), ("fc7", 1, "VALID")):
                    x = Conv(4096, (size, size), padding=padding, dtype=x.dtype, name=name)(x)
                    x = nn.relu(x)
                    x = nn.Dropout(module.fc_dropout, deterministic=not train)(x)
                    outputs.append(x)
                return tuple(outputs)

            features["fc6"], features["fc7"] = checkpointed(self, fully_connected, remat)(x)
        return self.with_aliases(features)
