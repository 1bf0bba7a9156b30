"""The U-Net paper's weight map, to learn the thin borders between touching objects.

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

w_c balances the class frequencies (here: a weight per class, e.g. median
frequency), d1 and d2 are the distances to the nearest and second nearest
object (instance). The border term applies to background pixels, the gaps
between objects (the paper's Fig. 3d); pixels with the ignore label weigh 0.
"""

import numpy as np
import scipy.ndimage as ndi


def unet_weight_map(
    mask: np.ndarray,
    instances: np.ndarray,
    class_weights,
    w0: float = 10.0,
    sigma: float = 5.0,
    ignore_label: int = 255,
    background_class: int = 0,
) -> np.ndarray:
    """(H, W) float32 weights from a class mask and an instance-id map (0 = no object)."""
    d1, d2 = _two_nearest_object_distances(instances, sigma)
    with np.errstate(over="ignore", invalid="ignore"):
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    border = np.where(np.isfinite(d2) & (mask == background_class), border, 0.0)
    class_weights = np.asarray(class_weights, np.float32)
    valid = mask != ignore_label
    weights = np.where(valid, class_weights[np.where(valid, mask, 0)] + border, 0.0)
    return weights.astype(np.float32)


def _two_nearest_object_distances(instances: np.ndarray, sigma: float):
    """Per pixel, the Euclidean distances to the nearest and second nearest object.

    Beyond ~4 sigma the border term is < 1e-3 w0, so each object's distance
    transform is computed only in its bounding box grown by that radius;
    farther pixels keep infinity.
    """
    shape = instances.shape
    nearest = np.full(shape, np.inf, np.float32)
    second = np.full(shape, np.inf, np.float32)
    radius = int(np.ceil(4 * sigma))
    instances = np.asarray(instances).astype(np.int64)
    for label, box in enumerate(ndi.find_objects(instances), start=1):
        if box is None:
            continue
        rows = slice(max(box[0].start - radius, 0), min(box[0].stop + radius, shape[0]))
        cols = slice(max(box[1].start - radius, 0), min(box[1].stop + radius, shape[1]))
        distance = ndi.distance_transform_edt(instances[rows, cols] != label).astype(np.float32)
        near, sec = nearest[rows, cols], second[rows, cols]
        second[rows, cols] = np.minimum(sec, np.maximum(near, distance))
        nearest[rows, cols] = np.minimum(near, distance)
    return nearest, second
