"""Mix Transformer (MiT-B0/B1/B2), SegFormer's encoder (Xie et al. 2021), in the layout of
Hugging Face transformers' SegformerModel.

Four stages, each an overlapping patch embedding (a strided conv + LayerNorm), blocks of
efficient self-attention (keys and values from a map reduced by a conv of kernel = stride =
the stage's sr ratio, + LayerNorm) and Mix-FFN (dense, 3x3 depthwise conv, GELU, dense), then
a LayerNorm; no positional encoding (the depthwise conv gives position). Tokens stay NHWC
maps throughout; only the attention flattens them.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxseg.models.base import Encoder, FeatureSpec
from jaxseg.models.platforms import per_platform
from jaxseg.models.remat import checkpointed
from jaxseg.models.small_conv import Conv

PATCH_SIZES = (7, 3, 3, 3)
PATCH_STRIDES = (4, 2, 2, 2)
SR_RATIOS = (8, 4, 2, 1)
MLP_RATIO = 4
LAYER_NORM_EPSILON = 1e-5  # torch.nn.LayerNorm's default, which every MiT LayerNorm uses

# transformers initialises linear layers from N(0, 0.02); convs as the original code does.
DENSE_INIT = nn.initializers.truncated_normal(0.02)
CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _dense(x, features: int, name: str):
    return nn.Dense(features, kernel_init=DENSE_INIT, dtype=x.dtype, name=name)(x)


def _layer_norm(x, name: str):
    return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, dtype=x.dtype, name=name)(x)


def attention(query, key, value):
    """Multi-head attention of (B, T, heads, d) queries over (B, S, heads, d) keys/values.

    softmax(Q K^T / sqrt(d)) V by `jax.nn.dot_product_attention`, which computes it with
    XLA unless told otherwise. cuDNN's fused kernel takes float16/bfloat16 only and can be
    traced only where cuDNN is installed, so there, for those types, both forms are traced
    and each platform lowers its own (`per_platform`: an export for CPU and CUDA carries
    both; an ONNX export XLA's alone); everywhere else it is XLA's.
    """
    if query.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return per_platform(
                query,
                key,
                value,
                cuda=functools.partial(jax.nn.dot_product_attention, implementation="cudnn"),
                default=functools.partial(jax.nn.dot_product_attention, implementation="xla"),
            )
        except (RuntimeError, ValueError, NotImplementedError):
            pass  # no cuDNN here, or shapes its kernel does not take
    return jax.nn.dot_product_attention(query, key, value, implementation="xla")


class EfficientSelfAttention(nn.Module):
    """Self-attention whose keys and values come from the map reduced `sr_ratio` times."""

    num_heads: int
    sr_ratio: int

    @nn.compact
    def __call__(self, x):
        batch, height, width, channels = x.shape
        head_dim = channels // self.num_heads
        query = _dense(x, channels, "query").reshape(batch, -1, self.num_heads, head_dim)
        reduced = x
        if self.sr_ratio > 1:
            ratio = (self.sr_ratio, self.sr_ratio)
            reduced = Conv(
                channels,
                ratio,
                strides=ratio,
                padding="VALID",
                kernel_init=CONV_INIT,
                dtype=x.dtype,
                name="sr",
            )(x)
            reduced = _layer_norm(reduced, "layer_norm")
        key = _dense(reduced, channels, "key").reshape(batch, -1, self.num_heads, head_dim)
        value = _dense(reduced, channels, "value").reshape(batch, -1, self.num_heads, head_dim)
        context = attention(query, key, value).reshape(batch, height, width, channels)
        return _dense(context, channels, "output")


class MixFFN(nn.Module):
    """dense -> 3x3 depthwise conv -> GELU (exact, as torch's) -> dense."""

    hidden_features: int

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        y = _dense(x, self.hidden_features, "dense1")
        y = Conv(
            self.hidden_features,
            (3, 3),
            padding=((1, 1), (1, 1)),
            feature_group_count=self.hidden_features,
            kernel_init=nn.initializers.variance_scaling(2.0, "fan_in", "normal"),
            dtype=y.dtype,
            name="dwconv",
        )(y)
        return _dense(nn.gelu(y, approximate=False), channels, "dense2")


class MixBlock(nn.Module):
    """Pre-norm transformer block; both residual branches dropped per sample (drop path)."""

    num_heads: int
    sr_ratio: int
    drop_path: float

    @nn.compact
    def __call__(self, x, train: bool):
        # Stochastic depth: one keep/drop draw per image (broadcast over H, W, C).
        drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train)
        y = EfficientSelfAttention(self.num_heads, self.sr_ratio, name="attention")(
            _layer_norm(x, "layer_norm_1")
        )
        x = x + drop(y)
        y = MixFFN(MLP_RATIO * x.shape[-1], name="mlp")(_layer_norm(x, "layer_norm_2"))
        return x + drop(y)


class OverlapPatchEmbed(nn.Module):
    """Conv of kernel `patch_size`, stride `stride`, padding patch_size // 2, + LayerNorm."""

    features: int
    patch_size: int
    stride: int

    @nn.compact
    def __call__(self, x):
        pad = self.patch_size // 2
        x = Conv(
            self.features,
            (self.patch_size, self.patch_size),
            strides=self.stride,
            padding=((pad, pad), (pad, pad)),
            kernel_init=CONV_INIT,
            dtype=x.dtype,
            name="proj",
        )(x)
        return _layer_norm(x, "layer_norm")


class MixTransformer(Encoder):
    """MiT encoder; features "stage1".."stage4" at strides 4, 8, 16, 32.

    Parameter names follow transformers' SegformerModel as its checkpoints store them
    ("block2_1/attention/query" = segformer.encoder.block.1.1.attention.self.query,
    jaxseg/models/pretrained.py). Every layer computes in the dtype of its input.

    Attributes:
      hidden_sizes: channels of the four stages.
      depths: blocks per stage.
      num_heads: attention heads per stage.
      drop_path_rate: stochastic depth of the last block; block k of n drops its residual
        branches with probability rate * k / (n - 1) in training (rng "dropout").
    """

    hidden_sizes: tuple[int, ...] = (32, 64, 160, 256)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (1, 2, 5, 8)
    drop_path_rate: float = 0.1

    def feature_specs(self) -> dict[str, FeatureSpec]:
        specs, stride = {}, 1
        for stage, (patch_stride, channels) in enumerate(
            zip(PATCH_STRIDES, self.hidden_sizes), start=1
        ):
            stride *= patch_stride
            specs[f"stage{stage}"] = FeatureSpec(stride, channels)
        return specs

    def drop_path_rates(self) -> list[float]:
        """Per block, in forward order: linear from 0 to `drop_path_rate` (transformers')."""
        total = sum(self.depths)
        return [self.drop_path_rate * k / max(total - 1, 1) for k in range(total)]

    @nn.compact
    def __call__(
        self, x, train: bool = False, frozen_bn: bool = False, remat: str = "none"
    ) -> dict[str, jnp.ndarray]:
        del frozen_bn  # no batch norm; `train` switches drop path
        rates = iter(self.drop_path_rates())
        features = {}
        for stage in range(1, 5):
            channels = self.hidden_sizes[stage - 1]
            x = OverlapPatchEmbed(
                channels,
                PATCH_SIZES[stage - 1],
                PATCH_STRIDES[stage - 1],
                name=f"patch_embed{stage}",
            )(x)
            for index in range(self.depths[stage - 1]):
                options = dict(
                    num_heads=self.num_heads[stage - 1],
                    sr_ratio=SR_RATIOS[stage - 1],
                    drop_path=next(rates),
                    name=f"block{stage}_{index}",
                )

                def block(module, x, options=options):
                    return MixBlock(**options)(x, train)

                x = checkpointed(self, block, remat)(x)
            x = _layer_norm(x, f"norm{stage}")
            features[f"stage{stage}"] = x
        return self.with_aliases(features)
