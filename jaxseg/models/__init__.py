"""Model registry: `get_model(name, **kwargs)` builds a Flax module by name."""

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn

from jaxseg.models.unet import UNet

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "unet_original": functools.partial(UNet, padding="VALID", use_batch_norm=False),
}


def register_model(name: str, constructor: Callable[..., nn.Module]) -> None:
    """Adds a model constructor (a Module class or a partial of one) under `name`."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = constructor


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def model_options(name: str) -> list[str]:
    """The keyword arguments `get_model(name, ...)` accepts."""
    constructor = _get_constructor(name)
    module_class = constructor.func if isinstance(constructor, functools.partial) else constructor
    return sorted(
        f.name
        for f in dataclasses.fields(module_class)
        if f.init and f.name not in ("parent", "name")
    )


def get_model(name: str, **kwargs) -> nn.Module:
    """Builds the model registered as `name` with `kwargs` as its attributes.

    Raises:
      ValueError: unknown name or option; the message lists what is allowed.
    """
    constructor = _get_constructor(name)
    unknown = sorted(set(kwargs) - set(model_options(name)))
    if unknown:
        raise ValueError(
            f"model {name!r} has no option(s) {unknown}; its options are {model_options(name)}"
        )
    return constructor(**kwargs)


def _get_constructor(name: str) -> Callable[..., nn.Module]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {model_names()}")
    return _REGISTRY[name]
