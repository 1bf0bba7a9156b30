"""Score heads: 1x1 convolutions from features to per-class scores."""

import flax.linen as nn


class ScoreHead(nn.Module):
    """1x1 conv with bias to `num_classes` scores; FCN initialises it to zero (the default)."""

    num_classes: int
    zero_init: bool = True

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.zero_init else nn.initializers.lecun_normal()
        return nn.Conv(self.num_classes, (1, 1), kernel_init=init, dtype=x.dtype, name="conv")(x)
