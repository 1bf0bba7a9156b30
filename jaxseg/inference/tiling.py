"""Prediction of images of any size with one compiled tile shape: sliding windows, blended.

`Predictor(model, variables, info, tile=(512, 512))` compiles the network once
for its tile shape (uint8 tiles in, normalisation, logits and softmax inside)
and predicts every image size with it:

- Tiles lie on a grid whose step is a multiple of the model's period (its
  `tile_period`: its pooling grid), so each tile sees the pooling grid the
  whole image would: a fully convolutional model predicts in each tile what it
  predicts on the whole image, except near the tile's edges. The image is
  mirrored beyond its bottom/right border up to the last tile, which is moved
  back to the first grid position that covers the image (no tile lies wholly
  outside), so the tiles end where the whole image's padding does. Images
  smaller than the tile are mirrored up to it (near their bottom/right border
  the prediction then differs from the whole-image one, padded less).
- Models with `input_padding` (the original U-Net) are tiled as in the paper's
  Fig. 2 (overlap-tile): output tiles lie on the image grid and each is fed the
  input tile around it, real context where the image has it and mirrored
  context beyond its border. Their outputs agree wherever they overlap, so
  they need no blending; their default overlap is 0 (consecutive output tiles
  then overlap by the output side modulo the period, 4 pixels at depth 4,
  which keeps every tile on the whole image's pooling grid).
- Overlapping tiles are blended by weight windows (`jaxseg.inference.blend`).
  What is blended is class probabilities, the softmax of each tile's logits,
  not logits: one rule for tiles, flips and scales, and a tile's overconfident
  edge cannot outweigh its neighbour by the size of its logits.
- The last batch of tiles is padded to the batch size, so no batch recompiles.

Memory: the image is processed in bands of tile rows. Accumulated
probabilities are held only for the rows that tiles still to come touch, at
most (ceil((batch_size - 1) / tiles_per_row) * step + tile height) rows of
float32 (width x classes); finished rows are written to the mask and, when
asked, to a caller's probability array (a float16 `np.lib.format.open_memmap`
for images whose probabilities do not fit in memory). Beyond the model's own
memory for one batch, what is held grows with the image width, not its area
(the uint8 input image and output mask aside).

Test-time augmentation: `flip` averages each tile's probabilities with those
of its horizontal mirror (the batch the network sees doubles). `scales`
predicts the image resized (bilinear, half-pixel centres, no antialiasing) by
each factor, tiled as above, resizes each one's probabilities back and
averages them. Scales stream too: each scale runs its own band, pulled in step
with the full-resolution rows being written, so memory is the sum of one band
per scale (a 1.25 scale's band is 1.25 times as wide); the resized image is
never formed, its tiles are interpolated from the original.

`tile=None` predicts the whole image at once (padded to the model's
`input_multiple` by mirroring at the bottom/right, or as its `input_padding`
asks); that compiles once per image size and holds the whole image's
probabilities, and is the way to apply a `position_dependent` model.

`tile="auto"` (the default) picks per image: an image that fits in the model's
`default_tile` is predicted whole, mirrored up to its size bucket (`bucket_side`:
four sides per octave), so images of similar sizes share one compilation; larger
images are tiled with that tile. See `Predictor` for what the bucket padding changes.
"""

import dataclasses
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import ConfigError, ModelInputError
from jaxseg.inference.blend import BLENDS, window
from jaxseg.inference.network import probability_network
from jaxseg.inference.resample import ResizedRows, TileSampler, reflect
from jaxseg.models.base import SegmentationModel
from jaxseg.models.layers import nearest_valid
from jaxseg.models.platforms import xla_options

OUTPUT_CHUNK_ROWS = 64  # full-resolution rows assembled, argmaxed and written at a time
AUTO = "auto"  # Predictor(tile=AUTO): whole images up to one default tile, tiles beyond


