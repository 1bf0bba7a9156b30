"""The one image decoder: modes, EXIF orientation, high bit depths, broken files, size limit."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from jaxseg.data import DatasetError, load_dataset
from jaxseg.data import images as images_module
from jaxseg.data.images import intensity_range_of, read_image


def _save(path, array_or_image, **options):
    image = array_or_image
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **options)
    return str(path)


def _ramp(low, high, shape=(8, 16)):
    """A uint16 image whose values run linearly from low to high."""
    return np.linspace(low, high, shape[0] * shape[1]).round().astype(np.uint16).reshape(shape)


def test_greyscale_palette_and_alpha_become_rgb(tmp_path):
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8) * 5
    decoded = read_image(_save(tmp_path / "grey.png", grey))
    assert decoded.dtype == np.uint8 and decoded.shape == (6, 8, 3)
    np.testing.assert_array_equal(decoded, np.repeat(grey[..., None], 3, axis=-1))

    rgba = np.random.default_rng(0).integers(0, 256, (5, 7, 4), dtype=np.uint8)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "rgba.png", rgba)), rgba[..., :3])
    grey_alpha = Image.fromarray(rgba[..., :2], "LA")
    decoded = read_image(_save(tmp_path / "la.png", grey_alpha))
    np.testing.assert_array_equal(decoded, np.repeat(rgba[..., :1], 3, axis=-1))

    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = Image.fromarray(indices, "P")
    palette.putpalette([10, 20, 30, 200, 100, 0, 0, 0, 255])
    colours = np.array([[10, 20, 30], [200, 100, 0], [0, 0, 255]], np.uint8)
    np.testing.assert_array_equal(read_image(_save(tmp_path / "p.png", palette)), colours[indices])
    # A palette with a transparent entry: its colour is kept, the transparency dropped.
    path = _save(tmp_path / "p_transparent.png", palette, transparency=1)
    np.testing.assert_array_equal(read_image(path), colours[indices])


def test_sixteen_bit_images_keep_their_relative_brightness_under_one_range(tmp_path):
    dim = _save(tmp_path / "dim.png", _ramp(100, 1100))
    bright = _save(tmp_path / "bright.png", _ramp(100, 4100))
    assert Image.open(dim).mode == "I;16"
    dataset_range = intensity_range_of(
        [dim, bright, _save(tmp_path / "rgb.png", np.zeros((2, 2, 3), np.uint8))]
    )
    assert dataset_range == (100.0, 4100.0)

    dim_rgb, bright_rgb = read_image(dim, dataset_range), read_image(bright, dataset_range)
    assert dim_rgb.dtype == np.uint8 and dim_rgb.shape == (8, 16, 3)
    assert dim_rgb.min() == 0 and dim_rgb.max() == round(1000 / 4000 * 255)  # 64: a quarter
    assert bright_rgb.max() == 255
    # Linear, and no longer squashed to {0, 255} (PIL's convert("RGB") clips at 255).
    assert len(np.unique(bright_rgb)) > 100
    np.testing.assert_allclose(bright_rgb[..., 0], (_ramp(100, 4100) - 100) / 4000 * 255, atol=0.5)


def test_sixteen_bit_image_without_a_range_uses_its_own_and_warns(tmp_path, caplog):
    path = _save(tmp_path / "dim.png", _ramp(100, 1100))
    with caplog.at_level(logging.WARNING):
        decoded = read_image(path)
    assert decoded.min() == 0 and decoded.max() == 255
    assert any(
        "without an intensity range" in r.getMessage() and path in r.getMessage()
        for r in caplog.records
    )


def test_32_bit_and_float_images_are_scaled(tmp_path):
    values = _ramp(0, 1000).astype(np.int32) * 1000  # beyond 16 bits
    as_int = _save(tmp_path / "int.tif", values)
    as_float = _save(tmp_path / "float.tif", values.astype(np.float32) / 1e6)
    assert Image.open(as_int).mode == "I" and Image.open(as_float).mode == "F"
    assert intensity_range_of([as_int]) == (0.0, 1e6)
    np.testing.assert_array_equal(read_image(as_int, (0, 1e6)), read_image(as_float, (0, 1.0)))
    assert read_image(as_float, (0, 1.0))[-1, -1, 0] == 255
    big_endian = _save(tmp_path / "big.tif", _ramp(0, 4000).astype(">u2"))
    assert Image.open(big_endian).mode == "I;16B"
    assert read_image(big_endian, (0, 4000))[-1, -1, 0] == 255


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((10, 20, 3), np.uint8)  # stored 10 high, 20 wide
    stored[:5, :5] = 255  # a white block at the stored top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(tmp_path / "rotated.jpg", stored, exif=exif, quality=95)
    decoded = read_image(path)
    assert decoded.shape == (20, 10, 3)
    # After a clockwise turn the stored top-left corner is at the top-right.
    assert decoded[:5, -5:].mean() > 200 and decoded[-5:, :5].mean() < 50


def test_broken_files_name_the_file(tmp_path):
    good = _save(tmp_path / "good.png", np.full((32, 32, 3), 7, np.uint8))
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(open(good, "rb").read()[:60])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    for path in (truncated, garbage, tmp_path / "missing.png"):
        with pytest.raises(DatasetError, match=str(path)):
            read_image(str(path))
    # intensity_range_of decodes high-bit-depth files only (8-bit ones: the header).
    deep = _save(tmp_path / "deep.png", _ramp(0, 60000, (64, 64)))
    truncated_deep = tmp_path / "truncated_deep.png"
    truncated_deep.write_bytes(open(deep, "rb").read()[:200])
    with pytest.raises(DatasetError, match="truncated_deep.png"):
        intensity_range_of([good, deep, str(truncated_deep)])


def test_size_limit_is_ours_not_pils(tmp_path, monkeypatch):
    path = _save(tmp_path / "image.png", np.zeros((20, 30, 3), np.uint8))
    # PIL refuses images above 2 * Image.MAX_IMAGE_PIXELS (~179 megapixels by default);
    # ours (2**30) replaces it while reading, and PIL's is restored afterwards.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert read_image(path).shape == (20, 30, 3)
    assert Image.MAX_IMAGE_PIXELS == 100
    assert images_module.MAX_IMAGE_PIXELS >= 16384 * 16384
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(DatasetError, match=r"image.png: 30x20 \(WxH\) is 600 pixels.*limit of 500"):
        read_image(path)


def test_folder_dataset_of_sixteen_bit_images(tmp_path, caplog):
    ranges = {"a": (0, 1000), "b": (500, 3000), "c": (0, 2000)}
    for name, (low, high) in ranges.items():
        split = "val" if name == "c" else "train"
        _save(tmp_path / "images" / split / f"{name}.png", _ramp(low, high))
        mask = (_ramp(low, high) > 900).astype(np.uint8)
        _save(tmp_path / "masks" / split / f"{name}.png", mask)
    with caplog.at_level(logging.WARNING):
        sources, info = load_dataset(
            "folder", root=str(tmp_path), splits=("train", "val"), class_names=("bg", "fg")
        )
    assert not [r for r in caplog.records if "intensity range" in r.getMessage()]
    assert info.intensity_range == (0.0, 3000.0)  # over every split
    assert type(info).from_dict(info.to_dict()) == info
    images = {
        e.id: sources[s][k]["image"] for s in sources for k, e in enumerate(sources[s].examples)
    }
    for name, (low, high) in ranges.items():
        image = images[name]
        assert image.dtype == np.uint8 and image.shape == (8, 16, 3)
        assert image.max() == round(high / 3000 * 255) and image.min() == round(low / 3000 * 255)


def _smooth(rng, height, width, channels):
    """An image whose rows and columns change gradually: PNG's encoder picks its filters."""
    steps = np.cumsum(rng.integers(-3, 4, (height, width, channels)), axis=1)
    return ((steps + np.cumsum(rng.integers(-3, 4, (height, 1, channels)), axis=0)) % 256).astype(
        np.uint8
    )


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "P+transparency"])
def test_png_decoded_by_bands_equals_pil_whole(tmp_path, mode, monkeypatch):
    """8-bit PNGs are decoded a band of rows at a time (no full-size PIL buffer): the same
    pixels as PIL's whole-image decode, for every colour type and band height, and PIL never
    loads the full-size image."""
    from PIL import PngImagePlugin

    rng = np.random.default_rng(0)
    channels = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2}.get(mode, 3)
    pixels = _smooth(rng, 37, 53, channels)
    if mode.startswith("P"):
        image = Image.fromarray(pixels).quantize(37)
        if mode == "P+transparency":
            image.info["transparency"] = 3
    else:
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode)
    path = tmp_path / "image.png"
    image.save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    loaded = []
    original_load = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(
        PngImagePlugin.PngImageFile,
        "load",
        lambda self: loaded.append(self.size) or original_load(self),
    )
    for band_pixels in (1, 7 * 53, 10**6):  # one row, 7 rows, the whole image at once
        loaded.clear()
        monkeypatch.setattr(images_module, "_PIXELS_PER_BAND", band_pixels)
        np.testing.assert_array_equal(read_image(str(path)), expected)
        tallest = max(height for _, height in loaded)
        assert tallest == min(37, band_pixels // 53 + 1 if band_pixels > 1 else 2)


def test_only_a_png_of_more_than_one_band_is_decoded_by_bands(tmp_path, monkeypatch):
    """The band path re-compresses every band, so an image that fits in one band is decoded
    whole by PIL (the faster path; its buffer is no larger than a band's)."""
    path = tmp_path / "image.png"
    pixels = _smooth(np.random.default_rng(2), 20, 30, 3)
    Image.fromarray(pixels).save(path)
    banded = []
    original = images_module.read_png_by_bands
    monkeypatch.setattr(
        images_module, "read_png_by_bands", lambda *a: banded.append(a) or original(*a)
    )
    for band_pixels, by_bands in ((20 * 30, False), (20 * 30 - 1, True)):
        banded.clear()
        monkeypatch.setattr(images_module, "_PIXELS_PER_BAND", band_pixels)
        np.testing.assert_array_equal(read_image(str(path)), pixels)
        assert bool(banded) == by_bands, band_pixels


def test_pngs_the_band_path_does_not_take_are_read_whole(tmp_path):
    """16-bit PNGs (scaled by a range) and PNGs with an EXIF orientation go through PIL."""
    from jaxseg.data.png_bands import read_png_by_bands

    path = tmp_path / "sixteen.png"
    Image.fromarray(np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000).save(path)
    assert read_png_by_bands(str(path), 4) is None
    assert read_image(str(path), (0, 11000)).shape == (3, 4, 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = tmp_path / "rotated.png"
    Image.fromarray(np.zeros((3, 5, 3), np.uint8)).save(rotated, exif=exif)
    assert read_png_by_bands(str(rotated), 4) is None
    assert read_image(str(rotated)).shape == (5, 3, 3)


def test_a_truncated_png_read_by_bands_names_the_file(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    path = tmp_path / "cut.png"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(images_module, "_PIXELS_PER_BAND", 64 * 8)
    with pytest.raises(DatasetError, match="cut.png: cannot read the image"):
        read_image(str(path))
