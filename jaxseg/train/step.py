"""The pure train and eval steps: (state, batch, rng) -> (state, metrics), (variables, batch) ->
metrics. Written once for both forms of data parallelism.

Metrics are sums (loss total, loss weight, confusion matrix), so adding them
over steps, devices or hosts gives exact global values.

`axis` (jaxseg.train.parallel) holds the collectives. Under jit + sharding
(`GlobalBatch`) the step sees the global batch and they do nothing: XLA
reduces over devices itself. Under pmap (`PerDevice`) each device sees its
part of the batch: the loss is still normalised by the global weight,
gradients and metrics are summed over devices, and batch norm statistics
(computed per device, i.e. unsynchronised BN) are averaged.
"""

import dataclasses

import jax
import jax.numpy as jnp

from jaxseg.data.info import SegmentationInfo
from jaxseg.losses import pixel_cross_entropy, soft_dice_loss
from jaxseg.metrics import confusion_matrix
from jaxseg.models.layers import center_crop
from jaxseg.train.loss_scale import apply_scaled_gradients
from jaxseg.train.parallel import GlobalBatch

GLOBAL_BATCH = GlobalBatch()


@dataclasses.dataclass(frozen=True)
class Task:
    """What the loss and metrics need to know: the dataset's labels and the loss settings."""

    info: SegmentationInfo
    class_weights: tuple[float, ...] | None = None
    use_pixel_weights: bool = False
    dice_weight: float = 0.0


def align_targets(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Centre-crops (N, H, W) targets to the logits' size.

    Models with unpadded convolutions (the original U-Net) predict the centre
    of their input tile only.
    """
    if targets.shape[1:3] == logits.shape[1:3]:
        return targets
    return center_crop(targets[..., None], *logits.shape[1:3])[..., 0]


def loss_and_metrics(logits, batch, task: Task, axis=GLOBAL_BATCH):
    """(loss normalised over the global batch, metric sums of this batch part)."""
    info = task.info
    labels = align_targets(logits, batch["mask"])
    pixel_weights = align_targets(logits, batch["weight"]) if task.use_pixel_weights else None
    class_weights = None if task.class_weights is None else jnp.asarray(task.class_weights)
    total, weight_sum = pixel_cross_entropy(
        logits, labels, info.ignore_label, class_weights, pixel_weights
    )
    loss = total / jnp.maximum(axis.sum(weight_sum), 1e-12)
    if task.dice_weight:
        # Averaged over replicas: the gradients of the replicas' losses are summed.
        dice = soft_dice_loss(logits, labels, info.ignore_label) / axis.num_replicas()
        loss = loss + task.dice_weight * dice
    metrics = {
        "loss_sum": total,
        "loss_weight": weight_sum,
        "confusion": confusion_matrix(
            labels, jnp.argmax(logits, -1), info.num_classes, info.ignore_label
        ),
    }
    return loss, metrics


def variables_of(state) -> dict:
    """The model variables (params, batch_stats) of a train state."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def train_step(state, batch, rng, *, task: Task, axis=GLOBAL_BATCH):
    """One optimisation step on a batch. Returns (new_state, metric sums).

    `rng` is the run's base key; the step number is folded in, so every step
    draws fresh dropout masks and a resumed run draws the same ones. A state with a loss
    scale (float16 models) differentiates the scaled loss and skips a step whose gradients
    overflow (jaxseg/train/loss_scale.py).
    """
    rng = axis.fold_in_replica(jax.random.fold_in(rng, state.step))
    scaler = getattr(state, "loss_scale", None)  # float16 models only (state.py)

    def loss_fn(params):
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            task.info.normalize(batch["image"]),
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": rng},
        )
        loss, metrics = loss_and_metrics(logits, batch, task, axis)
        return (loss if scaler is None else scaler.scale_loss(loss)), (metrics, updates)

    (_, (metrics, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    batch_stats = axis.mean(updates.get("batch_stats", state.batch_stats))
    if scaler is None:
        state = state.apply_gradients(grads=axis.sum(grads), batch_stats=batch_stats)
    else:
        state = apply_scaled_gradients(state, axis.sum(grads), batch_stats)
    return state, axis.sum(metrics)


def eval_step(variables, batch, *, apply_fn, task: Task, axis=GLOBAL_BATCH):
    """Metric sums of the model in inference mode on a batch."""
    logits = apply_fn(variables, task.info.normalize(batch["image"]), train=False)
    _, metrics = loss_and_metrics(logits, batch, task, axis)
    return axis.sum(metrics)
