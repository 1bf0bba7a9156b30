"""The U-Net contracting path as an encoder."""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.base import Encoder, FeatureSpec
from jaxseg.models.layers import DoubleConv, max_pool
from jaxseg.models.remat import checkpointed


class UNetEncoder(Encoder):
    """`depth` x (two 3x3 convs, 2x2 max-pool), channels doubling.

    Features "level0".."level{depth}" (the last is the bottleneck), level k at
    stride 2**k.
    """

    base_features: int = 64
    depth: int = 4
    padding: str = "SAME"
    use_batch_norm: bool = True

    def feature_specs(self) -> dict[str, FeatureSpec]:
        return {
            f"level{level}": FeatureSpec(2**level, self.base_features * 2**level)
            for level in range(self.depth + 1)
        }

    @nn.compact
    def __call__(
        self, x, train: bool = False, frozen_bn: bool = False, remat: str = "none"
    ) -> dict[str, jnp.ndarray]:
        train = train and not frozen_bn  # batch norm is all that `train` changes here
        features = {}
        for level in range(self.depth + 1):
            if level:  # outside the checkpointed stage, which keeps the pooled map (remat.py)
                x = max_pool(x, 2, 2)

            def stage(module, x, level=level):
                return DoubleConv(
                    module.base_features * 2**level,
                    module.padding,
                    module.use_batch_norm,
                    name=f"level{level}",
                )(x, train)

            x = checkpointed(self, stage, remat)(x)
            features[f"level{level}"] = x
        return self.with_aliases(features)
