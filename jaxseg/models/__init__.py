"""Model registry: `get_model(name, **options)` builds a Flax module by name.

Sizes and variants are partials of one module (FCN-32s/16s/8s differ only in
`num_skips`), as in the flax examples.
"""

import functools

from jaxseg.models.base import Encoder, FeatureSpec, SegmentationModel
from jaxseg.models.deeplab import DeepLabV3, DeepLabV3Plus
from jaxseg.models.encoders import register_encoder
from jaxseg.models.fcn import FCN
from jaxseg.models.hypercolumn import Hypercolumn
from jaxseg.models.segformer import SegFormer
from jaxseg.models.unet import UNet
from jaxseg.registry import Registry

MODELS = Registry(
    "model",
    {
        "fcn32s": functools.partial(FCN, num_skips=0),
        "fcn16s": functools.partial(FCN, num_skips=1),
        "fcn8s": functools.partial(FCN, num_skips=2),
        "hypercolumn": Hypercolumn,
        "segformer": SegFormer,
        "unet": UNet,
        "unet_original": functools.partial(UNet, padding="VALID", use_batch_norm=False),
        "deeplabv3": DeepLabV3,
        "deeplabv3plus": DeepLabV3Plus,
    },
)


def register_model(name: str, constructor=None):
    """Adds a model constructor (a SegmentationModel subclass or a partial of one) under
    `name`; without `constructor`, a class decorator that does."""
    return MODELS.register(name, constructor)


def model_names() -> list[str]:
    return MODELS.names()


def model_options(name: str) -> list[str]:
    """The keyword arguments `get_model(name, ...)` accepts."""
    return MODELS.options(name)


def get_model(model_name: str, /, **options) -> SegmentationModel:
    """Builds a registered model; a bad name or option is a ValueError listing what is allowed."""
    return MODELS.build(model_name, **options)


__all__ = [
    "MODELS",
    "Encoder",
    "FeatureSpec",
    "SegmentationModel",
    "get_model",
    "model_names",
    "model_options",
    "register_encoder",
    "register_model",
]
