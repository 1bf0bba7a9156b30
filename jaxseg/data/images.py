"""The one image decoder of training and prediction: any file PIL reads -> uint8 (H, W, 3).

`read_image` applies the EXIF orientation, makes greyscale and palette images
RGB, drops alpha (RGBA, LA, PA: the colour channels are kept as stored, not
composited over a background), and scales 16-bit, 32-bit integer and float
images ("I;16", "I;16B", "I", "F", ...) linearly to 8 bits by an intensity
range. The range belongs to a dataset, not to an image: two images of one
microscope keep their relative brightness only if they are scaled alike.
`intensity_range_of` computes it over a dataset's files; folder datasets store
it in `SegmentationInfo.intensity_range`, which prediction uses for new images.

Images up to `MAX_IMAGE_PIXELS` (2**30, e.g. 32768 x 32768) are read; PIL's own
decompression-bomb limit (~179 megapixels) is replaced by this one while this
module decodes a file.
"""

import concurrent.futures
import contextlib
import threading
import zlib
from collections.abc import Iterable

import numpy as np
from absl import logging
from PIL import Image, ImageOps

from jaxseg.data.png_bands import read_png_by_bands
from jaxseg.errors import DataError

MAX_IMAGE_PIXELS = 2**30
HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I", "F")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_ROWS_PER_CHUNK = 1024  # bounds the float temporary of a high-bit-depth conversion
_PIXELS_PER_BAND = 2**22  # bounds the copies made while an 8-bit image becomes an array
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, zlib.error, Image.DecompressionBombError)


class DatasetError(DataError):
    """A file of a dataset cannot be used; the message names the file and the problem.

    Defined here, the leaf that decodes images, and re-exported by jaxseg.data.folder.
    """


_limit_lock = threading.Lock()
_limit_users = 0
_pil_limit = None


@contextlib.contextmanager
def _own_size_limit():
    """Lifts PIL's global pixel limit while this module decodes; MAX_IMAGE_PIXELS applies.

    Reference counted, so that concurrent reads (folder checks use threads) restore PIL's
    value only when the last one ends.
    """
    global _limit_users, _pil_limit
    with _limit_lock:
        if _limit_users == 0:
            _pil_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _limit_users += 1
    try:
        yield
    finally:
        with _limit_lock:
            _limit_users -= 1
            if _limit_users == 0:
                Image.MAX_IMAGE_PIXELS = _pil_limit


@contextlib.contextmanager
def _open(path: str):
    """The opened, size-checked PIL image; any decoding failure is a DatasetError naming path."""
    with _own_size_limit():
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DatasetError(
                        f"{path}: {width}x{height} (WxH) is {width * height} pixels, more than"
                        f" the limit of {MAX_IMAGE_PIXELS} (jaxseg.data.images.MAX_IMAGE_PIXELS);"
                        " split the image or raise the limit"
                    )
                yield image
        except DatasetError:
            raise
        except _DECODE_ERRORS as e:
            raise DatasetError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e


def _scale_to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Maps [low, high] linearly onto 0..255 (rounded, clipped), a band of rows at a time."""
    out = np.empty(values.shape, np.uint8)
    scale = 255.0 / (high - low) if high > low else 0.0
    for start in range(0, values.shape[0], _ROWS_PER_CHUNK):
        rows = values[start : start + _ROWS_PER_CHUNK].astype(np.float32)
        scaled = np.nan_to_num((rows - np.float32(low)) * np.float32(scale), nan=0.0)
        out[start : start + _ROWS_PER_CHUNK] = np.clip(np.rint(scaled), 0, 255)
    return out


def _value_range(values: np.ndarray) -> tuple[float, float]:
    finite = values if values.dtype.kind in "iu" else values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def read_image(path: str, intensity_range: tuple[float, float] | None = None) -> np.ndarray:
    """Decodes an image file as uint8 RGB.

    Args:
      path: any format PIL reads (PNG, JPEG, TIFF, BMP, ...); only the first frame of a
        multi-frame file is read.
      intensity_range: (low, high) of a 16-bit/32-bit/float dataset: `low` becomes 0 and
        `high` 255, values outside are clipped. Ignored for 8-bit images. None scales
        such an image by its own min..max and logs a warning, since brightness is then
        not comparable between images (compute one range with `intensity_range_of`).

    Returns:
      (H, W, 3) uint8, EXIF orientation applied, alpha dropped.

    Raises:
      DatasetError naming the file when it cannot be decoded (missing, corrupt,
      truncated, an unsupported mode) or exceeds MAX_IMAGE_PIXELS.
    """
    with _open(path) as image:
        try:
            # A PNG of more than one band is decoded by bands: no full-size decode buffer
            # beside the array. One band or less PIL decodes whole, 3.5x faster (CamVid's
            # 480x360: 3.7 against 13 ms), as the band path re-compresses each band.
            if image.format == "PNG" and image.width * image.height > _PIXELS_PER_BAND:
                array = read_png_by_bands(path, _PIXELS_PER_BAND)
                if array is not None:
                    return array
            image.load()  # decodes: a truncated or corrupt file fails here
            ImageOps.exif_transpose(image, in_place=True)
            if image.mode in HIGH_BIT_DEPTH_MODES:
                values = np.asarray(image)
                if intensity_range is None:
                    intensity_range = _value_range(values)
                    logging.warning(
                        "%s: a %s image read without an intensity range; scaled by its own"
                        " range %g..%g, so its brightness is not comparable with other images"
                        " (give intensity_range, see jaxseg.data.images.intensity_range_of)",
                        path,
                        image.mode,
                        *intensity_range,
                    )
                grey = _scale_to_uint8(values, *intensity_range)
                return np.repeat(grey[..., None], 3, axis=-1)
            if image.mode == "P" and "transparency" in image.info:
                image = image.convert("RGBA")  # the palette's transparency: alpha, dropped below
            if image.mode in _ALPHA_MODES:
                logging.log_first_n(
                    logging.INFO, "%s: %s image, alpha channel dropped", 1, path, image.mode
                )
            return _rgb_array(image)
        except _DECODE_ERRORS as e:
            raise DatasetError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e


def _rgb_array(image: Image.Image) -> np.ndarray:
    """A decoded image as uint8 (H, W, 3), converted and copied a band of rows at a time:
    np.asarray(image) holds two more full-size copies at its peak (PIL's tobytes joins
    its pieces), and convert("RGB") a third."""
    width, height = image.size
    array = np.empty((height, width, 3), np.uint8)
    rows = max(1, _PIXELS_PER_BAND // max(width, 1))
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))
        array[top : top + rows] = np.asarray(band if band.mode == "RGB" else band.convert("RGB"))
    return array


def _file_range(path: str) -> tuple[float, float] | None:
    with _open(path) as image:
        if image.mode not in HIGH_BIT_DEPTH_MODES:
            return None  # only the header was read
        try:
            image.load()
        except _DECODE_ERRORS as e:
            raise DatasetError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e
        return _value_range(np.asarray(image))


def intensity_range_of(paths: Iterable[str]) -> tuple[float, float] | None:
    """The (min, max) pixel value over the high-bit-depth images among `paths`.

    Args:
      paths: image files. 8-bit images are opened but not decoded.

    Returns:
      (low, high) for `read_image`, or None when every image is 8-bit.

    Raises:
      DatasetError naming a file that cannot be read.
    """
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # PIL decodes without the GIL
        ranges = [r for r in pool.map(_file_range, paths) if r is not None]
    if not ranges:
        return None
    return min(low for low, _ in ranges), max(high for _, high in ranges)
