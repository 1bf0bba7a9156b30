"""Hypercolumns (Hariharan et al. 2015): per-pixel classifiers on features from many layers.

The hypercolumn of a pixel stacks the activations above it in several layers.
Each chosen layer is projected by a 1x1 conv (a linear classifier on the
concatenated hypercolumn is a sum of per-layer linear maps), brought to one
resolution with the resize upsampler, fused (sum or concatenation), passed
through a ReLU and classified per pixel. As in the paper, the classifier can
be a coarse K x K grid of location-specific classifiers whose outputs are
interpolated bilinearly across the image, so that a pixel's classifier depends
on where it lies.
"""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxseg.errors import ConfigError
from jaxseg.models.base import SegmentationModel
from jaxseg.models.encoders import Encoder
from jaxseg.models.upsample import resize

FUSIONS = ("sum", "concat")


def default_hypercolumn_features(encoder: Encoder) -> tuple[str, ...]:
    """A low, a middle and the top layer, the paper's choice on any encoder: the first
    feature at stride 4, the deepest at 8 and at the top (VGG16: pool2, conv4_3, fc7)."""
    return (
        encoder.feature_at(4, "first"),
        encoder.feature_at(8, "deepest"),
        encoder.feature_at(encoder.max_stride(), "deepest"),
    )


def grid_interpolation_weights(size: int, grid: int) -> np.ndarray:
    """(size, grid) weights: each pixel's bilinear share of the `grid` classifiers along one axis.

    Classifier k sits at the centre of the k-th of `grid` equal cells; pixels
    before the first or after the last centre take that classifier alone.
    """
    position = (np.arange(size) + 0.5) / size * grid - 0.5
    position = np.clip(position, 0, grid - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, grid - 1)
    frac = position - low
    weights = np.zeros((size, grid), np.float32)
    np.add.at(weights, (np.arange(size), low), 1 - frac)
    np.add.at(weights, (np.arange(size), high), frac)
    return weights


class Hypercolumn(SegmentationModel):
    """Hypercolumn segmentation network.

    Attributes:
      num_classes: output channels.
      encoder, encoder_options: the backbone (default VGG16 with fc6/fc7).
      features: layers whose activations form the hypercolumn (default
        `default_hypercolumn_features`).
      projection_features: width of each layer's 1x1 projection.
      fusion: "sum" or "concat" of the projected, resized layers.
      resolution: stride at which the hypercolumns are classified (default:
        the finest chosen layer's); the scores are then resized to the input.
      location_grid: K; 1 is a single classifier, K > 1 a K x K grid of
        location-specific classifiers interpolated per pixel.
      resize_method: "bilinear" or "nearest".
      encoder_frozen_bn: the encoder's batch norm keeps its statistics in training.
    """

    num_classes: int
    encoder: str = "vgg16"
    encoder_options: Mapping | None = None
    features: Sequence[str] | None = None
    projection_features: int = 256
    fusion: str = "sum"
    resolution: int | None = None
    location_grid: int = 1
    resize_method: str = "bilinear"
    encoder_frozen_bn: bool = False

    def check_options(self) -> None:
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion {self.fusion!r} is not one of {FUSIONS}")
        if self.location_grid < 1:
            raise ConfigError(f"location_grid must be >= 1, got {self.location_grid}")

    def required_features(self, encoder: Encoder) -> tuple[str, ...]:
        names = tuple(self.features or default_hypercolumn_features(encoder))
        encoder.require(names, "Hypercolumn")
        return names

    def input_multiple(self) -> int:
        encoder = self.build_encoder(detached=True)
        strides = encoder.feature_strides()
        coarsest = max(strides[n] for n in self.required_features(encoder))
        return int(np.lcm(coarsest, self.resolution or 1))

    def position_dependent(self) -> bool:
        return self.location_grid > 1

    def decode(self, features, encoder: Encoder, input_size, train: bool):
        """The fused, rectified hypercolumns at `resolution`."""
        names = self.required_features(encoder)
        strides = encoder.feature_strides()
        resolution = self.resolution or min(strides[n] for n in names)
        first = features[names[0]]
        out_h = first.shape[1] * strides[names[0]] // resolution
        out_w = first.shape[2] * strides[names[0]] // resolution
        columns = []
        for name in names:
            column = nn.Conv(
                self.projection_features, (1, 1), dtype=first.dtype, name=f"project_{name}"
            )(features[name])
            columns.append(resize(column, out_h, out_w, self.resize_method))
        fused = sum(columns) if self.fusion == "sum" else jnp.concatenate(columns, axis=-1)
        return nn.relu(fused)

    def head(self, fused):
        """One classifier, or a K x K grid of them interpolated per pixel (the base resizes
        the scores to the input with `resize_method`)."""
        grid = self.location_grid
        out_h, out_w = fused.shape[1:3]
        scores = nn.Conv(
            self.num_classes * grid * grid, (1, 1), dtype=fused.dtype, name="classifier"
        )(fused)
        if grid > 1:
            scores = scores.reshape(*scores.shape[:3], grid, grid, self.num_classes)
            # float32 weights would promote the scores back to float32.
            rows = jnp.asarray(grid_interpolation_weights(out_h, grid), fused.dtype)
            cols = jnp.asarray(grid_interpolation_weights(out_w, grid), fused.dtype)
            scores = jnp.einsum("nyxijc,yi,xj->nyxc", scores, rows, cols)
        return scores

    def score_resize_method(self) -> str:
        return self.resize_method
