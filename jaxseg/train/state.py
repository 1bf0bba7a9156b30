"""Train state (params, batch_stats, optimizer state) and the optimizer built from a config."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """flax TrainState plus batch norm statistics."""

    batch_stats: Any = None


def make_optimizer(optim_config, num_steps: int) -> optax.GradientTransformation:
    """The optimizer and learning-rate schedule named by `config.optim`."""
    if optim_config.schedule == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0 if optim_config.warmup_steps else optim_config.learning_rate,
            peak_value=optim_config.learning_rate,
            warmup_steps=optim_config.warmup_steps,
            decay_steps=max(num_steps, optim_config.warmup_steps + 1),
        )
    elif optim_config.schedule == "constant":
        schedule = optax.constant_schedule(optim_config.learning_rate)
    else:
        raise ValueError(
            f"unknown optim.schedule {optim_config.schedule!r}; allowed: 'cosine', 'constant'"
        )
    if optim_config.name == "adamw":
        optimizer = optax.adamw(schedule, weight_decay=optim_config.weight_decay)
    elif optim_config.name == "sgd":
        optimizer = optax.chain(
            optax.add_decayed_weights(optim_config.weight_decay),
            optax.sgd(schedule, momentum=optim_config.momentum),
        )
    else:
        raise ValueError(f"unknown optim.name {optim_config.name!r}; allowed: 'adamw', 'sgd'")
    if optim_config.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), optimizer)
    return optimizer


def create_train_state(
    rng: jax.Array, model: nn.Module, tx: optax.GradientTransformation, image_shape
) -> TrainState:
    """Initialises params and batch_stats for images of `image_shape` (H, W, C)."""
    variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        tx=tx,
    )


def count_params(params) -> int:
    return sum(x.size for x in jax.tree.leaves(params))
