"""Segmentation loss terms, registered by name.

A term is `term(logits, labels, *, ignore_label, class_weights=None, pixel_weights=None,
**options) -> (total, weight)`, float32 scalars (float64 for float64 logits); the loss is
`total / weight` (`loss_value`). logits are (N, H, W, C) of any float dtype, computed in
float32; labels (N, H, W) ints, with `ignore_label` pixels counted nowhere.
- Pixel-decomposable terms (cross_entropy, focal) return (weighted sum over labelled pixels,
  sum of weights), so sums over devices or hosts give the exact global mean; they take
  class_weights (C,) and pixel_weights (N, H, W).
- Set-level terms (dice, tversky, jaccard, lovasz_softmax) return (value, 1): the value of the
  batch part they see. class_weights weight their class mean; pixel_weights are a ValueError.
Options are keyword-only with defaults (`loss_options`); a config sets them as
`config.loss.options.<term>.<option>`.
"""

import functools
from collections.abc import Callable

import jax.numpy as jnp

from jaxseg.errors import ConfigError
from jaxseg.losses.cross_entropy import mean_pixel_cross_entropy, pixel_cross_entropy
from jaxseg.losses.dice import dice_loss, soft_dice_loss
from jaxseg.losses.focal import focal_loss
from jaxseg.losses.lovasz import lovasz_softmax_loss
from jaxseg.losses.tversky import jaccard_loss, tversky_loss
from jaxseg.registry import Registry, option_parameters

LOSSES = Registry(
    "loss",
    {
        "cross_entropy": pixel_cross_entropy,
        "dice": dice_loss,
        "focal": focal_loss,
        "jaccard": jaccard_loss,
        "lovasz_softmax": lovasz_softmax_loss,
        "tversky": tversky_loss,
    },
)

# Arguments of every term that are not its options.
_TERM_ARGUMENTS = ("logits", "labels", "ignore_label", "class_weights", "pixel_weights")


def register_loss(name: str) -> Callable[[Callable], Callable]:
    """Decorator: adds a loss term (see the module docstring) under `name`; a name already
    registered is a ValueError."""

    def register(term: Callable) -> Callable:
        LOSSES.register(name, term)
        return term

    return register


def loss_names() -> list[str]:
    return LOSSES.names()


def loss_options(name: str) -> dict[str, object]:
    """{option: default} of loss term `name` (its arguments beyond the term contract)."""
    return {
        option: parameter.default
        for option, parameter in option_parameters(LOSSES.get(name)).items()
        if option not in _TERM_ARGUMENTS
    }


def get_loss(name: str, /, **options) -> Callable:
    """Loss term `name`, with `options` bound; a bad name or option is a ValueError listing
    what is allowed."""
    term = LOSSES.get(name)
    unknown = sorted(set(options) - set(loss_options(name)))
    if unknown:
        raise ConfigError(
            f"loss {name!r} has no option(s) {unknown}; its options are"
            f" {sorted(loss_options(name))}"
        )
    return functools.partial(term, **options) if options else term


def loss_value(total: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
    """`total / weight` of a term's result; 0 when nothing was labelled (weight 0)."""
    dtype = jnp.promote_types(jnp.result_type(total, weight), jnp.float32)
    weight = jnp.asarray(weight, dtype)
    return jnp.asarray(total, dtype) / jnp.maximum(weight, jnp.finfo(dtype).tiny)


__all__ = [
    "LOSSES",
    "dice_loss",
    "focal_loss",
    "get_loss",
    "jaccard_loss",
    "loss_names",
    "loss_options",
    "loss_value",
    "lovasz_softmax_loss",
    "mean_pixel_cross_entropy",
    "pixel_cross_entropy",
    "register_loss",
    "soft_dice_loss",
    "tversky_loss",
]
