"""The pure train and eval steps: (state, batch, rng) -> (state, metrics), (variables, batch) ->
metrics. Written once for both forms of data parallelism.

Metrics are sums (loss total, loss weight, confusion matrix), so adding them
over steps, devices or hosts gives exact global values.

`axis` (jaxseg.run.parallel) holds the collectives. Under jit + sharding
(`GlobalBatch`) the step sees the global batch and they do nothing: XLA
reduces over devices itself. Under pmap (`PerDevice`) each device sees its
part of the batch: the loss is still normalised by the global weight,
gradients and metrics are summed over devices, and batch norm statistics
(computed per device, i.e. unsynchronised BN) are averaged.
"""

import jax

from jaxseg.run.loss_scale import apply_scaled_gradients
from jaxseg.run.task import GLOBAL_BATCH, Task, loss_and_metrics


def variables_of(state) -> dict:
    """The model variables (params, batch_stats) of a train state."""
    return {"params": state.params, "batch_stats": state.batch_stats}


def train_step(state, batch, rng, *, task: Task, axis=GLOBAL_BATCH):
    """One optimisation step on a batch. Returns (new_state, metric sums).

    `rng` is the run's base key; the step number is folded in, so every step
    draws fresh dropout masks and a resumed run draws the same ones. A state with a loss
    scale (float16 models) differentiates the scaled loss and skips a step whose gradients
    overflow (jaxseg/run/loss_scale.py).
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
