"""Bilinear resampling done piecewise, so that multi-scale prediction streams band by band.

Both directions use half-pixel centres and no antialiasing (the same function as
`jax.image.resize(..., "bilinear", antialias=False)`): an output pixel reads at
most two input pixels per axis, so a tile of a resized image, or a band of rows
resized back, is computed from the matching band of the other resolution alone.
"""

import collections
from collections.abc import Iterator

import numpy as np


def bilinear_coordinates(out_size: int, in_size: int):
    """(lower index, upper index, upper weight) of each output pixel along one axis."""
    source = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
    source = np.clip(source, 0, in_size - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, in_size - 1)
    return lower, upper, (source - lower).astype(np.float32)


def reflect(indices: np.ndarray, size: int) -> np.ndarray:
    """Indices mirrored into [0, size) without repeating the edge, as np.pad(mode="reflect")."""
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.mod(indices, period)
    return np.where(folded >= size, period - folded, folded)


class TileSampler:
    """Tiles of an image resized to (height, width), read from the original on demand."""

    def __init__(self, image: np.ndarray, height: int, width: int):
        self.image = image
        self.height, self.width = height, width
        self.identity = (height, width) == image.shape[:2]
        if not self.identity:
            self.rows = bilinear_coordinates(height, image.shape[0])
            self.cols = bilinear_coordinates(width, image.shape[1])

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """uint8 (len(rows), len(cols), channels) at resized-image `rows` x `cols` (in range)."""
        if self.identity:
            return self.image[np.ix_(rows, cols)]
        top, bottom, row_weight = (part[rows] for part in self.rows)
        left, right, col_weight = (part[cols] for part in self.cols)
        row_weight, col_weight = row_weight[:, None, None], col_weight[None, :, None]

        def blend_columns(image_rows):
            upper = self.image[np.ix_(image_rows, left)].astype(np.float32)
            lower = self.image[np.ix_(image_rows, right)].astype(np.float32)
            return upper + (lower - upper) * col_weight

        above, below = blend_columns(top), blend_columns(bottom)
        tile = above + (below - above) * row_weight
        return np.clip(np.rint(tile), 0, 255).astype(np.uint8)


class ResizedRows:
    """Rows of a (height, width, C) map, resized to (out_height, out_width) as they stream in.

    `chunks` yields (first row, rows) in order; `rows(start, stop)` pulls only as
    many as the requested output rows need and forgets the chunks no later
    output row reads, so the chunks that overlap the rows in use are held.
    """

    def __init__(
        self,
        chunks: Iterator[tuple[int, np.ndarray]],
        height: int,
        width: int,
        out_height: int,
        out_width: int,
    ):
        self.chunks = chunks
        self.held = collections.deque()  # (first row, rows) of the chunks still needed
        self.identity = (height, width) == (out_height, out_width)
        self.row_map = bilinear_coordinates(out_height, height)
        self.col_map = bilinear_coordinates(out_width, width)

    def _input_rows(self, start: int, stop: int) -> np.ndarray:
        """Input rows [start, stop), pulled from the stream as needed; earlier chunks dropped."""
        while not self.held or self.held[-1][0] + len(self.held[-1][1]) < stop:
            self.held.append(next(self.chunks))
        while self.held[0][0] + len(self.held[0][1]) <= start:
            self.held.popleft()
        pieces = [
            rows[max(start - first, 0) : stop - first]
            for first, rows in self.held
            if first < stop and first + len(rows) > start
        ]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Output rows [start, stop) as float32 (stop - start, out_width, C); call in order."""
        if self.identity:  # a copy, like the resized rows: callers may add to it in place
            return np.array(self._input_rows(start, stop))
        top, bottom, row_weight = (part[start:stop] for part in self.row_map)
        base = int(top[0])
        block = self._input_rows(base, int(bottom[-1]) + 1)
        # In place where possible: these are the largest temporaries of multi-scale prediction.
        rows, below = block[top - base], block[bottom - base]
        below -= rows
        below *= row_weight[:, None, None]
        rows += below
        del below
        left, right, col_weight = self.col_map
        resized, right_part = rows[:, left], rows[:, right]
        right_part -= resized
        right_part *= col_weight[None, :, None]
        resized += right_part
        return resized
