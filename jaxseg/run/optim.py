"""The optimizer and learning-rate schedule of `config.optim`, by name.

Optimizers: `OPTIMIZERS`, constructors `(schedule, optim_config) -> GradientTransformation`;
schedules: `SCHEDULES`, `(optim_config, num_steps) -> optax.Schedule`. User code adds its
own with `register_optimizer` / `register_schedule` and names them in `optim.name` /
`optim.schedule`.
"""

import functools
import re

import jax
import optax

from jaxseg.errors import ConfigError
from jaxseg.registry import Registry

OPTIMIZERS = Registry("optimizer")
SCHEDULES = Registry("schedule")


def register_optimizer(name: str):
    """Decorator: `(schedule, optim_config) -> optax.GradientTransformation` as `optim.name`."""
    return OPTIMIZERS.register(name)


def register_schedule(name: str):
    """Decorator: `(optim_config, num_steps) -> optax.Schedule` as `optim.schedule`."""
    return SCHEDULES.register(name)


@register_schedule("cosine")
def cosine(optim_config, num_steps: int) -> optax.Schedule:
    """Linear warmup, then cosine decay to 0 at `num_steps`."""
    rate, warmup = optim_config.learning_rate, optim_config.warmup_steps
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup else rate,
        peak_value=rate,
        warmup_steps=warmup,
        decay_steps=max(num_steps, warmup + 1),
    )


@register_schedule("constant")
def constant(optim_config, num_steps: int) -> optax.Schedule:
    return optax.constant_schedule(optim_config.learning_rate)


@register_schedule("poly")
def poly(optim_config, num_steps: int) -> optax.Schedule:
    """Linear warmup, then (1 - t/T)^0.9 to 0 (the DeepLab/torchvision convention)."""
    rate, warmup = optim_config.learning_rate, optim_config.warmup_steps
    decay = optax.polynomial_schedule(rate, 0.0, 0.9, max(num_steps - warmup, 1))
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, rate, warmup), decay], [warmup])


@register_optimizer("adamw")
def adamw(schedule, optim_config) -> optax.GradientTransformation:
    return optax.adamw(schedule, weight_decay=optim_config.weight_decay)


@register_optimizer("sgd")
def sgd(schedule, optim_config) -> optax.GradientTransformation:
    """SGD with momentum; weight decay is added to the gradient (L2, as in Caffe)."""
    return optax.chain(
        optax.add_decayed_weights(optim_config.weight_decay),
        optax.sgd(schedule, momentum=optim_config.momentum),
    )


def make_schedule(optim_config, num_steps: int) -> optax.Schedule:
    """The learning rate against the step (`optim.schedule`)."""
    return SCHEDULES.get(optim_config.schedule)(optim_config, num_steps)


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
    schedule = make_schedule(optim_config, num_steps)
    base = OPTIMIZERS.get(optim_config.name)(schedule, optim_config)
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
