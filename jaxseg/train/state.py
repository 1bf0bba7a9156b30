"""Train state (params, batch_stats, optimizer state) and the optimizer built from a config."""

import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from jaxseg.errors import ConfigError
from jaxseg.train.loss_scale import LossScale, needs_loss_scale


class TrainState(train_state.TrainState):
    """flax TrainState plus batch norm statistics."""

    batch_stats: Any = None


class LossScaledTrainState(TrainState):
    """TrainState plus the dynamic loss scale of float16 training (jaxseg/train/loss_scale.py)."""

    loss_scale: LossScale | None = None


SCHEDULES = ("cosine", "constant", "poly")
OPTIMIZERS = ("adamw", "sgd")


def make_schedule(optim_config, num_steps: int) -> optax.Schedule:
    """The learning rate against the step: linear warmup, then cosine, constant or poly
    ((1 - t/T)^0.9, the DeepLab/torchvision convention) decay to 0 at `num_steps`."""
    rate, warmup = optim_config.learning_rate, optim_config.warmup_steps
    if optim_config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else rate,
            peak_value=rate,
            warmup_steps=warmup,
            decay_steps=max(num_steps, warmup + 1),
        )
    if optim_config.schedule == "constant":
        return optax.constant_schedule(rate)
    if optim_config.schedule == "poly":
        poly = optax.polynomial_schedule(rate, 0.0, 0.9, max(num_steps - warmup, 1))
        if not warmup:
            return poly
        return optax.join_schedules([optax.linear_schedule(0.0, rate, warmup), poly], [warmup])
    raise ConfigError(f"unknown optim.schedule {optim_config.schedule!r}; allowed: {SCHEDULES}")


def _base_optimizer(optim_config, schedule) -> optax.GradientTransformation:
    if optim_config.name == "adamw":
        return optax.adamw(schedule, weight_decay=optim_config.weight_decay)
    if optim_config.name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(optim_config.weight_decay),
            optax.sgd(schedule, momentum=optim_config.momentum),
        )
    raise ConfigError(f"unknown optim.name {optim_config.name!r}; allowed: {OPTIMIZERS}")


def parameter_path(path) -> str:
    """ "encoder/layer1_0/conv1_conv/kernel" for a key path of a params tree."""
    return "/".join(str(getattr(key, "key", key)) for key in path)


def frozen_pattern(optim_config) -> str:
    """The regular expression of the frozen parameters' paths ("" = none); "encoder" is
    short for every encoder parameter."""
    return "^encoder/" if optim_config.freeze == "encoder" else optim_config.freeze


def parameter_groups(params, optim_config):
    """ "frozen", "encoder" or "rest" for every parameter (the labels of multi_transform)."""
    pattern = frozen_pattern(optim_config)

    def label(path, _):
        name = parameter_path(path)
        if pattern and re.search(pattern, name):
            return "frozen"
        return "encoder" if name.startswith("encoder/") else "rest"

    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(optim_config, num_steps: int) -> optax.GradientTransformation:
    """The optimizer and learning-rate schedule named by `config.optim`.

    `optim.freeze` (a path pattern, or "encoder") holds parameters fixed with
    `multi_transform` + `set_to_zero` (not `optax.masked`, which passes the
    unmasked updates through, so "frozen" parameters would still move);
    `optim.encoder_lr_mult` scales the encoder's learning rate.
    """
    if optim_config.freeze:
        try:
            re.compile(frozen_pattern(optim_config))
        except re.error as e:
            raise ConfigError(f"optim.freeze {optim_config.freeze!r} is not a pattern: {e}") from e
    base = _base_optimizer(optim_config, make_schedule(optim_config, num_steps))
    mult = optim_config.encoder_lr_mult
    if optim_config.freeze or mult != 1.0:
        encoder = base if mult == 1.0 else optax.chain(base, optax.scale(mult))
        base = optax.multi_transform(
            {"frozen": optax.set_to_zero(), "encoder": encoder, "rest": base},
            functools.partial(parameter_groups, optim_config=optim_config),
        )
    if optim_config.grad_clip_norm:
        base = optax.chain(optax.clip_by_global_norm(optim_config.grad_clip_norm), base)
    return base


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
