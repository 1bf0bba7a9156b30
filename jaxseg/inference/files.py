"""Predicting image files into output files: what predict.py does, as a library call.

For every input image NAME.EXT it writes, into the output directory:
  NAME.png           the class of every pixel as a palette PNG (its palette is the
                     dataset's colours, its pixel values the class indices; 16-bit
                     greyscale when there are more than 256 classes)
  NAME_overlay.png   the image blended with the coloured classes (optional)
  NAME_probs.npy     float16 (H, W, C) class probabilities (optional), streamed to disk
Inputs whose outputs would share a name (a.png and a.jpg; a.jpg and a_overlay.jpg)
keep their extension in NAME: a.png.png, a.jpg.png, a.jpg_overlay.png, ...

Nothing the user has is lost: an output never replaces an input file (refused before
any work, `overwrite` or not), an output directory that is also an input directory is
refused (its outputs would be read as inputs by the next run), and existing outputs are
kept unless `overwrite`. Each file is written under a hidden temporary name and renamed
when complete (jaxseg.atomic): a failed or killed run leaves no half-written output. An
image that cannot be read is reported and the others are processed.
"""

import contextlib
import dataclasses
import errno
import glob
import os
import time

import numpy as np
from tqdm import tqdm

from jaxseg.atomic import atomic_path, sweep_stale_temporaries
from jaxseg.data.folder import IMAGE_EXTENSIONS
from jaxseg.data.images import DatasetError, read_image
from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import ConfigError, DataError
from jaxseg.inference.png import write_png

SUFFIXES = {"mask": ".png", "overlay": "_overlay.png", "probabilities": "_probs.npy"}


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
      DataError: a pattern that matches no image.
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
    return found


def output_names(paths) -> dict[str, str]:
    """The NAME of each input's outputs: its stem, or its file name (stem and extension)
    for inputs whose outputs would otherwise share a name (case-insensitively).

    Raises:
      DataError: two inputs with the same file name (in different directories).
    """
    names = {path: os.path.splitext(os.path.basename(path))[0] for path in paths}
    for keep_extension in (False, True):
        owners = {}
        for path, name in names.items():
            for suffix in SUFFIXES.values():
                owners.setdefault((name + suffix).casefold(), []).append(path)
        clashes = [group for group in owners.values() if len(group) > 1]
        if not clashes:
            return names
        if keep_extension:
            first, second = clashes[0][:2]
            raise DataError(
                f"{first} and {second}: their outputs would have the same name; predict"
                " them into different --output directories"
            )
        for group in clashes:
            for path in group:
                names[path] = os.path.basename(path)
    return names


def _entry(path: str) -> tuple[str, str]:
    """A directory entry: its directory resolved (symbolic links, '..'), and its name."""
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.normcase(os.path.realpath(directory)), os.path.normcase(name)


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


def check_inputs_kept(patterns, inputs, outputs, directory: str) -> None:
    """Raises DataError, before any work, if an output would replace an input: the same
    directory entry, or the same file (a hard or symbolic link to it); or if `directory`
    is a directory given as input (the next run would read the outputs as inputs)."""
    if os.path.isdir(directory):
        for pattern in patterns:
            if os.path.isdir(pattern) and os.path.samefile(pattern, directory):
                raise DataError(
                    f"--output {directory} is also the input directory {pattern}: the outputs"
                    " would be read as inputs by the next run; choose another --output, or"
                    f" give the images by a pattern that leaves the outputs out, e.g."
                    f" --input '{os.path.join(pattern, '*.jpg')}'"
                )
    entries = {_entry(path): path for path in inputs}
    files = {_file_id(path): path for path in inputs}
    files.pop(None, None)
    for output in outputs:
        source = entries.get(_entry(output))
        if source is None and os.path.lexists(output):
            source = files.get(_file_id(output))
        if source is not None:
            raise DataError(
                f"the output {output} would replace the input {source}: outputs never"
                " replace inputs (not even with --overwrite); choose an --output directory"
                " that holds no input"
            )


def prepare_output(directory: str) -> str:
    """Creates the output directory; removes what killed runs left half-written."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise DataError(f"--output {directory} exists and is not a directory")
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise DataError(f"--output {directory} cannot be created: {e.strerror or e}") from e
    sweep_stale_temporaries(directory, recursive=False)
    return directory


def _bands(height: int, width: int) -> range:
    """First rows of the bands (about 4 megapixels each) that outputs are written in."""
    return range(0, height, max(1, 2**22 // max(width, 1)))


def save_mask(path: str, mask: np.ndarray, palette) -> None:
    """A palette PNG of class indices (16-bit greyscale above 256 classes), atomically,
    encoded band by band (no copy of the mask)."""
    height, width = mask.shape
    dtype = np.uint8 if len(palette) <= 256 else np.uint16
    step = _bands(height, width).step
    bands = (mask[top : top + step].astype(dtype, copy=False) for top in _bands(height, width))
    colours = palette if len(palette) <= 256 else None
    with atomic_path(path) as partial, open(partial, "wb") as f:
        write_png(f, bands, height, width, colours)


def overlay(image: np.ndarray, mask: np.ndarray, info: SegmentationInfo, alpha=0.5):
    """The image blended with the classes' colours (weight `alpha`), uint8."""
    colours = info.colourize(mask).astype(np.float32)
    blended = np.float32(1 - alpha) * image + np.float32(alpha) * colours
    return np.round(blended).astype(np.uint8)


