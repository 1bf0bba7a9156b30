"""The task: what a model is trained and scored for. Loss terms by name (jaxseg.losses) with
their weights, the dataset's labels, and the metric sums every step returns.

`config.loss.terms` is a sum of weighted terms, "cross_entropy" or "cross_entropy + 0.5 *
dice"; `config.loss.options.<term>` holds each term's options. Every term returns (total,
weight) and contributes `total / (weight summed over replicas)`: the exact global mean for
per-pixel terms, the mean over replicas for set-level ones (jaxseg/losses/__init__.py).
"""

import dataclasses

import jax.numpy as jnp

from jaxseg.config import parse_loss_terms
from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import ConfigError
from jaxseg.losses import LOSSES
from jaxseg.metrics import confusion_matrix
from jaxseg.models.layers import center_crop
from jaxseg.run.parallel import GlobalBatch

GLOBAL_BATCH = GlobalBatch()
CLASS_WEIGHTINGS = ("none", "median_frequency")


@dataclasses.dataclass(frozen=True)
class Task:
    """The dataset's labels and the loss: weighted terms with their options and weights."""

    info: SegmentationInfo
    terms: tuple[tuple[str, float], ...] = (("cross_entropy", 1.0),)
    options: tuple[tuple[str, tuple], ...] = ()  # ((term, ((option, value), ...)), ...)
    class_weights: tuple[float, ...] | None = None
    use_pixel_weights: bool = False

    def term_options(self, name: str) -> dict:
        return dict(dict(self.options).get(name, ()))


def build_task(loss_config, info: SegmentationInfo) -> Task:
    """The Task of `config.loss` on a dataset."""
    if loss_config.class_weights not in CLASS_WEIGHTINGS:
        raise ConfigError(
            f"unknown loss.class_weights {loss_config.class_weights!r}; allowed: {CLASS_WEIGHTINGS}"
        )
    weights = None
    if loss_config.class_weights == "median_frequency":
        weights = tuple(float(w) for w in info.median_frequency_weights())
    terms = parse_loss_terms(loss_config.terms)
    options = loss_config.get("options", {})
    task = Task(
        info,
        terms,
        tuple((name, tuple(sorted(dict(options.get(name, {})).items()))) for name, _ in terms),
        weights,
        loss_config.use_pixel_weights,
    )
    _try_terms(task)
    return task


def _try_terms(task: Task) -> None:
    """Calls each term once on a 1-pixel batch with the run's options and weights, so that
    a value a term refuses (focal gamma < 0, pixel weights for Dice) is a ConfigError now,
    not an error while the step is traced."""
    classes = task.info.num_classes
    for name, _ in task.terms:
        try:
            LOSSES.get(name)(
                jnp.zeros((1, 1, 1, classes)),
                jnp.zeros((1, 1, 1), jnp.int32),
                ignore_label=task.info.ignore_label,
                class_weights=None if task.class_weights is None else jnp.ones(classes),
                pixel_weights=jnp.ones((1, 1, 1)) if task.use_pixel_weights else None,
                **task.term_options(name),
            )
        except (ValueError, TypeError) as e:
            raise ConfigError(
                f"loss term {name!r} (loss.terms={', '.join(n for n, _ in task.terms)!r}) cannot"
                f" run with loss.options.{name}={task.term_options(name)}, loss.class_weights"
                f" and loss.use_pixel_weights={task.use_pixel_weights}: {e}"
            ) from e


def align_targets(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """Centre-crops (N, H, W) targets to the logits' size.

    Models with unpadded convolutions (the original U-Net) predict the centre
    of their input tile only.
    """
    if targets.shape[1:3] == logits.shape[1:3]:
        return targets
    return center_crop(targets[..., None], *logits.shape[1:3])[..., 0]


def loss_and_metrics(logits, batch, task: Task, axis=GLOBAL_BATCH):
    """(loss normalised over the global batch, metric sums of this batch part).

    The metric sums' loss is the first term's (cross-entropy in every shipped config)."""
    info = task.info
    labels = align_targets(logits, batch["mask"])
    pixel_weights = align_targets(logits, batch["weight"]) if task.use_pixel_weights else None
    class_weights = None if task.class_weights is None else jnp.asarray(task.class_weights)
    loss, first = 0.0, None
    for name, weight in task.terms:
        total, weight_sum = LOSSES.get(name)(
            logits,
            labels,
            ignore_label=info.ignore_label,
            class_weights=class_weights,
            pixel_weights=pixel_weights,
            **task.term_options(name),
        )
        loss = loss + weight * total / jnp.maximum(axis.sum(weight_sum), 1e-12)
        first = first or (total, weight_sum)
    metrics = {
        "loss_sum": first[0],
        "loss_weight": first[1],
        "confusion": confusion_matrix(
            labels, jnp.argmax(logits, -1), info.num_classes, info.ignore_label
        ),
    }
    return loss, metrics
