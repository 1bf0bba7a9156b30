"""Encoders: classification backbones made fully convolutional, returning features by name.

Every encoder maps (N, H, W, C) images to a dict of feature maps and declares,
without running, the channels and stride of each (`feature_channels()`,
`feature_strides()`). Keys are the names the papers use (VGG: "conv4_3",
"pool3", "fc7"; ResNet: "stem", "layer1".."layer4"; U-Net: "level0"..) plus
"stride{s}": the deepest map at 1/s of the input resolution, which is what a
decoder consumes by stride.
"""

import functools

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.models.layers import DoubleConv, max_pool
from jaxseg.registry import Registry

VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))


class VGG16(nn.Module):
    """VGG16 as FCN uses it: 13 3x3 convs (ReLU), 5 2x2 max-pools, fc6/fc7 as convolutions.

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

    def feature_channels(self) -> dict[str, int]:
        channels = {}
        for block, (width, convs) in enumerate(VGG16_BLOCKS, start=1):
            channels[f"conv{block}_{convs}"] = width
            channels[f"pool{block}"] = width
            channels[f"stride{2 ** (block - 1)}"] = width
        if self.include_fc:
            channels.update(fc6=4096, fc7=4096, stride32=4096)
        else:
            channels["stride32"] = 512
        return channels

    def feature_strides(self) -> dict[str, int]:
        strides = {}
        for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1):
            strides[f"conv{block}_{convs}"] = 2 ** (block - 1)
            strides[f"pool{block}"] = 2**block
            strides[f"stride{2 ** (block - 1)}"] = 2 ** (block - 1)
        strides["stride32"] = 32
        if self.include_fc:
            strides.update(fc6=32, fc7=32)
        return strides

    @nn.compact
    def __call__(self, x, train: bool = False) -> dict[str, jnp.ndarray]:
        features = {}
        for block, (width, convs) in enumerate(VGG16_BLOCKS, start=1):
            for index in range(1, convs + 1):
                pad = self.input_padding if (block, index) == (1, 1) else 1
                x = nn.Conv(
                    width, (3, 3), padding=((pad, pad), (pad, pad)), name=f"conv{block}_{index}"
                )(x)
                x = nn.relu(x)
            features[f"conv{block}_{convs}"] = features[f"stride{2 ** (block - 1)}"] = x
            x = max_pool(x, 2, 2, ceil_mode=self.ceil_mode)
            features[f"pool{block}"] = x
        features["stride32"] = x
        if self.include_fc:
            for name, size, padding in (("fc6", 7, self.fc6_padding), ("fc7", 1, "VALID")):
                x = nn.Conv(4096, (size, size), padding=padding, name=name)(x)
                x = nn.relu(x)
                x = nn.Dropout(self.fc_dropout, deterministic=not train)(x)
                features[name] = x
            features["stride32"] = x
        return features


def _conv_bn(x, features, kernel, strides, dilation, train, name):
    """torchvision's conv (no bias, symmetric padding) + BatchNorm."""
    pad = dilation * (kernel - 1) // 2
    x = nn.Conv(
        features,
        (kernel, kernel),
        strides=strides,
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation,
        use_bias=False,
        kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        name=f"{name}_conv",
    )(x)
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, name=f"{name}_bn"
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
OUTPUT_STRIDES = (8, 16, 32)


