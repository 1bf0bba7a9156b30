"""The function every prediction path runs: uint8 images in, class probabilities out."""

import functools

import jax
import jax.numpy as jnp

from jaxseg.data.info import SegmentationInfo
from jaxseg.models.base import SegmentationModel


def probabilities(model: SegmentationModel, info: SegmentationInfo, variables, images):
    """Softmax of the model on uint8 (N, H, W, 3) images of a size it takes (normalisation
    inside, float32 out). Its output is the model's: smaller than the input for models with
    `input_padding`. Traceable; the variables are an argument, never a constant."""
    logits = model.apply(variables, info.normalize(images), train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def probability_network(model: SegmentationModel, info: SegmentationInfo):
    """`probabilities` with the model and info bound: network(variables, images)."""
    return functools.partial(probabilities, model, info)
