"""Per-pixel losses with an ignore label."""

import jax
import jax.numpy as jnp
import optax


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
    num_classes = logits.shape[-1]
    valid = labels != ignore_label
    safe_labels = jnp.where(valid, labels, 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), safe_labels)
    weights = valid.astype(jnp.float32)
    if class_weights is not None:
        class_weights = jnp.asarray(class_weights, jnp.float32)
        if class_weights.shape != (num_classes,):
            raise ValueError(
                f"class_weights has shape {class_weights.shape}; expected ({num_classes},)"
            )
        weights = weights * class_weights[safe_labels]
    if pixel_weights is not None:
        weights = weights * pixel_weights
    return jnp.sum(weights * ce), jnp.sum(weights)


def mean_pixel_cross_entropy(
    logits, labels, ignore_label=255, class_weights=None, pixel_weights=None
):
    """The mean of `pixel_cross_entropy` (0 when no pixel is labelled)."""
    total, weight_sum = pixel_cross_entropy(
        logits, labels, ignore_label, class_weights, pixel_weights
    )
    return total / jnp.maximum(weight_sum, jnp.finfo(jnp.float32).tiny)


def soft_dice_loss(logits, labels, ignore_label=255, epsilon=1.0):
    """1 - mean over classes of the soft Dice coefficient on labelled pixels."""
    num_classes = logits.shape[-1]
    valid = (labels != ignore_label)[..., None].astype(jnp.float32)
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * valid
    onehot = jax.nn.one_hot(jnp.where(labels == ignore_label, 0, labels), num_classes) * valid
    axes = tuple(range(logits.ndim - 1))
    intersection = jnp.sum(probs * onehot, axis=axes)
    denominator = jnp.sum(probs, axis=axes) + jnp.sum(onehot, axis=axes)
    return 1.0 - jnp.mean((2 * intersection + epsilon) / (denominator + epsilon))
