"""PNG files written band of rows by band of rows: no full-size copy of what is written.

PIL encodes a PNG from a whole image held in its own memory (four bytes per RGB
pixel), which for a 16384^2 overlay is a second gigabyte beside the array; here
the rows are filtered and deflated as they come, so only one band is held.
"""

import struct
import zlib
from collections.abc import Iterable

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB, _PALETTE = 0, 2, 3  # PNG colour types
_NONE, _UP = 0, 2  # PNG row filters


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(
    file,
    bands: Iterable[np.ndarray],
    height: int,
    width: int,
    palette=None,
    level: int = 6,
) -> None:
    """Writes rows to an open binary file as one PNG.

    Args:
      file: a file opened for binary writing.
      bands: consecutive bands of rows, top to bottom, `height` rows in all: uint8 (n,
        width, 3) for RGB, uint8 (n, width) for greyscale or palette indices, uint16 (n,
        width) for 16-bit greyscale.
      palette: (colours, 3) uint8 for a palette image (at most 256 colours).
      level: zlib compression level (PIL's default, 6).
    """
    compressor = zlib.compressobj(level)
    header = None
    previous = None
    written = 0
    for band in bands:
        band = np.asarray(band)
        if header is None:
            if band.ndim == 3:
                colour, depth = _RGB, 8
            else:
                colour, depth = (_PALETTE if palette is not None else _GREY), band.itemsize * 8
            header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
            file.write(_SIGNATURE + _chunk(b"IHDR", header))
            if palette is not None:
                file.write(_chunk(b"PLTE", np.asarray(palette, np.uint8).tobytes()))
        rows = band.astype(band.dtype.newbyteorder(">"), copy=False).view(np.uint8)
        rows = rows.reshape(len(band), -1)
        if colour == _RGB:  # "Up": each byte minus the one above, the usual gain on images
            above = np.empty_like(rows)
            above[0] = previous if previous is not None else 0
            above[1:] = rows[:-1]
            previous = rows[-1].copy()
            filtered = np.empty((len(rows), rows.shape[1] + 1), np.uint8)
            filtered[:, 0] = _UP
            np.subtract(rows, above, out=filtered[:, 1:])
        else:  # class indices: long runs that deflate well unfiltered
            filtered = np.empty((len(rows), rows.shape[1] + 1), np.uint8)
            filtered[:, 0] = _NONE
            filtered[:, 1:] = rows
        if data := compressor.compress(filtered):
            file.write(_chunk(b"IDAT", data))
        written += len(band)
    if written != height:
        raise ValueError(f"write_png: {written} rows given for a height of {height}")
    file.write(_chunk(b"IDAT", compressor.flush()) + _chunk(b"IEND", b""))