class ResNet(nn.Module):
    """ResNet-18/34/50 without its classifier, in the torchvision layout.

    Parameter names follow torchvision ("layer3_5/conv2_conv" = layer3[5].conv2)
    so ImageNet weights map one to one. `output_stride` 16 or 8 replaces the
    stride of layer4 (and layer3) by dilation, as torchvision's
    `replace_stride_with_dilation` (DeepLab).
    """

    depth: int = 50
    output_stride: int = 32

    def _layout(self):
        if self.depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth {self.depth} is not one of {sorted(RESNET_LAYOUTS)}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride {self.output_stride} is not one of {OUTPUT_STRIDES}")
        block, sizes = RESNET_LAYOUTS[self.depth]
        # (stride, dilation) of layers 1..4, and the dilation before each layer.
        plan, stride, dilation = [], 4, 1
        for layer in range(1, 5):
            layer_stride = 1 if layer == 1 else 2
            previous = dilation
            if layer_stride == 2 and stride * 2 > self.output_stride:
                dilation, layer_stride = dilation * 2, 1
            stride *= layer_stride
            plan.append((layer_stride, dilation, previous, stride))
        return block, sizes, plan

    def feature_channels(self) -> dict[str, int]:
        block, _, _ = self._layout()
        channels = {"stem": 64, "stride2": 64}
        for layer, width in enumerate((64, 128, 256, 512), start=1):
            channels[f"layer{layer}"] = width * block.expansion
        for name, stride in self.feature_strides().items():
            if name.startswith("layer"):
                channels[f"stride{stride}"] = channels[name]
        return channels

    def feature_strides(self) -> dict[str, int]:
        _, _, plan = self._layout()
        strides = {"stem": 2, "stride2": 2}
        for layer, (_, _, _, stride) in enumerate(plan, start=1):
            strides[f"layer{layer}"] = strides[f"stride{stride}"] = stride
        return strides

    @nn.compact
    def __call__(self, x, train: bool = False) -> dict[str, jnp.ndarray]:
        block, sizes, plan = self._layout()
        x = nn.relu(_conv_bn(x, 64, 7, 2, 1, train, "stem"))
        features = {"stem": x, "stride2": x}
        x = max_pool(x, 3, 2, padding=1)
        for layer, (num_blocks, width, (strides, dilation, previous, stride)) in enumerate(
            zip(sizes, (64, 128, 256, 512), plan), start=1
        ):
            for index in range(num_blocks):
                # torchvision: a dilated layer's first block keeps the previous dilation.
                x = block(
                    width,
                    strides=strides if index == 0 else 1,
                    dilation=previous if index == 0 else dilation,
                    name=f"layer{layer}_{index}",
                )(x, train)
            features[f"layer{layer}"] = features[f"stride{stride}"] = x
        return features


class UNetEncoder(nn.Module):
    """U-Net contracting path: `depth` x (two 3x3 convs, 2x2 max-pool), channels doubling.

    Features "level0".."level{depth}" (the last is the bottleneck), also keyed
    "stride1".."stride{2**depth}".
    """

    base_features: int = 64
    depth: int = 4
    padding: str = "SAME"
    use_batch_norm: bool = True

    def feature_channels(self) -> dict[str, int]:
        channels = {}
        for level in range(self.depth + 1):
            channels[f"level{level}"] = channels[f"stride{2**level}"] = (
                self.base_features * 2**level
            )
        return channels

    def feature_strides(self) -> dict[str, int]:
        strides = {}
        for level in range(self.depth + 1):
            strides[f"level{level}"] = strides[f"stride{2**level}"] = 2**level
        return strides

    @nn.compact
    def __call__(self, x, train: bool = False) -> dict[str, jnp.ndarray]:
        features = {}
        for level in range(self.depth + 1):
            if level:
                x = max_pool(x, 2, 2)
            x = DoubleConv(
                self.base_features * 2**level,
                self.padding,
                self.use_batch_norm,
                name=f"level{level}",
            )(x, train)
            features[f"level{level}"] = features[f"stride{2**level}"] = x
        return features


ENCODERS = Registry(
    "encoder",
    {
        "vgg16": VGG16,
        "resnet18": functools.partial(ResNet, depth=18),
        "resnet34": functools.partial(ResNet, depth=34),
        "resnet50": functools.partial(ResNet, depth=50),
        "unet": UNetEncoder,
    },
)


def get_encoder(encoder_name: str, /, **options) -> nn.Module:
    """Builds an encoder by name; a bad name or option is a ValueError listing what is allowed."""
    return ENCODERS.build(encoder_name, **options)


def max_stride(encoder: nn.Module) -> int:
    """The coarsest stride among an encoder's "stride{s}" features."""
    return max(s for name, s in encoder.feature_strides().items() if name.startswith("stride"))
