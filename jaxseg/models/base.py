"""The two contracts models are built on.

Encoders. An encoder maps (N, H, W, C) images to a dict of feature maps and
declares each feature's stride and channels once, in forward order, without
running (`feature_specs`). The dict also holds "stride{s}", the deepest
feature at 1/s resolution, which is what a decoder consumes by stride.
`Encoder.require` is the one place that checks the features a decoder asks
for.

Models. A segmentation model states what input it takes, so that the input
pipeline, evaluation and tiled inference ask the model instead of testing
for a class: `input_multiple` (input sides must be multiples of it),
`input_padding` (how to pad an image so that the output covers it, for
models whose output is smaller than their input: the original U-Net),
`tile_period` (shifting the input by a multiple of it shifts the prediction
by as much: tiles on that grid predict what the whole image would) and
`position_dependent` (the prediction at a pixel depends on where the pixel
lies in the input, so the model cannot be applied tile by tile).

Every model also takes `dtype` and `remat` (keyword-only fields of the base class, so every
model config has them). `dtype` is the compute type: the model casts its input to it, and
every layer computes in the type of its input (`dtype=x.dtype`), while parameters, batch
norm statistics and the scores the model returns are float32 (softmax, loss and metrics
follow in float32). `remat`: jaxseg/models/remat.py.
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.models.remat import check_remat

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))


class FeatureSpec(NamedTuple):
    stride: int
    channels: int


class Encoder(nn.Module):
    """Base class of encoders; subclasses implement `feature_specs` and
    `__call__(x, train, frozen_bn=False, remat="none")` (`frozen_bn`: batch norm uses and
    keeps its running statistics even in training, as when fine-tuning with small batches;
    `remat`: each stage checkpointed, jaxseg/models/remat.py). They compute in the dtype of
    `x`."""

    def feature_specs(self) -> dict[str, FeatureSpec]:
        """{paper name: (stride, channels)} of every feature, in forward order."""
        raise NotImplementedError

    def _aliases(self) -> dict[str, str]:
        """{"stride{s}": the deepest feature at stride s}."""
        return {f"stride{spec.stride}": name for name, spec in self.feature_specs().items()}

    def feature_strides(self) -> dict[str, int]:
        specs = self.feature_specs()
        strides = {name: spec.stride for name, spec in specs.items()}
        return strides | {alias: specs[name].stride for alias, name in self._aliases().items()}

    def feature_channels(self) -> dict[str, int]:
        specs = self.feature_specs()
        channels = {name: spec.channels for name, spec in specs.items()}
        return channels | {alias: specs[name].channels for alias, name in self._aliases().items()}

    def strides(self) -> list[int]:
        """The distinct strides of the features, finest first."""
        return sorted({spec.stride for spec in self.feature_specs().values()})

    def max_stride(self) -> int:
        return self.strides()[-1]

    def feature_at(self, stride: int, which: str = "deepest") -> str:
        """The first or deepest feature at `stride`, by its unambiguous name.

        A feature alone at its stride is named "stride{s}"; where several share
        a stride (VGG16's pool4 and conv5_3), by its paper name.
        """
        names = [n for n, spec in self.feature_specs().items() if spec.stride == stride]
        if not names:
            raise ValueError(f"{type(self).__name__} has no feature at stride {stride}")
        if len(names) == 1:
            return f"stride{stride}"
        return names[0] if which == "first" else names[-1]

    def require(self, names, owner: str) -> None:
        """Raises ValueError if any of `names` is not a feature of this encoder."""
        strides = self.feature_strides()
        missing = [n for n in names if n not in strides]
        if missing:
            raise ValueError(
                f"{owner}: encoder {type(self).__name__} has no feature(s) {missing};"
                f" it has {sorted(strides)}"
            )

    def with_aliases(self, features: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
        """`features` (by paper name) plus the "stride{s}" aliases; ends every `__call__`."""
        return features | {alias: features[name] for alias, name in self._aliases().items()}


class SegmentationModel(nn.Module):
    """Base class of models: images (N, H, W, C) -> float32 class scores; declares its input
    needs.

    Attributes:
      dtype: compute type, "float32", "bfloat16" or "float16" (float16 trains with dynamic
        loss scaling: jaxseg/train/loss_scale.py); parameters stay float32.
      remat: "none", "blocks" or "convs" (jaxseg/models/remat.py).
    """

    dtype: str = dataclasses.field(default="float32", kw_only=True)
    remat: str = dataclasses.field(default="none", kw_only=True)

    def __post_init__(self):
        # Checked when the model is built, before anything is traced.
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(
                f"model.dtype={self.dtype!r} is not allowed; allowed: {tuple(COMPUTE_DTYPES)}"
            )
        check_remat(self.remat)
        super().__post_init__()

    def compute_input(self, x: jnp.ndarray) -> jnp.ndarray:
        """`x` in the compute dtype: what a model's `__call__` starts from."""
        return x.astype(COMPUTE_DTYPES[self.dtype])

    def input_multiple(self) -> int:
        """Input sides must be multiples of this (1: any size)."""
        return 1

    def input_padding(self, height: int, width: int) -> tuple[Pads, Pads] | None:
        """(image_pads, label_pads) that make the output cover a (height x width) image, for
        models whose output is smaller than their input; None when output = input."""
        return None

    def tile_period(self) -> int:
        """The input shift that leaves the computation unchanged (its pooling grid)."""
        return self.input_multiple()

    def position_dependent(self) -> bool:
        """True if a pixel's prediction depends on its absolute position in the input."""
        return False
