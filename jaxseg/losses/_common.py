"""What the loss terms share: dtype, ignore-label masking, weight checks, per-class soft counts."""

import jax
import jax.numpy as jnp


def compute_dtype(logits: jnp.ndarray) -> jnp.dtype:
    """float32 for float32 and narrower logits; float64 logits (gradient checks) stay float64."""
    return jnp.promote_types(jnp.asarray(logits).dtype, jnp.float32)


def masked_labels(labels: jnp.ndarray, ignore_label: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(valid, safe_labels): where labels are not `ignore_label`, and labels with those set to 0.

    Ignored pixels are read as class 0 (so indexing stays in range) and masked by `valid`.
    """
    labels = jnp.asarray(labels)
    valid = labels != ignore_label
    return valid, jnp.where(valid, labels, 0)


def at_labels(values: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """`values[..., label]` per pixel, for (..., C) `values` and (...) in-range `labels`.

    Written as a one-hot masked sum, not `take_along_axis`: the same values (the other
    classes add exact zeros), and a gradient that is elementwise, where the gather's is a
    scatter (on CPU 10-30% slower for the cross-entropy's gradient).
    """
    classes = jnp.arange(values.shape[-1], dtype=labels.dtype)
    return jnp.sum(jnp.where(labels[..., None] == classes, values, 0), axis=-1)


def checked_class_weights(class_weights, num_classes: int, dtype) -> jnp.ndarray | None:
    if class_weights is None:
        return None
    class_weights = jnp.asarray(class_weights, dtype)
    if class_weights.shape != (num_classes,):
        raise ValueError(
            f"class_weights has shape {class_weights.shape}; expected ({num_classes},)"
        )
    return class_weights


def pixel_weights_of(
    logits, labels, ignore_label, class_weights, pixel_weights
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(safe_labels, weights) of a pixel-decomposable term: 0 on ignored pixels, else the
    class weight of the pixel's label times its pixel weight (each 1 when not given)."""
    dtype = compute_dtype(logits)
    valid, safe_labels = masked_labels(labels, ignore_label)
    weights = valid.astype(dtype)
    class_weights = checked_class_weights(class_weights, logits.shape[-1], dtype)
    if class_weights is not None:
        weights = weights * class_weights[safe_labels]
    if pixel_weights is not None:
        pixel_weights = jnp.asarray(pixel_weights, dtype)
        if pixel_weights.shape != valid.shape:
            raise ValueError(
                f"pixel_weights has shape {pixel_weights.shape}; expected the labels' shape"
                f" {valid.shape}"
            )
        weights = weights * pixel_weights
    return safe_labels, weights


def refuse_pixel_weights(term: str, pixel_weights) -> None:
    if pixel_weights is not None:
        raise ValueError(
            f"loss {term!r} is a set-level term and takes no pixel_weights; only the"
            " pixel-decomposable terms (cross_entropy, focal) do"
        )


def soft_counts(logits, labels, ignore_label) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Per-class soft (true positives, false positives, false negatives), each (C,), summed over
    the labelled pixels of the whole batch, with softmax probabilities as soft predictions."""
    num_classes = logits.shape[-1]
    valid, safe_labels = masked_labels(labels, ignore_label)
    valid = valid[..., None].astype(compute_dtype(logits))
    probs = jax.nn.softmax(logits.astype(valid.dtype), axis=-1) * valid
    onehot = jax.nn.one_hot(safe_labels, num_classes, dtype=valid.dtype) * valid
    axes = tuple(range(logits.ndim - 1))
    true_positives = jnp.sum(probs * onehot, axis=axes)
    return (
        true_positives,
        jnp.sum(probs, axis=axes) - true_positives,
        jnp.sum(onehot, axis=axes) - true_positives,
    )


def class_mean(per_class: jnp.ndarray, class_weights, class_mask=None) -> jnp.ndarray:
    """Mean of a (C,) vector over classes, weighted by `class_weights` and restricted to
    `class_mask` when given; 0 when no class counts."""
    weights = jnp.ones_like(per_class)
    class_weights = checked_class_weights(class_weights, per_class.shape[0], per_class.dtype)
    if class_weights is not None:
        weights = weights * class_weights
    if class_mask is not None:
        weights = weights * class_mask
    return jnp.sum(weights * per_class) / jnp.maximum(
        jnp.sum(weights), jnp.finfo(weights.dtype).tiny
    )
