"""Applying a trained model to images of any size: tiled prediction, blending, TTA, export."""

from jaxseg.inference.network import probability_network
from jaxseg.inference.tiling import Predictor, default_tile

__all__ = ["Predictor", "default_tile", "probability_network"]
