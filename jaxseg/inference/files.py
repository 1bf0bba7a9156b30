"""Predicting image files into output files: what predict.py does, as a library call.

For every input image NAME.EXT it writes, into the output directory:
  NAME.png           the class of every pixel as a palette PNG (its palette is the
                     dataset's colours, its pixel values the class indices; 16-bit
                     greyscale when there are more than 256 classes)
  NAME_overlay.png   the image blended with the coloured classes (optional)
  NAME_probs.npy     float16 (H, W, C) class probabilities (optional), streamed to disk

Each file is written under a hidden temporary name and renamed when complete, so a
killed run leaves no half-written output; outputs that exist are skipped unless
`overwrite`. An image that cannot be read is reported and the others are processed.
"""

import dataclasses
import glob
import os
import time

import numpy as np
from PIL import Image
from tqdm import tqdm

from jaxseg.data.folder import IMAGE_EXTENSIONS
from jaxseg.data.images import DatasetError, read_image
from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import ConfigError, DataError

PARTIAL = ".partial"  # suffix of files being written


def parse_tile(text: str, flag: str = "--tile") -> tuple[int, int] | None:
    """ "H,W" (or "S" for a square) -> (H, W); "0" -> None (whole images)."""
    try:
        sides = [int(part) for part in text.split(",")]
    except ValueError:
        sides = []
    if sides == [0]:
        return None
    if len(sides) == 1:
        sides *= 2
    if len(sides) != 2 or min(sides) <= 0:
        raise ConfigError(f"{flag}={text!r}: expected H,W (positive integers) or 0")
    return sides[0], sides[1]


def parse_scales(values, flag: str = "--scales") -> tuple[float, ...]:
    """["0.75", "1", "1.25"] -> (0.75, 1.0, 1.25)."""
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ConfigError(
            f"{flag}={','.join(values)}: expected numbers, e.g. 0.75,1,1.25"
        ) from None


def expand_inputs(patterns) -> list[str]:
    """Image paths from files, directories (their image files) and glob patterns.

    Raises:
      DataError: a pattern that matches no image, or two inputs with the same name
        (their outputs would collide).
    """
    found = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matches = sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
            )
            if not matches:
                raise DataError(
                    f"{pattern}: a directory with no images ({', '.join(IMAGE_EXTENSIONS)})"
                )
        elif os.path.isfile(pattern):
            matches = [pattern]
        else:
            matches = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not matches:
                raise DataError(f"{pattern}: no such file, and no file matches it as a pattern")
        found += [m for m in matches if m not in found]
    names = {}
    for path in found:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in names:
            raise DataError(
                f"{names[stem]} and {path} have the same name: their outputs would collide;"
                " predict them into different --output directories"
            )
        names[stem] = path
    return found


def prepare_output(directory: str) -> str:
    """Creates the output directory; removes what a killed run left half-written."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise DataError(f"--output {directory} exists and is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise DataError(f"--output {directory} cannot be created: {e.strerror or e}") from e
    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(PARTIAL):
            os.remove(os.path.join(directory, name))
    return directory


def _partial(path: str) -> str:
    directory, name = os.path.split(path)
    return os.path.join(directory, f".{name}{PARTIAL}")


def save_mask(path: str, mask: np.ndarray, palette) -> None:
    """A palette PNG of class indices (16-bit greyscale above 256 classes), atomically."""
    if len(palette) <= 256:
        image = Image.fromarray(mask.astype(np.uint8), mode="P")
        colours = np.zeros((256, 3), np.uint8)
        colours[: len(palette)] = np.asarray(palette, np.uint8)
        image.putpalette(colours.ravel().tolist())
    else:
        image = Image.fromarray(mask.astype(np.uint16))
    _save_image(path, image)


def overlay(image: np.ndarray, mask: np.ndarray, info: SegmentationInfo, alpha=0.5):
    """The image blended with the classes' colours (weight `alpha`)."""
    colours = info.colourize(mask).astype(np.float32)
    return np.round((1 - alpha) * image + alpha * colours).astype(np.uint8)


def _save_image(path: str, image: Image.Image) -> None:
    partial = _partial(path)
    image.save(partial, format="PNG")
    os.replace(partial, path)


@dataclasses.dataclass
class Summary:
    """What a prediction run did."""

    predicted: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    megapixels: float = 0.0


def predict_files(
    predictor,
    inputs,
    output_dir: str,
    *,
    with_overlay: bool = True,
    save_probabilities: bool = False,
    overwrite: bool = False,
    show_progress: bool = True,
) -> Summary:
    """Predicts every input image with `predictor` (jaxseg.inference.Predictor) and writes its
    outputs (module docstring). Unreadable images are listed in the summary, not raised."""
    info = predictor.info
    paths = expand_inputs(inputs)
    output_dir = prepare_output(output_dir)
    summary = Summary()
    start = time.perf_counter()
    bar = tqdm(paths, desc="predict", unit="img", disable=not show_progress, dynamic_ncols=True)
    for path in bar:
        stem = os.path.join(output_dir, os.path.splitext(os.path.basename(path))[0])
        outputs = {"mask": f"{stem}.png"}
        if with_overlay:
            outputs["overlay"] = f"{stem}_overlay.png"
        if save_probabilities:
            outputs["probabilities"] = f"{stem}_probs.npy"
        if not overwrite and all(os.path.exists(p) for p in outputs.values()):
            summary.skipped.append(path)
            continue
        try:
            image = read_image(path, info.intensity_range)
        except DatasetError as e:
            summary.failed.append((path, str(e)))
            continue
        probabilities = None
        if save_probabilities:
            shape = (*image.shape[:2], predictor.num_classes)
            probabilities = np.lib.format.open_memmap(
                _partial(outputs["probabilities"]), mode="w+", dtype=np.float16, shape=shape
            )
        mask = predictor.predict(image, probabilities)
        if probabilities is not None:
            probabilities.flush()
            del probabilities
            os.replace(_partial(outputs["probabilities"]), outputs["probabilities"])
        save_mask(outputs["mask"], mask, info.palette)
        if with_overlay:
            _save_image(outputs["overlay"], Image.fromarray(overlay(image, mask, info)))
        summary.predicted.append(path)
        summary.megapixels += image.shape[0] * image.shape[1] / 1e6
        bar.set_postfix(img_s=f"{len(summary.predicted) / (time.perf_counter() - start):.2f}")
    summary.seconds = time.perf_counter() - start
    return summary
