"""Tversky loss over the batch (term "tversky"; Salehi et al. 2017) and its alpha = beta = 1
case, the soft Jaccard (IoU) loss (term "jaccard")."""

import jax.numpy as jnp

from jaxseg.losses._common import class_mean, refuse_pixel_weights, soft_counts


def tversky_loss(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    ignore_label: int,
    class_weights: jnp.ndarray | None = None,
    pixel_weights: None = None,
    alpha: float = 0.5,
    beta: float = 0.5,
    smooth: float = 1.0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(1 - mean over classes of the Tversky index, 1).

    T_c = (TP_c + smooth) / (TP_c + alpha FP_c + beta FN_c + smooth), soft counts from softmax
    probabilities over the labelled pixels of the whole batch; every class counts. alpha =
    beta = 0.5 is the Dice loss with twice the smoothing (`dice(smooth=2 s)`), alpha = beta = 1
    the soft Jaccard loss.

    Args:
      logits: (..., H, W, C) unnormalised scores.
      labels: (..., H, W) integer class indices or `ignore_label`.
      ignore_label: label excluded from the loss.
      class_weights: optional (C,) weights of the class mean.
      pixel_weights: not allowed (a set-level term); a ValueError if given.
      alpha: weight of the false positives.
      beta: weight of the false negatives.
      smooth: added to numerator and denominator.

    Returns:
      (value, 1.0): scalars.
    """
    refuse_pixel_weights("tversky", pixel_weights)
    true_positives, false_positives, false_negatives = soft_counts(logits, labels, ignore_label)
    tversky = (true_positives + smooth) / (
        true_positives + alpha * false_positives + beta * false_negatives + smooth
    )
    return 1.0 - class_mean(tversky, class_weights), jnp.ones((), tversky.dtype)


def jaccard_loss(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    ignore_label: int,
    class_weights: jnp.ndarray | None = None,
    pixel_weights: None = None,
    smooth: float = 1.0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(1 - mean over classes of the soft IoU (TP + smooth) / (TP + FP + FN + smooth), 1):
    `tversky_loss` with alpha = beta = 1."""
    refuse_pixel_weights("jaccard", pixel_weights)
    return tversky_loss(
        logits,
        labels,
        ignore_label=ignore_label,
        class_weights=class_weights,
        alpha=1.0,
        beta=1.0,
        smooth=smooth,
    )
