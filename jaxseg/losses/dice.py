"""Soft Dice loss over the batch (term "dice")."""

import jax.numpy as jnp

from jaxseg.losses._common import class_mean, refuse_pixel_weights, soft_counts


def dice_loss(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    ignore_label: int,
    class_weights: jnp.ndarray | None = None,
    pixel_weights: None = None,
    smooth: float = 1.0,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(1 - mean over classes of the soft Dice coefficient, 1).

    Dice_c = (2 TP_c + smooth) / (sum_i p_ic + sum_i g_ic + smooth) with softmax probabilities
    p and one-hot labels g over the labelled pixels of the whole batch. Every class counts,
    those absent from the batch too (a prediction of an absent class is penalised).

    Args:
      logits: (..., H, W, C) unnormalised scores.
      labels: (..., H, W) integer class indices or `ignore_label`.
      ignore_label: label excluded from the loss.
      class_weights: optional (C,) weights of the class mean.
      pixel_weights: not allowed (a set-level term); a ValueError if given.
      smooth: added to numerator and denominator.

    Returns:
      (value, 1.0): scalars.
    """
    refuse_pixel_weights("dice", pixel_weights)
    true_positives, false_positives, false_negatives = soft_counts(logits, labels, ignore_label)
    dice = (2 * true_positives + smooth) / (
        2 * true_positives + false_positives + false_negatives + smooth
    )
    return 1.0 - class_mean(dice, class_weights), jnp.ones((), dice.dtype)


def soft_dice_loss(logits, labels, ignore_label=255, epsilon=1.0):
    """1 - mean over classes of the soft Dice coefficient on labelled pixels."""
    return dice_loss(logits, labels, ignore_label=ignore_label, smooth=epsilon)[0]
