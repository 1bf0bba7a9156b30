"""ResNet-18/34/50 without its classifier, in the torchvision layout."""

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.base import Encoder, FeatureSpec
from jaxseg.models.layers import max_pool
from jaxseg.models.remat import checkpointed
from jaxseg.models.small_conv import Conv


def _conv_bn(x, features, kernel, strides, dilation, train, name):
    """torchvision's conv (no bias, symmetric padding) + BatchNorm."""
    pad = dilation * (kernel - 1) // 2
    x = Conv(
        features,
        (kernel, kernel),
        strides=strides,
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation,
        use_bias=False,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        dtype=x.dtype,
        name=f"{name}_conv",
    )(x)
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=x.dtype, name=f"{name}_bn"
    )(x)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: two 3x3 convs."""

    features: int
    strides: int = 1
    dilation: int = 1
    expansion = 1

    @nn.compact
    def __call__(self, x, train: bool):
        residual = x
        y = nn.relu(_conv_bn(x, self.features, 3, self.strides, self.dilation, train, "conv1"))
        y = _conv_bn(y, self.features, 3, 1, self.dilation, train, "conv2")
        if self.strides != 1 or x.shape[-1] != self.features:
            residual = _conv_bn(x, self.features, 1, self.strides, 1, train, "downsample")
        return nn.relu(y + residual)


class Bottleneck(nn.Module):
    """ResNet-50 block (torchvision v1.5: stride on the 3x3 conv): 1x1, 3x3, 1x1 (x4)."""

    features: int
    strides: int = 1
    dilation: int = 1
    expansion = 4

    @nn.compact
    def __call__(self, x, train: bool):
        out_features = self.features * self.expansion
        residual = x
        y = nn.relu(_conv_bn(x, self.features, 1, 1, 1, train, "conv1"))
        y = nn.relu(_conv_bn(y, self.features, 3, self.strides, self.dilation, train, "conv2"))
        y = _conv_bn(y, out_features, 1, 1, 1, train, "conv3")
        if self.strides != 1 or x.shape[-1] != out_features:
            residual = _conv_bn(x, out_features, 1, self.strides, 1, train, "downsample")
        return nn.relu(y + residual)


RESNET_LAYOUTS = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}
LAYER_WIDTHS = (64, 128, 256, 512)
OUTPUT_STRIDES = (8, 16, 32)


class ResNet(Encoder):
    """ResNet-18/34/50 in the torchvision layout; features "stem", "layer1".."layer4".

    Parameter names follow torchvision ("layer3_5/conv2_conv" = layer3[5].conv2)
    so ImageNet weights map one to one. `output_stride` 16 or 8 replaces the
    stride of layer4 (and layer3) by dilation, as torchvision's
    `replace_stride_with_dilation` (DeepLab): the first block of a dilated layer keeps
    the previous layer's dilation. `dilate_first_block` gives it the layer's own, as
    segmentation_models_pytorch's `make_dilated` does (its DeepLabV3+ sets it).
    """

    depth: int = 50
    output_stride: int = 32
    dilate_first_block: bool = False

    def _layout(self):
        if self.depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth {self.depth} is not one of {sorted(RESNET_LAYOUTS)}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride {self.output_stride} is not one of {OUTPUT_STRIDES}")
        block, sizes = RESNET_LAYOUTS[self.depth]
        # (stride, dilation, dilation before it, output stride) of layers 1..4.
        plan, stride, dilation = [], 4, 1
        for layer in range(1, 5):
            layer_stride = 1 if layer == 1 else 2
            previous = dilation
            if layer_stride == 2 and stride * 2 > self.output_stride:
                dilation, layer_stride = dilation * 2, 1
            stride *= layer_stride
            plan.append((layer_stride, dilation, previous, stride))
        return block, sizes, plan

    def feature_specs(self) -> dict[str, FeatureSpec]:
        block, _, plan = self._layout()
        specs = {"stem": FeatureSpec(2, 64)}
        for layer, (width, (_, _, _, stride)) in enumerate(zip(LAYER_WIDTHS, plan), start=1):
            specs[f"layer{layer}"] = FeatureSpec(stride, width * block.expansion)
        return specs

    @nn.compact
    def __call__(
        self, x, train: bool = False, frozen_bn: bool = False, remat: str = "none"
    ) -> dict[str, jnp.ndarray]:
        train = train and not frozen_bn  # batch norm is all that `train` changes here
        block, sizes, plan = self._layout()

        def stem(module, x):
            return nn.relu(_conv_bn(x, 64, 7, 2, 1, train, "stem"))

        x = checkpointed(self, stem, remat)(x)
        features = {"stem": x}
        x = max_pool(x, 3, 2, padding=1)
        for layer, (num_blocks, width, (strides, dilation, previous, _)) in enumerate(
            zip(sizes, LAYER_WIDTHS, plan), start=1
        ):
            for index in range(num_blocks):
                # torchvision: a dilated layer's first block keeps the previous dilation.
                first = index == 0 and not self.dilate_first_block
                options = dict(
                    strides=strides if index == 0 else 1,
                    dilation=previous if first else dilation,
                    name=f"layer{layer}_{index}",
                )

                def stage(module, x, width=width, options=options):
                    return block(width, **options)(x, train)

                x = checkpointed(self, stage, remat)(x)
            features[f"layer{layer}"] = x
        return self.with_aliases(features)