@dataclasses.dataclass(frozen=True)
class AxisTiles:
    """Where the tiles of one image lie along one axis (rows or columns)."""

    size: int  # the image side
    input_tile: int  # the network's input side
    output_tile: int  # the side of the prediction it gives
    context: int  # input pixels before an output tile's first pixel
    starts: tuple[int, ...]  # first image pixel of each output tile (< 0: in the mirrored border)
    overlap: int  # nominal overlap of consecutive output tiles (output_tile - step)

    def input_indices(self, index: int) -> np.ndarray:
        """Image pixels (mirrored into the image) of tile `index`'s input."""
        first = self.starts[index] - self.context
        return reflect(np.arange(first, first + self.input_tile), self.size)

    def weights(self, index: int, blend: str) -> np.ndarray:
        inner_start = index > 0
        inner_end = index < len(self.starts) - 1
        return window(blend, self.output_tile, self.overlap, inner_start, inner_end)


class Layout(NamedTuple):
    """The tiles of one image: along its rows, along its columns, and per network call."""

    rows: AxisTiles
    cols: AxisTiles
    batch_size: int

    @property
    def count(self) -> int:
        return len(self.rows.starts) * len(self.cols.starts)


def bucket_side(size: int, multiple: int) -> int:
    """The side an image side `size` is padded to when predicted whole in auto mode: a
    multiple of an eighth of the next power of two (four sides per octave: ..., 64, 80, 96,
    112, 128, 160, 192, ...), then of the model's `multiple`. Images of similar sizes share
    one compiled shape, and padding adds less than a quarter of the side plus `multiple`."""
    eighth = max(1, (1 << (size - 1).bit_length()) // 8)
    rung = -(-size // eighth) * eighth
    return -(-rung // multiple) * multiple


def tile_starts(size: int, tile: int, step: int, origin: int, period: int) -> tuple[int, ...]:
    """Output tile starts origin, origin + step, ...; the last moved back to the first start
    that is origin modulo `period` and ends at or past `size`."""
    starts = [origin]
    while starts[-1] + tile < size:
        following = starts[-1] + step
        if following + tile >= size:
            following = origin + math.ceil((size - tile - origin) / period) * period
        starts.append(following)
    return tuple(starts)


def _smallest_output(model: SegmentationModel, side: int) -> int:
    """The smallest output side >= `side` of a model with input padding."""
    _, label_pads = model.input_padding(side, side)
    return side + sum(label_pads[0])


def check_options(
    *, batch_size=8, overlap=None, scales=(1.0,), blend="linear", flag_prefix=""
) -> None:
    """ConfigError, naming the option and its range, for a Predictor option out of range;
    cheap, so that command lines check their flags before loading any model.

    Args:
      flag_prefix: "--" names the options as command-line flags.
    """

    def refuse(name, value, allowed):
        raise ConfigError(f"{flag_prefix}{name}={value}: {allowed}")

    if blend not in BLENDS:
        refuse("blend", blend, f"one of {BLENDS}")
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int | np.integer)
        or batch_size < 1
    ):
        refuse("batch_size", batch_size, "tiles per network call, an integer >= 1")
    if overlap is not None and not 0 <= overlap < 1:  # NaN is refused too
        refuse("overlap", overlap, "the fraction of a tile its neighbours share, in [0, 1)")
    if not scales or not all(math.isfinite(s) and s > 0 for s in map(float, scales)):
        refuse("scales", ",".join(map(str, scales)), "positive finite factors, e.g. 0.75,1,1.25")


def default_tile(model: SegmentationModel, side: int = 512) -> tuple[int, int] | None:
    """A square tile of about `side` the model takes; None for a position-dependent model
    (which cannot be tiled)."""
    if model.position_dependent():
        return None
    pads = model.input_padding(side, side)
    if pads is not None:  # the input tile whose output covers `side`
        side += sum(pads[0][0])
    else:
        multiple = model.input_multiple()
        side = -(-side // multiple) * multiple
    return side, side


class Predictor:
    """Predicts class probabilities and masks of uint8 RGB images of any size, tile by tile.

    Attributes:
      num_classes: C, the channels of the probabilities.
      tile: (height, width) of the network's input tile, or None (whole images).
      step: (rows, columns) between tiles, multiples of the model's period.
      whole_pixels: with tile="auto", the largest network input (height x width, the
        tile's) an image is predicted whole in; 0 otherwise.
    """

    def __init__(
        self,
        model: SegmentationModel,
        variables,
        info: SegmentationInfo,
        *,
        network=None,
        tile: tuple[int, int] | str | None = AUTO,
        overlap: float | None = None,
        batch_size: int = 8,
        blend: str = "linear",
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
    ):
        """Checks the options against the model and builds the network function.

        Args:
          model: a SegmentationModel (see jaxseg.models.base), or anything with its input
            contract (`input_multiple`, `input_padding`, `tile_period`,
            `position_dependent`; `global_context` for tile="auto"), such as an exported
            model (jaxseg.inference.export) with its tile.
          variables: its variables ({"params": ..., "batch_stats": ...}); an argument of
            the compiled function, not a constant in it.
          network: `network(variables, uint8 images) -> class probabilities`, the model's
            output for inputs it takes; default: the model itself
            (jaxseg.inference.network.probability_network).
          info: the dataset's metadata: `normalize` is applied to the uint8 tiles inside
            the compiled function, `num_classes` is checked against the model's output.
          tile: the network's input (height, width): multiples of the model's
            `input_multiple`, or, for a model with `input_padding`, valid input sizes.
            None: whole images, one compilation per image size. "auto": an image whose
            padded size fits in the model's `default_tile` (in pixels) is predicted whole,
            larger ones in that tile. Whole images are mirrored up to their size bucket
            (`bucket_side`), one compilation per bucket: like the whole image's own
            padding, that changes predictions near the bottom/right border only, within
            the model's receptive field (it is exact for models with `input_padding`).
            A model whose `global_context()` is True (image-level pooling, global
            attention) would change everywhere, so its images are padded as with None.
          overlap: fraction of a tile (its output) that consecutive tiles share; the step
            is rounded down to the model's period, so the overlap can be a little larger.
            None: 0.25, or 0 for models with `input_padding` (overlap-tile needs none).
          batch_size: tiles per network call (the last batch is padded to it).
          blend: "linear" or "gaussian" weight window (jaxseg.inference.blend).
          flip: average with the horizontally mirrored prediction.
          scales: resize factors of multi-scale prediction, averaged; (1.0,) is none.

        Raises:
          ConfigError (check_options) for options out of their range, ModelInputError for
          a tile the model cannot take, naming the nearest valid sizes, or a tile for a
          position-dependent model (both ValueErrors).
        """
        check_options(batch_size=batch_size, overlap=overlap, scales=scales, blend=blend)
        scales = tuple(float(s) for s in scales)
        padded = model.input_padding(1, 1) is not None
        overlap = (0.0 if padded else 0.25) if overlap is None else float(overlap)
        self.model, self.info = model, info
        self._probabilities = network or probability_network(model, info)
        self.num_classes = info.num_classes
        self.blend, self.flip, self.scales, self.overlap = blend, flip, scales, overlap
        self.batch_size = batch_size
        self._padded = padded
        self._multiple = model.input_multiple()
        self._period = model.tile_period()
        self._variables = jax.device_put(variables)
        self._network = jax.jit(self._apply, compiler_options=xla_options())
        self.tile, self.step, self._axes = None, None, None
        self.whole_pixels, self._bucketed = 0, False
        if isinstance(tile, str):
            if tile != AUTO:
                raise ConfigError(f"tile={tile!r}: (height, width), None or {AUTO!r}")
            tile = default_tile(model)  # None (whole images) for a position-dependent model
            if tile is not None:
                # One tile's input at most: no more memory than a tile, and fewer pixels
                # computed than the batch of mirrored tiles a small image would fill.
                self.whole_pixels = tile[0] * tile[1]
                self._bucketed = not model.global_context()
        if tile is not None:
            if model.position_dependent():
                raise ModelInputError(
                    f"{type(model).__name__} is position dependent (a pixel's prediction"
                    " depends on where it lies in the input, e.g. Hypercolumn with"
                    " location_grid > 1), so it cannot be applied tile by tile; use tile=None"
                    " (whole images)"
                )
            axes = [self._tile_axis(side, size) for side, size in zip(("height", "width"), tile)]
            self._axes = axes  # (input, output, context, step) per axis
            self.tile = tuple(int(s) for s in tile)
            self.step = (axes[0][3], axes[1][3])
            self._check_output(self.tile, (axes[0][1], axes[1][1]))

    def _tile_axis(self, side: str, size: int) -> tuple[int, int, int, int]:
        """(input, output, context, step) of a tile side; ModelInputError if the model cannot."""
        period = self._period

        def step_of(output):
            return (int((1 - self.overlap) * output) // period) * period

        if not self._padded:
            multiple = self._multiple

            def valid(s):
                return s > 0 and s % multiple == 0 and step_of(s) >= period

            if not valid(size):
                raise ModelInputError(
                    f"tile {side} {size}: tile sides must be positive multiples of the model's"
                    f" input multiple {multiple} (its output stride) whose step with overlap"
                    f" {self.overlap} is at least {period}; nearest valid tile sides:"
                    f" {nearest_valid(size, valid)}"
                )
            return size, size, 0, step_of(size)
        # Valid inputs are the smallest one plus multiples of the period; for a valid output
        # the model asks for image padding alone, whose first side is the context.
        tiles, output = {}, _smallest_output(self.model, 1)
        while len(tiles) < 2 or max(tiles) <= size or step_of(tiles[max(tiles)][0]) < period:
            (top, bottom), _ = self.model.input_padding(output, output)[0]
            tiles[output + top + bottom] = (output, top)
            output += period

        def valid(s):
            return s in tiles and step_of(tiles[s][0]) >= period

        if not valid(size):
            first, second = sorted(tiles)[:2]
            raise ModelInputError(
                f"tile {side} {size}: {type(self.model).__name__} with input padding takes"
                f" inputs {first}, {second}, ... (outputs {tiles[first][0]},"
                f" {tiles[second][0]}, ...), and with overlap {self.overlap} a tile's output"
                f" must step by at least the period {period}; nearest valid tile sides:"
                f" {nearest_valid(size, valid, limit=max(tiles))}"
            )
        output, context = tiles[size]
        return size, output, context, step_of(output)

    def _check_output(self, input_shape, output_shape) -> None:
        channels = len(self.info.image_mean)
        shape = jax.ShapeDtypeStruct((1, *input_shape, channels), jnp.uint8)
        try:
            out = jax.eval_shape(self._probabilities, self._variables, shape)
        except ValueError as e:
            raise ModelInputError(f"tile {input_shape}: the model cannot take it: {e}") from e
        if out.shape[1:] != (*output_shape, self.num_classes):
            raise ModelInputError(
                f"a {input_shape} input gives a {out.shape[1:]} output; expected"
                f" {(*output_shape, self.num_classes)} ({self.num_classes} classes of the dataset)"
            )

    def _apply(self, variables, tiles, row_weights, col_weights):
        """uint8 tiles (B, h, w, 3) -> their class probabilities times their blend weights."""
        count = tiles.shape[0]
        if self.flip:
            tiles = jnp.concatenate([tiles, tiles[:, :, ::-1]])
        probabilities = self._probabilities(variables, tiles)
        if self.flip:
            probabilities = 0.5 * (probabilities[:count] + probabilities[count:, :, ::-1])
        weights = row_weights[:, :, None, None] * col_weights[:, None, :, None]
        return probabilities * weights

    def _layout(self, height: int, width: int) -> Layout:
        """The tiles of a (height x width) image: one covering the whole image without a
        tile, or in auto mode when its padded size fits in `whole_pixels`."""
        if self._axes is None:
            return self._whole_layout(height, width, bucketed=False)
        if self.whole_pixels:
            whole = self._whole_layout(height, width, self._bucketed)
            if whole.rows.input_tile * whole.cols.input_tile <= self.whole_pixels:
                return whole
        pads = self.model.input_padding(height, width) if self._padded else None
        axes = []
        for axis, size in enumerate((height, width)):
            label_before = pads[1][axis][0] if pads else 0
            input_tile, output, context, step = self._axes[axis]
            starts = tile_starts(size, output, step, -label_before, self._period)
            axes.append(AxisTiles(size, input_tile, output, context, starts, output - step))
        return Layout(*axes, self.batch_size)

    def _whole_layout(self, height: int, width: int, bucketed: bool) -> Layout:
        """The whole image as one tile, padded as the model asks, or further up to its size
        bucket (`bucket_side`) so that similar sizes share a compiled shape."""
        pads = self.model.input_padding(height, width) if self._padded else None
        axes = []
        for axis, size in enumerate((height, width)):
            if pads:
                image_pads, (label_before, label_after) = pads[0][axis], pads[1][axis]
                output = size + label_before + label_after
                # Valid outputs step by the period; the input grows with the output.
                grow = bucket_side(size, 1) - output if bucketed else 0
                grow = -(-max(grow, 0) // self._period) * self._period
                output += grow
                input_side = size + sum(image_pads) + grow
                context = image_pads[0] - label_before
            else:
                label_before, context = 0, 0
                if bucketed:
                    output = bucket_side(size, self._multiple)
                else:
                    output = -(-size // self._multiple) * self._multiple
                input_side = output
            axes.append(AxisTiles(size, input_side, output, context, (-label_before,), 0))
        return Layout(*axes, 1)

    def _band_rows(self, sampler: TileSampler, bar) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 probabilities of the rows) of the sampled image, top to bottom."""
        rows, cols, batch_size = self._layout(sampler.height, sampler.width)
        tiles = [(i, j) for i in range(len(rows.starts)) for j in range(len(cols.starts))]
        batches = [tiles[k : k + batch_size] for k in range(0, len(tiles), batch_size)]
        row_weights = [rows.weights(i, self.blend) for i in range(len(rows.starts))]
        col_weights = [cols.weights(j, self.blend) for j in range(len(cols.starts))]
        capacity = _band_capacity(rows, batches)
        band = _Band(sampler.height, sampler.width, self.num_classes, capacity)
        pending = None
        for batch in batches + [None]:
            if batch is not None:
                inputs = np.zeros((batch_size, rows.input_tile, cols.input_tile, 3), np.uint8)
                weights_in_rows = np.zeros((batch_size, rows.output_tile), np.float32)
                weights_in_cols = np.zeros((batch_size, cols.output_tile), np.float32)
                for slot, (i, j) in enumerate(batch):
                    inputs[slot] = sampler(rows.input_indices(i), cols.input_indices(j))
                    weights_in_rows[slot], weights_in_cols[slot] = row_weights[i], col_weights[j]
                # Dispatched before the previous batch is read back: the host prepares and
                # accumulates while the device computes.
                outputs = self._network(self._variables, inputs, weights_in_rows, weights_in_cols)
            if pending is not None:
                done_batch, done_outputs = pending
                done_outputs = np.asarray(done_outputs)
                expected = (batch_size, rows.output_tile, cols.output_tile, self.num_classes)
                if done_outputs.shape != expected:
                    raise ModelInputError(
                        f"{type(self.model).__name__} gives {done_outputs.shape[1:]} for"
                        f" {(rows.input_tile, cols.input_tile)} inputs; expected {expected[1:]}"
                        f" (its input_multiple/input_padding and {self.num_classes} classes)"
                    )
                for slot, (i, j) in enumerate(done_batch):
                    weight = np.multiply.outer(row_weights[i], col_weights[j])
                    band.add(rows.starts[i], cols.starts[j], done_outputs[slot], weight)
                bar.update(len(done_batch))
                finished = rows.starts[batch[0][0]] if batch is not None else sampler.height
                if (chunk := band.finish(finished)) is not None:
                    yield chunk
            pending = (batch, outputs) if batch is not None else None

    def predict(
        self, image: np.ndarray, probabilities: np.ndarray | None = None, progress: bool = False
    ) -> np.ndarray:
        """The class of every pixel; optionally its class probabilities.

        Args:
          image: (H, W, 3) uint8, e.g. from jaxseg.data.images.read_image.
          probabilities: an (H, W, num_classes) float array (float16 suffices; a memory-mapped
            .npy from np.lib.format.open_memmap for large images) that receives the
            probabilities, row band by row band; None: not kept.
          progress: show a progress bar of the tiles (tqdm; it disappears when done).

        Returns:
          (H, W) argmax of the averaged probabilities: uint8 when num_classes <= 256, else
          int32.
        """
        image = np.asarray(image)
        channels = len(self.info.image_mean)
        if image.ndim != 3 or image.shape[-1] != channels or image.dtype != np.uint8:
            raise ValueError(
                f"expected a uint8 (H, W, {channels}) image, got {image.dtype} {image.shape}"
                " (jaxseg.data.images.read_image reads any file as one)"
            )
        height, width = image.shape[:2]
        shape = (height, width, self.num_classes)
        if probabilities is not None and probabilities.shape != shape:
            raise ValueError(f"probabilities must have shape {shape}, got {probabilities.shape}")
        mask = np.empty((height, width), np.uint8 if self.num_classes <= 256 else np.int32)
        sizes = [_scaled(height, width, scale) for scale in self.scales]
        count = sum(self._layout(*size).count for size in sizes)
        bar = tqdm(total=count, desc="tiles", unit="tile", leave=False, disable=not progress)
        with bar:
            for start, rows in self._rows(image, bar):
                stop = start + len(rows)
                mask[start:stop] = rows.argmax(axis=-1)
                if probabilities is not None:
                    probabilities[start:stop] = rows
        return mask

    def _rows(self, image: np.ndarray, bar) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 probabilities of the rows) of `image`, averaged over scales."""
        height, width = image.shape[:2]
        if self.scales == (1.0,):
            yield from self._band_rows(TileSampler(image, height, width), bar)
            return
        streams = []
        for scale in self.scales:
            size = _scaled(height, width, scale)
            sampler = TileSampler(image, *size)
            streams.append(ResizedRows(self._band_rows(sampler, bar), *size, height, width))
        for start in range(0, height, OUTPUT_CHUNK_ROWS):
            stop = min(start + OUTPUT_CHUNK_ROWS, height)
            rows = streams[0].rows(start, stop)  # a new array, added to in place
            for stream in streams[1:]:
                rows += stream.rows(start, stop)
            rows /= len(streams)
            yield start, rows


def _scaled(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size of the image resized by `scale` (scales == (1.0,): itself)."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def _band_capacity(rows: AxisTiles, batches) -> int:
    """The most image rows that tiles accumulated but not yet finished span at once."""
    most = 0
    for batch in batches:
        top = max(rows.starts[batch[0][0]], 0)
        bottom = min(rows.starts[batch[-1][0]] + rows.output_tile, rows.size)
        most = max(most, bottom - top)
    return most


class _Band:
    """Weighted probability sums of the image rows that tiles still touch."""

    def __init__(self, height: int, width: int, num_classes: int, capacity: int):
        self.height, self.width = height, width
        self.sums = np.zeros((capacity, width, num_classes), np.float32)
        self.weights = np.zeros((capacity, width), np.float32)
        self.top = 0  # the image row of sums[0]

    def add(self, row: int, col: int, weighted: np.ndarray, weight: np.ndarray) -> None:
        """Adds a tile's weighted probabilities whose first pixel is image pixel (row, col)."""
        first_row, last_row = max(row, 0), min(row + weighted.shape[0], self.height)
        first_col, last_col = max(col, 0), min(col + weighted.shape[1], self.width)
        tile_rows = slice(first_row - row, last_row - row)
        tile_cols = slice(first_col - col, last_col - col)
        band_rows = slice(first_row - self.top, last_row - self.top)
        self.sums[band_rows, first_col:last_col] += weighted[tile_rows, tile_cols]
        self.weights[band_rows, first_col:last_col] += weight[tile_rows, tile_cols]

    def finish(self, until: int) -> tuple[int, np.ndarray] | None:
        """(first row, probabilities) of rows [top, until), which no later tile touches."""
        count = min(until, self.height) - self.top
        if count <= 0:
            return None
        capacity = len(self.sums)
        assert count <= capacity, (count, capacity)
        probabilities = self.sums[:count] / self.weights[:count, :, None]
        # Moved up block by block: blocks `count` rows apart never overlap, so numpy needs no
        # temporary copy of the band.
        for start in range(0, capacity - count, count):
            stop = min(start + count, capacity - count)
            self.sums[start:stop] = self.sums[start + count : stop + count]
            self.weights[start:stop] = self.weights[start + count : stop + count]
        self.sums[capacity - count :] = 0
        self.weights[capacity - count :] = 0
        first, self.top = self.top, self.top + count
        return first, probabilities
