"""Decoding a large PNG a band of rows at a time, so that no full-size copy of the image is
made beside its uint8 array (PIL decodes a whole image into its own buffer first: 4 bytes a
pixel, a second full copy).

The compressed stream is inflated incrementally; each band of filtered scanlines becomes a
small PNG of its own that PIL decodes. A scanline's filter may refer to the row above, so
every band after the first is given, as its first row, the previous band's last row
unfiltered (filter type 0), which is dropped after decoding. Only 8-bit, non-interlaced
PNGs without an eXIf chunk take this path; `read_png_by_bands` returns None for the others,
which PIL reads whole. `images.read_image` sends it only PNGs larger than one band: the
re-compression makes this path slower, so it pays only where it saves a large copy.
"""

import io
import struct
import zlib

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _chunks(file):
    """(type, data) of every chunk after the signature, data read lazily for IDAT."""
    while True:
        header = file.read(8)
        if len(header) < 8:
            raise ValueError("truncated PNG: no IEND chunk")
        length, kind = struct.unpack(">I4s", header)
        data = file.read(length)
        if len(data) < length:
            raise ValueError(f"truncated PNG: {kind!r} chunk cut short")
        file.read(4)  # CRC: PIL checks the band PNGs' own
        yield kind, data
        if kind == b"IEND":
            return


def read_png_by_bands(path: str, band_pixels: int) -> np.ndarray | None:
    """(H, W, 3) uint8 of an 8-bit PNG, decoded `band_pixels` pixels at a time; None when the
    file is not a PNG this path takes (the caller decodes it whole).

    Raises ValueError (or zlib.error) for a damaged file.
    """
    with open(path, "rb") as file:
        if file.read(8) != SIGNATURE:
            return None
        chunks = _chunks(file)
        kind, header = next(chunks)
        if kind != b"IHDR" or len(header) != 13:
            raise ValueError("PNG without an IHDR chunk first")
        width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
        if depth != 8 or interlace or colour not in _CHANNELS:
            return None
        stride = 1 + width * _CHANNELS[colour]  # filter byte + samples
        rows = max(1, band_pixels // max(width, 1))
        image = np.empty((height, width, 3), np.uint8)
        palette, inflate, pending, top, previous = b"", zlib.decompressobj(), b"", 0, None
        for kind, data in chunks:
            if kind == b"eXIf":
                return None  # an orientation to apply: PIL's path handles it
            if kind == b"PLTE":
                palette = _chunk(b"PLTE", data)
            if kind not in (b"IDAT", b"IEND"):
                continue
            pending += inflate.decompress(data) if kind == b"IDAT" else inflate.flush()
            while top < height and (len(pending) >= rows * stride or kind == b"IEND"):
                count = min(rows, height - top, len(pending) // stride)
                if count == 0:
                    raise ValueError(f"truncated PNG: image data ends at row {top} of {height}")
                band, pending = pending[: count * stride], pending[count * stride :]
                previous = _decode_band(
                    image, top, band, count, previous, header, palette, width, colour
                )
                top += count
            if kind == b"IEND":
                break
        if top < height:
            raise ValueError(f"truncated PNG: image data ends at row {top} of {height}")
        return image


def _decode_band(image, top, band, count, previous, header, palette, width, colour):
    """Decodes `count` filtered scanlines into image[top:top + count]; returns the band's
    last row unfiltered, in the file's own samples (the next band's first row)."""
    if previous is not None:
        band = b"\x00" + previous + band
    extra = previous is not None
    band_header = header[:4] + struct.pack(">I", count + extra) + header[8:]
    png = (
        SIGNATURE
        + _chunk(b"IHDR", band_header)
        + palette
        + _chunk(b"IDAT", zlib.compress(band, 1))
        + _chunk(b"IEND", b"")
    )
    with Image.open(io.BytesIO(png)) as decoded:
        decoded.load()
        samples = np.asarray(decoded)
        rgb = decoded.convert("RGB") if decoded.mode != "RGB" else decoded
        image[top : top + count] = np.asarray(rgb)[extra:]
    return samples[-1].tobytes()
