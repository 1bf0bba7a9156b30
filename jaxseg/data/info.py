"""Metadata every dataset carries: classes, ignore label, palette, normalisation, frequencies."""

import dataclasses

import jax.numpy as jnp
import numpy as np

# ImageNet statistics (0-255 scale), the convention of the pretrained encoders.
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
IGNORE_COLOUR = (128, 128, 128)  # how pictures show pixels with the ignore label


@dataclasses.dataclass(frozen=True)
class SegmentationInfo:
    """What a trainer needs to know about a dataset's labels.

    Attributes:
      class_names: one name per class index 0..num_classes-1.
      ignore_label: mask value excluded from loss and metrics.
      palette: (num_classes, 3) uint8 colours for visualising masks.
      class_frequencies: fraction of labelled training pixels per class, or
        None when not cheap to compute.
      presence_frequencies: pixels of each class over the labelled pixels of
        the images in which it occurs (for median-frequency weights).
      image_mean, image_std: per-channel statistics (0-255 scale) that
        `normalize` standardises images with.
      intensity_range: (low, high) that 16-bit/float images are scaled to 0..255 by
        (`jaxseg.data.images.read_image`), one for the whole dataset; None if all 8-bit.
    """

    class_names: tuple[str, ...]
    ignore_label: int = 255
    palette: tuple[tuple[int, int, int], ...] | None = None
    class_frequencies: tuple[float, ...] | None = None
    presence_frequencies: tuple[float, ...] | None = None
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    intensity_range: tuple[float, float] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def normalize(self, images) -> jnp.ndarray:
        """uint8 (..., H, W, 3) images -> float32, standardised per channel."""
        mean = jnp.asarray(self.image_mean, jnp.float32)
        std = jnp.asarray(self.image_std, jnp.float32)
        return (jnp.asarray(images).astype(jnp.float32) - mean) / std

    def colourize(self, mask) -> np.ndarray:
        """(H, W) class indices -> (H, W, 3) uint8 palette colours; the ignore label (and any
        value that is no class) grey."""
        mask = np.asarray(mask)
        palette = np.asarray(self.palette, np.uint8)
        valid = (mask >= 0) & (mask < len(palette)) & (mask != self.ignore_label)
        colours = palette[np.where(valid, mask, 0)]
        colours[~valid] = IGNORE_COLOUR
        return colours

    def to_dict(self) -> dict:
        """A JSON-able dict; `from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "SegmentationInfo":
        def as_tuple(value):
            return tuple(as_tuple(v) for v in value) if isinstance(value, list) else value

        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: as_tuple(v) for k, v in fields.items() if k in known})

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
