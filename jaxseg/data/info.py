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
    presence_frequencies: tuple[float, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def median_frequency_weights(self) -> np.ndarray:
        """Median-frequency balancing (Eigen & Fergus 2015): weight_c = median(f) / f_c.

        f_c is the pixels of class c over the pixels of the images in which c
        occurs (`presence_frequencies`). Classes that never occur get weight 0.
        """
        if self.presence_frequencies is None:
            raise ValueError("this dataset has no class frequencies; cannot compute class weights")
        freqs = np.asarray(self.presence_frequencies, np.float64)
        present = freqs > 0
        median = np.median(freqs[present])
        weights = np.zeros_like(freqs)
        weights[present] = median / freqs[present]
        return weights.astype(np.float32)


def class_statistics(masks, num_classes: int, ignore_label: int):
    """(class_frequencies, presence_frequencies) over an iterable of masks.

    class_frequencies: fraction of all labelled pixels in each class.
    presence_frequencies: pixels of each class over the labelled pixels of
    the masks in which it occurs (0 if it never occurs).
    """
    counts = np.zeros(num_classes, np.int64)
    present_totals = np.zeros(num_classes, np.int64)
    for mask in masks:
        values = np.asarray(mask).ravel()
        values = values[values != ignore_label]
        image_counts = np.bincount(values, minlength=num_classes)[:num_classes]
        counts += image_counts
        present_totals += np.where(image_counts > 0, values.size, 0)
    total = counts.sum()
    frequencies = tuple(float(c / total) if total else 0.0 for c in counts)
    presence = tuple(float(c / t) if t else 0.0 for c, t in zip(counts, present_totals))
    return frequencies, presence
