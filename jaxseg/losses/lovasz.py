"""Lovasz-softmax loss over the batch (term "lovasz_softmax"; Berman et al. 2018, "The
Lovasz-Softmax loss"), the reference `lovasz_softmax(per_image=False)`."""

import jax
import jax.numpy as jnp

from jaxseg.losses._common import class_mean, compute_dtype, masked_labels, refuse_pixel_weights


def lovasz_softmax_loss(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    ignore_label: int,
    class_weights: jnp.ndarray | None = None,
    pixel_weights: None = None,
    classes: str = "present",
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(mean over classes of the Lovasz extension of the Jaccard loss, 1).

    For each class c the errors |[y_i = c] - p_ic| of the labelled pixels of the whole batch
    are sorted in decreasing order and dotted with the gradient of the Jaccard loss along that
    order (`_lovasz_grad`). Ignored pixels are sorted last with error 0, which is the
    reference's dropping them: past the last labelled pixel the Jaccard gradient is 0.

    Args:
      logits: (..., H, W, C) unnormalised scores.
      labels: (..., H, W) integer class indices or `ignore_label`.
      ignore_label: label excluded from the loss.
      class_weights: optional (C,) weights of the class mean.
      pixel_weights: not allowed (a set-level term); a ValueError if given.
      classes: "present" averages over the classes present in the labelled pixels (0 when
        there are none), "all" over all classes.

    Returns:
      (value, 1.0): scalars.
    """
    if classes not in ("present", "all"):
        raise ValueError(f"lovasz_softmax classes must be 'present' or 'all'; got {classes!r}")
    refuse_pixel_weights("lovasz_softmax", pixel_weights)
    num_classes = logits.shape[-1]
    dtype = compute_dtype(logits)
    valid, safe_labels = masked_labels(labels, ignore_label)
    valid = valid.reshape(-1, 1)
    probs = jax.nn.softmax(logits.astype(dtype), axis=-1).reshape(-1, num_classes)
    foreground = (safe_labels.reshape(-1, 1) == jnp.arange(num_classes)) & valid
    foreground = foreground.astype(dtype)
    errors = jnp.where(valid, jnp.abs(foreground - probs), 0.0)  # (pixels, C)
    sort_key = jnp.where(valid, -jax.lax.stop_gradient(errors), jnp.inf)
    order = jnp.argsort(sort_key, axis=0)
    errors_sorted = jnp.take_along_axis(errors, order, axis=0)
    foreground_sorted = jnp.take_along_axis(foreground, order, axis=0)
    per_class = jnp.sum(errors_sorted * _lovasz_grad(foreground_sorted), axis=0)
    present = jnp.sum(foreground, axis=0) > 0 if classes == "present" else None
    return class_mean(per_class, class_weights, present), jnp.ones((), dtype)


def _lovasz_grad(foreground_sorted: jnp.ndarray) -> jnp.ndarray:
    """Gradient of the Jaccard loss 1 - |fg & top_k| / |fg | top_k| over k, along axis 0 of
    a (pixels, C) foreground indicator sorted by decreasing error."""
    foreground_total = jnp.sum(foreground_sorted, axis=0)
    intersection = foreground_total - jnp.cumsum(foreground_sorted, axis=0)
    union = foreground_total + jnp.cumsum(1.0 - foreground_sorted, axis=0)  # >= 1
    jaccard = 1.0 - intersection / union
    return jnp.concatenate([jaccard[:1], jnp.diff(jaccard, axis=0)], axis=0)