def save_overlay(path: str, image: np.ndarray, mask: np.ndarray, info: SegmentationInfo) -> None:
    """overlay() as an RGB PNG, atomically, computed and encoded band by band: no full-size
    blend or float array is ever formed."""
    height, width = mask.shape
    step = _bands(height, width).step
    bands = (
        overlay(image[top : top + step], mask[top : top + step], info)
        for top in _bands(height, width)
    )
    with atomic_path(path) as partial, open(partial, "wb") as f:
        write_png(f, bands, height, width)


def _reserve(path: str) -> None:
    """Allocates a file's disk space now, so that a full disk is an OSError here and not a
    SIGBUS when a memory-mapped page of it is first written."""
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            try:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise


def plan_outputs(
    inputs, output_dir: str, with_overlay: bool = True, save_probabilities: bool = False
) -> list[tuple[str, dict[str, str]]]:
    """(input image, {"mask"|"overlay"|"probabilities": output path}) for every input image;
    reads and writes nothing (command lines check their inputs with it before loading a
    model).

    Raises:
      DataError: inputs that match nothing, outputs that would collide or replace an input
        (see expand_inputs, output_names, check_inputs_kept).
    """
    paths = expand_inputs(inputs)
    kinds = ["mask"] + ["overlay"] * with_overlay + ["probabilities"] * save_probabilities
    jobs = [
        (path, {kind: os.path.join(output_dir, name + SUFFIXES[kind]) for kind in kinds})
        for path, name in output_names(paths).items()
    ]
    outputs = [path for _, paths_out in jobs for path in paths_out.values()]
    check_inputs_kept(inputs, paths, outputs, output_dir)
    return jobs


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
    outputs (module docstring). Unreadable images are listed in the summary, not raised.

    Raises:
      DataError: before any work, for inputs that match nothing, outputs that would replace
        inputs or collide; during the run, an output that cannot be written (a full disk),
        naming it (the outputs written before are complete; nothing half-written is left).
    """
    info = predictor.info
    jobs = plan_outputs(inputs, output_dir, with_overlay, save_probabilities)
    output_dir = prepare_output(output_dir)
    summary = Summary()
    start = time.perf_counter()
    bar = tqdm(jobs, desc="predict", unit="img", disable=not show_progress, dynamic_ncols=True)
    for path, outputs in bar:
        if not overwrite:  # only what is missing is written
            outputs = {kind: p for kind, p in outputs.items() if not os.path.lexists(p)}
        if not outputs:
            summary.skipped.append(path)
            continue
        try:
            image = read_image(path, info.intensity_range)
        except DatasetError as e:
            summary.failed.append((path, str(e)))
            continue
        _predict_image(predictor, image, outputs, show_progress, len(summary.predicted))
        summary.predicted.append(path)
        summary.megapixels += image.shape[0] * image.shape[1] / 1e6
        bar.set_postfix(img_s=f"{len(summary.predicted) / (time.perf_counter() - start):.2f}")
    summary.seconds = time.perf_counter() - start
    return summary


def _predict_image(predictor, image, outputs: dict, show_progress: bool, done: int) -> None:
    """Predicts one image into `outputs` ({kind: path}); each file whole or not at all."""
    with contextlib.ExitStack() as stack:
        probabilities = None
        if "probabilities" in outputs:
            stack.enter_context(_writing(outputs["probabilities"], done))
            partial = stack.enter_context(atomic_path(outputs["probabilities"]))
            shape = (*image.shape[:2], predictor.num_classes)
            probabilities = np.lib.format.open_memmap(
                partial, mode="w+", dtype=np.float16, shape=shape
            )
            _reserve(partial)
        mask = predictor.predict(image, probabilities, progress=show_progress)
        if probabilities is not None:
            probabilities.flush()
            del probabilities
    if "mask" in outputs:
        with _writing(outputs["mask"], done):
            save_mask(outputs["mask"], mask, predictor.info.palette)
    if "overlay" in outputs:
        with _writing(outputs["overlay"], done):
            save_overlay(outputs["overlay"], image, mask, predictor.info)


@contextlib.contextmanager
def _writing(path: str, done: int):
    """An OSError (a full disk) while writing `path` as a DataError naming it."""
    try:
        yield
    except OSError as e:
        raise DataError(
            f"{path}: cannot be written ({e.strerror or e}); the {done} image(s) predicted"
            " before it are complete, and the same command continues after them"
        ) from e
