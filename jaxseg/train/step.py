"""The pure train and eval steps: (state, batch, rng) -> (state, metrics).

Metrics are sums (loss total, loss weight, confusion matrix), so adding them
over steps, devices or hosts gives exact global values.

`axis_name` is for the pmap form, where each device sees its part of the
batch: the loss is still normalised by the global weight, gradients and
metrics are summed over the axis, and batch norm statistics (computed per
device, i.e. unsynchronised BN) are averaged. Under jit + sharding (the
default) `axis_name` is None and XLA does all of this on the global batch.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.losses import pixel_cross_entropy, soft_dice_loss
from jaxseg.metrics import confusion_matrix
from jaxseg.models.layers import center_crop

# ImageNet statistics, the convention of the pretrained encoders.
IMAGE_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGE_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def normalize_images(images: jnp.ndarray) -> jnp.ndarray:
    """uint8 (N, H, W, 3) -> float32, per-channel standardised."""
    return (images.astype(jnp.float32) - IMAGE_MEAN) / IMAGE_STD


def align_targets(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Centre-crops (N, H, W) targets to the logits' size.

    Models with unpadded convolutions (the original U-Net) predict the centre
    of their input tile only.
    """
    if targets.shape[1:3] == logits.shape[1:3]:
        return targets
    return center_crop(targets[..., None], *logits.shape[1:3])[..., 0]


def _loss_and_metrics(
    logits, batch, loss_config, num_classes, ignore_label, class_weights, axis_name=None
):
    labels = align_targets(logits, batch["mask"])
    pixel_weights = None
    if loss_config.use_pixel_weights:
        pixel_weights = align_targets(logits, batch["weight"])
    total, weight_sum = pixel_cross_entropy(
        logits, labels, ignore_label, class_weights, pixel_weights
    )
    global_weight = jax.lax.psum(weight_sum, axis_name) if axis_name else weight_sum
    loss = total / jnp.maximum(global_weight, 1e-12)
    if loss_config.dice_weight:
        dice = soft_dice_loss(logits, labels, ignore_label)
        if axis_name:  # summed over devices below: their mean
            dice = dice / jax.lax.psum(1, axis_name)
        loss = loss + loss_config.dice_weight * dice
    metrics = {
        "loss_sum": total,
        "loss_weight": weight_sum,
        "confusion": confusion_matrix(labels, jnp.argmax(logits, -1), num_classes, ignore_label),
    }
    return loss, metrics


def train_step(
    state,
    batch,
    rng,
    *,
    loss_config,
    num_classes,
    ignore_label,
    class_weights=None,
    axis_name=None,
):
    """One optimisation step on a (global) batch. Returns (new_state, metric sums).

    `rng` is the run's base key; the step number is folded in, so every step
    draws fresh dropout masks and a resumed run draws the same ones.
    """
    rng = jax.random.fold_in(rng, state.step)
    if axis_name:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            normalize_images(batch["image"]),
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss, metrics = _loss_and_metrics(
            logits, batch, loss_config, num_classes, ignore_label, class_weights, axis_name
        )
        return loss, (metrics, updates)

    (_, (metrics, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    batch_stats = updates.get("batch_stats", state.batch_stats)
    if axis_name:
        grads = jax.lax.psum(grads, axis_name)
        metrics = jax.lax.psum(metrics, axis_name)
        batch_stats = jax.lax.pmean(batch_stats, axis_name)
    return state.apply_gradients(grads=grads, batch_stats=batch_stats), metrics


def eval_step(
    state, batch, *, loss_config, num_classes, ignore_label, class_weights=None, axis_name=None
):
    """Metric sums of the model in inference mode on a batch."""
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        normalize_images(batch["image"]),
        train=False,
    )
    _, metrics = _loss_and_metrics(
        logits, batch, loss_config, num_classes, ignore_label, class_weights, axis_name
    )
    return jax.lax.psum(metrics, axis_name) if axis_name else metrics


def bind_steps(loss_config, num_classes, ignore_label, class_weights=None, axis_name=None):
    """train_step and eval_step with the task's constants bound."""
    kwargs = dict(
        loss_config=loss_config,
        num_classes=num_classes,
        ignore_label=ignore_label,
        class_weights=class_weights,
        axis_name=axis_name,
    )
    return functools.partial(train_step, **kwargs), functools.partial(eval_step, **kwargs)
