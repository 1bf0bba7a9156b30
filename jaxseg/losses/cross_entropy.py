"""Softmax cross-entropy per labelled pixel (term "cross_entropy")."""

import jax
import jax.numpy as jnp

from jaxseg.losses._common import at_labels, compute_dtype, pixel_weights_of


def pixel_cross_entropy(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    ignore_label: int = 255,
    class_weights: jnp.ndarray | None = None,
    pixel_weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Softmax cross-entropy summed over labelled pixels, and the sum of their weights.

    The mean loss is `total / weight_sum`; both are returned (rather than the
    mean) so that sums over devices, hosts or batches give the exact global mean.
    With class weights this is PyTorch's weighted `CrossEntropyLoss(mean)`:
    sum_i w[y_i] * ce_i / sum_i w[y_i]. Pixels whose label is `ignore_label`
    count nowhere.

    Args:
      logits: (..., H, W, C) unnormalised scores.
      labels: (..., H, W) integer class indices or `ignore_label`.
      ignore_label: label excluded from the loss.
      class_weights: optional (C,) weight per class.
      pixel_weights: optional (..., H, W) weight per pixel (e.g. the U-Net
        border weight map); multiplies the class weight.

    Returns:
      (total, weight_sum): scalars.
    """
    safe_labels, weights = pixel_weights_of(
        logits, labels, ignore_label, class_weights, pixel_weights
    )
    logits = logits.astype(compute_dtype(logits))
    # optax.softmax_cross_entropy_with_integer_labels, with the label's logit picked by
    # `at_labels` (no scatter in the gradient).
    ce = jax.nn.logsumexp(logits, axis=-1) - at_labels(logits, safe_labels)
    return jnp.sum(weights * ce), jnp.sum(weights)


def mean_pixel_cross_entropy(
    logits, labels, ignore_label=255, class_weights=None, pixel_weights=None
):
    """The mean of `pixel_cross_entropy` (0 when no pixel is labelled)."""
    total, weight_sum = pixel_cross_entropy(
        logits, labels, ignore_label, class_weights, pixel_weights
    )
    return total / jnp.maximum(weight_sum, jnp.finfo(weight_sum.dtype).tiny)
