"""Applying a trained model to images of any size: tiled prediction, blending, TTA."""

from jaxseg.inference.tiling import Predictor

__all__ = ["Predictor"]
