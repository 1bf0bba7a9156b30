"""Encoders: classification backbones made fully convolutional (contract: jaxseg.models.base).

`build_encoder` is the one place a model gets its encoder: by registered
name and options, checked for the features the model's decoder consumes.
"""

import functools

from jaxseg.models.base import Encoder
from jaxseg.models.encoders.mit import MixTransformer
from jaxseg.models.encoders.resnet import ResNet
from jaxseg.models.encoders.unet import UNetEncoder
from jaxseg.models.encoders.vgg import VGG16
from jaxseg.registry import Registry

ENCODERS = Registry(
    "encoder",
    {
        "vgg16": VGG16,
        "resnet18": functools.partial(ResNet, depth=18),
        "resnet34": functools.partial(ResNet, depth=34),
        "resnet50": functools.partial(ResNet, depth=50),
        "unet": UNetEncoder,
        # Mix Transformers as transformers' SegformerConfig for nvidia/mit-b0, -b1, -b2.
        "mit_b0": functools.partial(
            MixTransformer,
            hidden_sizes=(32, 64, 160, 256),
            depths=(2, 2, 2, 2),
            num_heads=(1, 2, 5, 8),
        ),
        "mit_b1": functools.partial(
            MixTransformer,
            hidden_sizes=(64, 128, 320, 512),
            depths=(2, 2, 2, 2),
            num_heads=(1, 2, 5, 8),
        ),
        "mit_b2": functools.partial(
            MixTransformer,
            hidden_sizes=(64, 128, 320, 512),
            depths=(3, 4, 6, 3),
            num_heads=(1, 2, 5, 8),
        ),
    },
)


def register_encoder(name: str, constructor=None):
    """Adds an Encoder subclass (or a partial of one) under `name`; without `constructor`, a
    class decorator that does. Its fields become `model.encoder_options`."""
    return ENCODERS.register(name, constructor)


def get_encoder(encoder_name: str, /, **options) -> Encoder:
    """Builds an encoder by name; a bad name or option is a ValueError listing what is allowed."""
    return ENCODERS.build(encoder_name, **options)


def build_encoder(encoder_name: str, options=None, *, detached: bool = False) -> Encoder:
    """The encoder a model uses: its submodule "encoder", or, `detached`, a free-standing
    copy whose declared features a model's contract methods can read outside `apply`."""
    placement = {"parent": None} if detached else {"name": "encoder"}
    return get_encoder(encoder_name, **placement, **dict(options or {}))


__all__ = [
    "ENCODERS",
    "Encoder",
    "MixTransformer",
    "ResNet",
    "UNetEncoder",
    "VGG16",
    "build_encoder",
    "get_encoder",
    "register_encoder",
]
