"""Metadata every dataset carries: classes, ignore label, palette, class frequencies."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SegmentationInfo:
    """What a trainer needs to know about a dataset's labels.

    Attributes:
      class_names: one name per class index 0..num_classes-1.
      ignore_label: mask value excluded from loss and metrics.
      palette: (num_classes, 3) uint8 colours for visualising masks.
      class_frequencies: fraction of labelled training pixels per class, or
        None when not cheap to compute.
    """

    class_names: tuple[str, ...]
    ignore_label: int = 255
    palette: tuple[tuple[int, int, int], ...] | None = None
    class_frequencies: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def median_frequency_weights(self) -> np.ndarray:
        """Median-frequency class weights (Eigen & Fergus 2015): median(f) / f_c.

        Classes with frequency 0 get weight 0 (they contribute no pixels anyway).
        """
        if self.class_frequencies is None:
            raise ValueError("this dataset has no class frequencies; cannot compute class weights")
        freqs = np.asarray(self.class_frequencies, np.float64)
        present = freqs > 0
        median = np.median(freqs[present])
        weights = np.zeros_like(freqs)
        weights[present] = median / freqs[present]
        return weights.astype(np.float32)


def class_frequencies(masks, num_classes: int, ignore_label: int) -> tuple[float, ...]:
    """Fraction of labelled pixels per class over an iterable of masks."""
    counts = np.zeros(num_classes, np.int64)
    for mask in masks:
        values = np.asarray(mask).ravel()
        values = values[values != ignore_label]
        counts += np.bincount(values, minlength=num_classes)[:num_classes]
    total = counts.sum()
    return tuple(float(c / total) if total else 0.0 for c in counts)
