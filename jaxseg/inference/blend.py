"""Weight windows that blend overlapping tiles: the weight of a tile's prediction per pixel.

A tile's window is the outer product of one window per axis. Along an axis a
window tapers only at the tile's inner edges (those inside the image); at an
edge on the image border (or in its padding) it stays 1, since no other tile
covers the pixels there. Overlapping predictions are summed with their weights
and divided by the summed weights, so only ratios of weights matter.

"linear": 0 over the outer quarter of the overlap, a linear ramp over its
  middle half, 1 beyond. Two neighbours' weights sum to 1 across their
  overlap, and no pixel takes anything from a tile whose inner edge lies
  within overlap/4 of it: a fully convolutional model whose zero-padding
  border effect is narrower than that predicts exactly what it predicts on
  the whole image (to float rounding).
"gaussian": exp(-r^2 / 2 sigma^2) from the tile centre, sigma = 1/8 of the
  tile side (nnU-Net's and MONAI's window). Positive everywhere: tile edges
  count, but little (exp(-8) = 3e-4 of the centre at an inner edge).
"""

import numpy as np

BLENDS = ("linear", "gaussian")
GAUSSIAN_SIGMA = 1 / 8  # of the tile side


def _taper(blend: str, distance: np.ndarray, length: int, overlap: int) -> np.ndarray:
    """Weight of pixels at `distance` (pixel centres) from one inner edge of a tile."""
    if blend == "linear":
        if overlap == 0:
            return np.ones_like(distance)
        return np.clip((distance - overlap / 4) / (overlap / 2), 0.0, 1.0)
    sigma = GAUSSIAN_SIGMA * length
    from_centre = np.maximum(length / 2 - distance, 0.0)  # 1 on the far half: see `window`
    return np.exp(-0.5 * (from_centre / sigma) ** 2)


def window(blend: str, length: int, overlap: int, inner_start: bool, inner_end: bool) -> np.ndarray:
    """A tile's weights along one axis.

    Args:
      blend: "linear" or "gaussian" (see the module docstring).
      length: the tile's output side.
      overlap: nominal overlap of consecutive tiles in pixels (tile side - step).
      inner_start, inner_end: whether the tile's first/last edge lies inside the image
        (another tile covers the pixels beyond it); border edges are not tapered.

    Returns:
      (length,) float32 weights in [0, 1].
    """
    if blend not in BLENDS:
        raise ValueError(f"blend {blend!r} is not one of {BLENDS}")
    centres = np.arange(length, dtype=np.float64) + 0.5
    weights = np.ones(length)
    # The gaussian is the product of its two halves, each 1 on the other half.
    if inner_start:
        weights *= _taper(blend, centres, length, overlap)
    if inner_end:
        weights *= _taper(blend, length - centres, length, overlap)
    return weights.astype(np.float32)
