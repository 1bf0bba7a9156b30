"""Joint image/mask augmentation, deterministic given a numpy Generator.

Every geometric transform (scale, rotation, flip, crop, elastic deformation)
is folded into one map of sampling coordinates, and the image and the mask
are resampled once through it: bilinear (or bicubic) for the image, nearest
neighbour for the mask, so the two stay aligned and labels never blend. Pixels
that fall outside the source image get the ignore label in the mask.

An example is a dict with "image" (H, W, 3) uint8, "mask" (H, W) integer, and
optionally "weight" (H, W) float32 per-pixel loss weights.
"""

import dataclasses

import numpy as np
import scipy.ndimage as ndi


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Parameters of `augment`. The defaults are the identity except flips and scale.

    Attributes:
      crop_size: (height, width) of the output; () keeps the input size.
      scale_range: the image is resized by a factor drawn uniformly from it.
      flip: random horizontal flip with probability 1/2.
      rotation_degrees: rotation drawn uniformly from [-r, r].
      elastic_sigma: std (pixels) of the random displacements on a coarse
        `elastic_grid` x `elastic_grid` grid, interpolated bicubically to every
        pixel (U-Net paper: 3x3 grid, sigma 10); 0 disables.
      brightness, contrast, saturation: colour jitter strengths (0 disables);
        each factor is drawn from [1 - s, 1 + s].
      image_order: spline order for the image (1 bilinear, 3 bicubic).
      ignore_label: mask value for pixels with no source.
    """

    crop_size: tuple[int, ...] = ()
    scale_range: tuple[float, float] = (1.0, 1.0)
    flip: bool = False
    rotation_degrees: float = 0.0
    elastic_sigma: float = 0.0
    elastic_grid: int = 3
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    image_order: int = 1
    ignore_label: int = 255


def augment(example: dict, rng: np.random.Generator, config: AugmentConfig) -> dict:
    """Applies a random geometric + colour transform to an example; returns a new dict."""
    height, width = example["mask"].shape
    coords = _sampling_coordinates(rng, (height, width), config)
    out = dict(example)
    if coords is not None:
        out["image"] = _resample_image(example["image"], coords, config.image_order)
        out["mask"] = ndi.map_coordinates(
            example["mask"], coords, order=0, mode="constant", cval=config.ignore_label
        ).astype(example["mask"].dtype)
        if "weight" in example:
            out["weight"] = ndi.map_coordinates(
                example["weight"], coords, order=1, mode="constant", cval=0.0
            ).astype(np.float32)
    out["image"] = _colour_jitter(out["image"], rng, config)
    return out


def _sampling_coordinates(rng, shape, config):
    """(2, H_out, W_out) source (row, col) for every output pixel, or None for identity."""
    height, width = shape
    out_h, out_w = config.crop_size or shape
    scale = rng.uniform(*config.scale_range)
    angle = np.deg2rad(rng.uniform(-config.rotation_degrees, config.rotation_degrees))
    flip = config.flip and rng.random() < 0.5
    # The transformed (scaled) image is scaled_h x scaled_w; the crop window is
    # placed uniformly inside it, or, if the window is larger, the image is
    # placed uniformly inside the window (the rest is padding).
    scaled_h, scaled_w = height * scale, width * scale
    top = rng.uniform(min(0, scaled_h - out_h), max(0, scaled_h - out_h))
    left = rng.uniform(min(0, scaled_w - out_w), max(0, scaled_w - out_w))
    identity = (
        scale == 1
        and angle == 0
        and not flip
        and (out_h, out_w) == (height, width)
        and config.elastic_sigma == 0
    )
    if identity:
        return None
    # Continuous coordinates with pixel centres at i + 0.5; map output -> source.
    rows, cols = np.mgrid[0:out_h, 0:out_w].astype(np.float32) + 0.5
    rows, cols = rows + top, cols + left
    if flip:
        cols = scaled_w - cols
    center_r, center_c = scaled_h / 2, scaled_w / 2
    cos, sin = np.cos(angle), np.sin(angle)
    dr, dc = rows - center_r, cols - center_c
    rows, cols = cos * dr - sin * dc + center_r, sin * dr + cos * dc + center_c
    rows, cols = rows / scale - 0.5, cols / scale - 0.5  # back to index coordinates
    if config.elastic_sigma > 0:
        rows = rows + _elastic_displacement(rng, (out_h, out_w), config)
        cols = cols + _elastic_displacement(rng, (out_h, out_w), config)
    return np.stack([rows, cols])


def _elastic_displacement(rng, shape, config):
    """Per-pixel displacement: a coarse random grid, bicubically interpolated (U-Net paper)."""
    grid = rng.normal(0.0, config.elastic_sigma, (config.elastic_grid, config.elastic_grid))
    rows = np.linspace(0, config.elastic_grid - 1, shape[0], dtype=np.float32)
    cols = np.linspace(0, config.elastic_grid - 1, shape[1], dtype=np.float32)
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    return ndi.map_coordinates(grid, [grid_rows, grid_cols], order=3, mode="nearest").astype(
        np.float32
    )


def _resample_image(image, coords, order):
    channels = [
        ndi.map_coordinates(image[..., c].astype(np.float32), coords, order=order, mode="constant")
        for c in range(image.shape[-1])
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).round().astype(np.uint8)


def _colour_jitter(image, rng, config):
    if not (config.brightness or config.contrast or config.saturation):
        return image
    image = image.astype(np.float32)
    if config.brightness:
        image = image * rng.uniform(1 - config.brightness, 1 + config.brightness)
    if config.contrast:
        mean = image.mean()
        image = (image - mean) * rng.uniform(1 - config.contrast, 1 + config.contrast) + mean
    if config.saturation:
        grey = image.mean(axis=-1, keepdims=True)
        image = (image - grey) * rng.uniform(1 - config.saturation, 1 + config.saturation) + grey
    return np.clip(image, 0, 255).round().astype(np.uint8)


def pad_for_model(example: dict, input_padding, ignore_label: int) -> dict:
    """Pads an example as its model asks (`SegmentationModel.input_padding`), if it does."""
    pads = input_padding(*example["mask"].shape) if input_padding else None
    return pad_example(example, *pads, ignore_label) if pads else example


def pad_example(example: dict, image_pads, label_pads, ignore_label: int) -> dict:
    """Pads the image by mirroring, the mask with `ignore_label`, the weight with 0.

    Pads are ((top, bottom), (left, right)) for the image and for the labels.
    """
    out = dict(example)
    out["image"] = np.pad(example["image"], (*image_pads, (0, 0)), mode="reflect")
    out["mask"] = np.pad(example["mask"], label_pads, constant_values=ignore_label)
    if "weight" in example:
        out["weight"] = np.pad(example["weight"], label_pads)
    return out


def pad_to_multiple(example: dict, multiple: int, ignore_label: int) -> dict:
    """Pads bottom/right so the sides are multiples of `multiple` (image mirrored, mask ignored)."""
    height, width = example["mask"].shape
    return pad_to_size(
        example, height + -height % multiple, width + -width % multiple, ignore_label
    )


def pad_to_size(example: dict, height: int, width: int, ignore_label: int) -> dict:
    """Pads bottom/right to (height, width) (image mirrored, mask ignored)."""
    in_h, in_w = example["mask"].shape
    if in_h > height or in_w > width:
        raise ValueError(f"an evaluation image of {in_h}x{in_w} is larger than {height}x{width}")
    if (in_h, in_w) == (height, width):
        return example
    pads = ((0, height - in_h), (0, width - in_w))
    return pad_example(example, pads, pads, ignore_label)
