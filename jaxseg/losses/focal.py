"""Focal loss per labelled pixel (term "focal"; Lin et al. 2017, "Focal Loss for Dense Object
Detection"), softmax form."""

import jax
import jax.numpy as jnp

from jaxseg.losses._common import at_labels, compute_dtype, pixel_weights_of


def focal_loss(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    *,
    ignore_label: int,
    class_weights: jnp.ndarray | None = None,
    pixel_weights: jnp.ndarray | None = None,
    gamma: float = 2.0,
    alpha: float | tuple[float, ...] | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """-alpha_t (1 - p_t)^gamma log p_t summed over labelled pixels, and the sum of their weights.

    Weighted like `pixel_cross_entropy` (class and pixel weights in the sum and in the
    normaliser), which it equals for gamma=0 and alpha=None. alpha, as in Lin et al.,
    scales the loss only and not the normaliser.

    Args:
      logits: (..., H, W, C) unnormalised scores.
      labels: (..., H, W) integer class indices or `ignore_label`.
      ignore_label: label excluded from the loss.
      class_weights: optional (C,) weight per class.
      pixel_weights: optional (..., H, W) weight per pixel; multiplies the class weight.
      gamma: focusing parameter, >= 0; 0 is cross-entropy.
      alpha: None, one factor for all pixels, or (C,) factors alpha_t by the pixel's class.

    Returns:
      (total, weight_sum): scalars.
    """
    if isinstance(gamma, int | float) and gamma < 0:
        raise ValueError(f"focal gamma must be >= 0; got {gamma}")
    dtype = compute_dtype(logits)
    safe_labels, weights = pixel_weights_of(
        logits, labels, ignore_label, class_weights, pixel_weights
    )
    log_probs = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    log_p_true = at_labels(log_probs, safe_labels)
    # 1 - p_t without cancellation; floored at `tiny` so that a saturated p_t = 1 gives a zero
    # (not NaN) gradient for gamma < 1, and gamma = 0 gives a factor of exactly 1.
    one_minus_p_true = jnp.maximum(-jnp.expm1(log_p_true), jnp.finfo(dtype).tiny)
    focal = -jnp.power(one_minus_p_true, gamma) * log_p_true
    if alpha is not None:
        alpha = jnp.asarray(alpha, dtype)
        num_classes = logits.shape[-1]
        if alpha.shape not in ((), (num_classes,)):
            raise ValueError(
                f"focal alpha has shape {alpha.shape}; expected a number or ({num_classes},)"
            )
        focal = focal * (alpha[safe_labels] if alpha.ndim else alpha)
    return jnp.sum(weights * focal), jnp.sum(weights)
