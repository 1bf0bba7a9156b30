"""Train state: params, batch_stats, optimizer state (and a float16 model's loss scale)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxseg.run.loss_scale import LossScale, needs_loss_scale


class TrainState(train_state.TrainState):
    """flax TrainState plus batch norm statistics."""

    batch_stats: Any = None


class LossScaledTrainState(TrainState):
    """TrainState plus the dynamic loss scale of float16 training (jaxseg/run/loss_scale.py)."""

    loss_scale: LossScale | None = None


def create_train_state(
    rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation, image_shape
) -> TrainState:
    """Initialises params and batch_stats for images of `image_shape` (H, W, C); a float16
    model's state carries a loss scale too."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    fields = dict(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
    )
    if needs_loss_scale(getattr(model, "dtype", "float32")):
        return LossScaledTrainState.create(**fields, loss_scale=LossScale.create())
    return TrainState.create(**fields)


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
