"""Folder datasets: `images/` and `masks/` directories, the form most users have.

Layout (each part optional):
  <root>/<images_dir>/[<split>/]<id>.<ext>     RGB or greyscale images
  <root>/<masks_dir>/[<split>/]<id>.png        masks, same id
  <root>/<split_dir>/<split>.txt               one id per line, selects the split's files
  <root>/<instances_dir>/[<split>/]<id>.png    instance ids (0 = background), for weight maps

Mask formats:
  "index":  one class index per pixel (greyscale "L", or a palette "P" PNG whose
            palette indices are the classes, as in Pascal VOC);
  "binary": 0 / 255 (or 0 / 1) mapped to classes 0 / 1;
  "colour": RGB (or palette) colours mapped to classes by a colour table.

Every pair is checked when the dataset is loaded: unreadable or truncated
images, a mask whose size differs from its image, mask values that are neither
a class nor the ignore label, images without masks, colours missing from the
table, empty directories. Each is an error naming the file and the problem,
or, with `on_error="skip"`, the example is dropped and counted in the log.
A mask without an image is not used, and named in a logged warning.
"""

import concurrent.futures
import csv
import dataclasses
import glob
import os
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image

from jaxseg.data.images import DatasetError, intensity_range_of, read_image
from jaxseg.data.info import SegmentationInfo, class_statistics
from jaxseg.data.weights import unet_weight_map

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_FORMATS = ("index", "binary", "colour")
ON_ERROR = ("raise", "skip")


@dataclasses.dataclass(frozen=True)
class ClassTable:
    """Class names, their display colours, and (for "colour" masks) the colour of each class."""

    names: tuple[str, ...]
    colours: tuple[tuple[int, int, int], ...] | None = None
    ignore_colour: tuple[int, int, int] | None = None  # the ignore row's colour, if any


def read_class_table(path: str, ignore_label: int | None = None) -> ClassTable:
    """Reads a CSV with columns id,name[,r,g,b]; the row of `ignore_label` (if any) is no class.

    Class ids must be 0..N-1 (the ignore row aside).
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the class table: {e.strerror}") from e
    if not rows or not {"id", "name"} <= set(rows[0]):
        raise DatasetError(f"{path}: a class table needs a header with columns id,name[,r,g,b]")
    has_colours = {"r", "g", "b"} <= set(rows[0])
    entries, ignore_colour = {}, None
    for line, row in enumerate(rows, start=2):
        try:
            class_id = int(row["id"])
            colour = tuple(int(row[c]) for c in "rgb") if has_colours else None
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{path}, line {line}: not a class row: {row}") from e
        if class_id == ignore_label:
            ignore_colour = colour
        else:
            entries[class_id] = (row["name"], colour)
    if sorted(entries) != list(range(len(entries))):
        raise DatasetError(
            f"{path}: class ids must be 0..{len(entries) - 1} (besides the ignore label"
            f" {ignore_label}); got {sorted(entries)}"
        )
    names = tuple(entries[i][0] for i in range(len(entries)))
    colours = tuple(entries[i][1] for i in range(len(entries))) if has_colours else None
    return ClassTable(names, colours, ignore_colour)


def _read_image(path: str, intensity_range=None) -> np.ndarray:
    return read_image(path, intensity_range)


def _read_raw_mask(path: str) -> np.ndarray:
    """The mask as stored: (H, W) values (palette PNGs as indices), or (H, W, 3) for RGB."""
    try:
        with Image.open(path) as mask:
            mask.load()
            if mask.mode in ("RGB", "RGBA"):
                return np.asarray(mask.convert("RGB"))
            if mask.mode in ("L", "P", "I", "I;16", "I;16B", "1"):
                return np.asarray(mask).astype(np.int64)
            raise DatasetError(f"{path}: unsupported mask mode {mask.mode!r}")
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read the mask ({type(e).__name__}: {e})") from e


@dataclasses.dataclass(frozen=True)
class MaskDecoder:
    """Turns a stored mask into class indices (ignore_label where unlabelled)."""

    mask_format: str
    num_classes: int
    ignore_label: int
    colours: tuple[tuple[int, int, int], ...] | None = None
    ignore_colour: tuple[int, int, int] | None = None

    def __call__(self, path: str) -> np.ndarray:
        raw = _read_raw_mask(path)
        if self.mask_format == "colour":
            return self._from_colours(path, raw)
        if raw.ndim == 3:
            raise DatasetError(
                f"{path}: an RGB mask, but mask_format={self.mask_format!r}; use"
                " mask_format='colour' with a colour table"
            )
        if self.mask_format == "binary":
            allowed = {0, 1, 255, self.ignore_label}
            values = set(np.unique(raw).tolist())
            if not values <= allowed:
                raise DatasetError(
                    f"{path}: a binary mask holds 0 and 255 (or 0 and 1); found"
                    f" {sorted(values - allowed)[:10]}"
                )
            # 255 and 1 are the foreground, also when the ignore label is 255.
            return np.where((raw == 255) | (raw == 1), 1, raw).astype(np.int32)
        valid = (raw < self.num_classes) | (raw == self.ignore_label)
        if not valid.all():
            bad = np.unique(raw[~valid])
            raise DatasetError(
                f"{path}: mask values {bad[:10].tolist()} are neither classes"
                f" 0..{self.num_classes - 1} nor the ignore label {self.ignore_label}"
            )
        return raw.astype(np.int32)

    def _from_colours(self, path, raw):
        if raw.ndim == 2:  # a palette PNG: look its indices up in its palette
            with Image.open(path) as mask:
                raw = np.asarray(mask.convert("RGB"))
        codes = (
            (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
        )
        table = {(r << 16) | (g << 8) | b: index for index, (r, g, b) in enumerate(self.colours)}
        if self.ignore_colour is not None:
            r, g, b = self.ignore_colour
            table[(r << 16) | (g << 8) | b] = self.ignore_label
        unique, inverse = np.unique(codes, return_inverse=True)
        missing = [u for u in unique.tolist() if u not in table]
        if missing:
            shown = [((m >> 16) & 255, (m >> 8) & 255, m & 255) for m in missing[:5]]
            raise DatasetError(
                f"{path}: colours {shown} are not in the colour table (classes:"
                f" {len(self.colours)}); add them to the table or map them to the ignore label"
            )
        lookup = np.array([table[u] for u in unique.tolist()], np.int32)
        return lookup[inverse].reshape(codes.shape)


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    image: str
    mask: str
    instances: str | None = None
    size: tuple[int, int] | None = None  # (height, width), known once checked


class FolderSource(Sequence):
    """Random-access source over checked (image, mask[, instances]) files; picklable."""

    def __init__(
        self, examples, decoder: MaskDecoder, weight_map: dict | None = None, intensity_range=None
    ):
        self.examples = list(examples)
        self.decoder = decoder
        self.weight_map = weight_map  # unet_weight_map arguments, or None
        self.intensity_range = intensity_range  # of high-bit-depth images (SegmentationInfo)

    def __len__(self):
        return len(self.examples)

    def image_sizes(self) -> list[tuple[str, tuple[int, int]]]:
        """(image path, (height, width)) of every example, as read when it was checked."""
        return [(example.image, example.size) for example in self.examples]

    def __getitem__(self, index):
        example = self.examples[index]
        record = {
            "image": _read_image(example.image, self.intensity_range),
            "mask": self.decoder(example.mask),
        }
        if self.weight_map is not None:
            instances = _read_raw_mask(example.instances)
            record["weight"] = unet_weight_map(record["mask"], instances, **self.weight_map)
        return record


def _list_files(directory: str, extensions) -> dict[str, str]:
    """{id: path} of the files with one of `extensions` in `directory`."""
    if not os.path.isdir(directory):
        raise DatasetError(f"{directory}: no such directory")
    files = {}
    for name in sorted(os.listdir(directory)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in extensions:
            if stem in files:
                raise DatasetError(f"{directory}: two files for id {stem!r}")
            files[stem] = os.path.join(directory, name)
    return files


def _read_split_ids(path: str) -> list[str]:
    try:
        with open(path) as f:
            ids = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the split list: {e.strerror}") from e
    return [os.path.splitext(os.path.basename(i.split()[0]))[0] for i in ids]


def _check_pair(example: Example, decoder: MaskDecoder):
    """Reads an example fully; returns its decoded mask or raises DatasetError."""
    # Any range: only decoding and the size are checked here (and no warning per image).
    image_size = read_image(example.image, intensity_range=(0.0, 1.0)).shape[:2]
    mask = decoder(example.mask)
    if mask.shape != image_size:
        raise DatasetError(
            f"{example.mask}: mask is {mask.shape[0]}x{mask.shape[1]} (HxW) but its image"
            f" {example.image} is {image_size[0]}x{image_size[1]}"
        )
    if example.instances is not None:
        instances = _read_raw_mask(example.instances)
        if instances.shape != mask.shape:
            raise DatasetError(
                f"{example.instances}: instance map size {instances.shape}"
                f" differs from its mask {mask.shape}"
            )
    return mask


def load_folder(
    root: str,
    splits: Sequence[str] = ("train", "val", "test"),
    images_dir: str = "images",
    masks_dir: str = "masks",
    split_dir: str = "",
    split_subdirs: bool = True,
    holdout: Sequence[str] = (),
    holdout_from: str = "train",
    holdout_split: str = "validation",
    mask_format: str = "index",
    class_names: Sequence[str] = (),
    class_table: str = "",
    ignore_label: int = 255,
    instances_dir: str = "",
    weight_map_w0: float = 10.0,
    weight_map_sigma: float = 5.0,
    on_error: str = "raise",
):
    """Loads and checks a folder dataset; returns ({split: FolderSource}, SegmentationInfo).

    Args:
      root: dataset directory; the other paths are relative to it.
      splits: split names. With `split_subdirs` each is a subdirectory of
        images_dir/masks_dir; with `split_dir`, `<split_dir>/<split>.txt` lists
        its ids (both may hold). The first split is the training split.
      split_subdirs: False when all files sit directly in images_dir/masks_dir.
      holdout: ids moved from split `holdout_from` into a new split
        `holdout_split` (validation data for a dataset that has none).
      mask_format: "index", "binary" or "colour" (see module docstring).
      class_names: names of classes 0..N-1; or `class_table`, a CSV
        id,name[,r,g,b] whose colours are the palette and, for "colour"
        masks, the colour of each class.
      ignore_label: mask value excluded from loss and metrics (CamVid: 11).
      instances_dir: instance-id masks; when given, each example carries the
        U-Net border weight map ("weight") with `weight_map_w0`/`_sigma` and
        median-frequency class weights.
      on_error: "raise", or "skip" to drop bad examples (counted in the log).
    """
    if mask_format not in MASK_FORMATS:
        raise DatasetError(f"mask_format {mask_format!r} is not one of {MASK_FORMATS}")
    if not os.path.isdir(root):
        raise DatasetError(_missing_root(root, splits, images_dir, masks_dir, split_subdirs))
    if on_error not in ON_ERROR:
        raise DatasetError(f"on_error {on_error!r} is not one of {ON_ERROR}")
    table = _class_table(root, class_table, class_names, mask_format, ignore_label)
    decoder = MaskDecoder(
        mask_format, len(table.names), ignore_label, table.colours, table.ignore_colour
    )
    layout = dict(
        images_dir=images_dir, masks_dir=masks_dir, split_dir=split_dir, instances_dir=instances_dir
    )
    listed = {
        split: _list_split(root, split if split_subdirs else "", split, **layout)
        for split in splits
    }
    if holdout:
        _move_holdout(listed, holdout, holdout_from, holdout_split)

    checked, train_masks = {}, []
    for split, entries in listed.items():
        good, masks = _check_split(root, split, entries, decoder, on_error)
        checked[split] = good
        if split == splits[0]:
            train_masks = masks

    frequencies, presence = class_statistics(train_masks, len(table.names), ignore_label)
    # One range for every split, so that all images are scaled alike (None: all 8-bit).
    intensity_range = intensity_range_of(e.image for good in checked.values() for e in good)
    info = SegmentationInfo(
        class_names=table.names,
        ignore_label=ignore_label,
        palette=table.colours or default_palette(len(table.names)),
        class_frequencies=frequencies,
        presence_frequencies=presence,
        intensity_range=intensity_range,
    )
    weight_map = None
    if instances_dir:
        weight_map = {
            "class_weights": tuple(float(w) for w in info.median_frequency_weights()),
            "w0": weight_map_w0,
            "sigma": weight_map_sigma,
            "ignore_label": ignore_label,
        }
    sources = {
        split: FolderSource(good, decoder, weight_map, intensity_range)
        for split, good in checked.items()
    }
    return sources, info


def _missing_root(root, splits, images_dir, masks_dir, split_subdirs) -> str:
    """Where a folder dataset was looked for, what it must hold, how to point elsewhere."""
    per_split = f"/{{{','.join(splits)}}}" if split_subdirs else ""
    return (
        f"no dataset at {os.path.abspath(root)} (data.options.root): the directory does not"
        f" exist. A folder dataset holds {images_dir}{per_split}/<id>.<png|jpg|...> and"
        f" {masks_dir}{per_split}/<id>.png. Give its location with"
        " --config.data.options.root=/path/to/dataset (configs reading ../shared/data"
        " also follow $JAXSEG_SHARED_DATA, the directory that holds the datasets)"
    )


def _list_split(root, subdir, split, images_dir, masks_dir, split_dir, instances_dir):
    """The split's examples, or for a broken pair the message naming the problem."""
    image_dir = os.path.join(root, images_dir, subdir)
    mask_dir = os.path.join(root, masks_dir, subdir)
    instance_dir = os.path.join(root, instances_dir, subdir) if instances_dir else None
    images = _list_files(image_dir, IMAGE_EXTENSIONS)
    masks = _list_files(mask_dir, (".png",))
    _warn_masks_without_images(masks, images, image_dir, split)
    instances = _list_files(instance_dir, (".png",)) if instance_dir else {}
    ids = sorted(images)
    if split_dir:
        list_path = os.path.join(root, split_dir, f"{split}.txt")
        ids = _read_split_ids(list_path)
        unknown = [i for i in ids if i not in images]
        if unknown:
            raise DatasetError(f"{list_path}: ids without an image in {image_dir}: {unknown[:5]}")
    if not ids:
        raise DatasetError(
            f"{image_dir}: no images found for split {split!r}"
            f" (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    entries = []
    for image_id in ids:
        if image_id not in masks:
            entries.append(_no_mask(images[image_id], mask_dir, image_id))
        elif instance_dir and image_id not in instances:
            entries.append(
                f"{images[image_id]}: no instance map {os.path.join(instance_dir, image_id)}.png"
            )
        else:
            entries.append(
                Example(image_id, images[image_id], masks[image_id], instances.get(image_id))
            )
    return entries


def _warn_masks_without_images(masks: dict, images: dict, image_dir: str, split: str) -> None:
    """Logs the masks that have no image (a renamed or deleted image): they are not used."""
    orphans = [path for mask_id, path in masks.items() if mask_id not in images]
    if orphans:
        shown = "\n  ".join(orphans[:20]) + ("\n  ..." if len(orphans) > 20 else "")
        logging.warning(
            "%d mask(s) of split %r have no image in %s and are not used:\n  %s",
            len(orphans),
            split,
            image_dir,
            shown,
        )


def _no_mask(image: str, mask_dir: str, image_id: str) -> str:
    """Why `image` has no mask, naming a mask file of another format if there is one."""
    message = f"{image}: no mask {os.path.join(mask_dir, image_id)}.png"
    others = sorted(glob.glob(os.path.join(glob.escape(mask_dir), glob.escape(image_id) + ".*")))
    if others:
        found = others[0]
        lossy = os.path.splitext(found)[1].lower() in (".jpg", ".jpeg")
        why = (
            "JPEG is lossy: it changes label values along every region border, so such masks"
            " are refused; save them as PNG (from the source labels, not from the JPEG)"
            if lossy
            else "masks are read as PNG only; convert it to PNG"
        )
        message += f" (found {found}: {why})"
    return message


def _move_holdout(listed, holdout, holdout_from, holdout_split):
    if holdout_from not in listed:
        raise DatasetError(f"holdout_from={holdout_from!r} is not one of the splits {list(listed)}")
    keep = set(holdout)
    ids = {e.id for e in listed[holdout_from] if isinstance(e, Example)}
    unknown = sorted(keep - ids)
    if unknown:
        raise DatasetError(f"holdout ids {unknown[:5]} are not in split {holdout_from!r}")

    def held(entry):
        return isinstance(entry, Example) and entry.id in keep

    listed[holdout_split] = [e for e in listed[holdout_from] if held(e)]
    listed[holdout_from] = [e for e in listed[holdout_from] if not held(e)]


def _check_split(root, split, entries, decoder, on_error):
    """Reads every pair; returns (good examples, their masks). Problems raise or are skipped."""

    def check(entry):
        if isinstance(entry, str):
            return DatasetError(entry)
        try:
            return _check_pair(entry, decoder)
        except DatasetError as e:
            return e

    good, masks, skipped = [], [], []
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # PIL decodes without the GIL
        outcomes = list(pool.map(check, entries))
    for entry, outcome in zip(entries, outcomes):
        if isinstance(outcome, DatasetError):
            if on_error == "raise":
                raise outcome
            skipped.append(str(outcome))
        else:
            good.append(dataclasses.replace(entry, size=outcome.shape[:2]))
            masks.append(outcome)
    if skipped:
        logging.warning(
            "%s: skipped %d of %d examples in split %r:\n  %s",
            root,
            len(skipped),
            len(entries),
            split,
            "\n  ".join(skipped),
        )
    if not good:
        raise DatasetError(f"{root}: no usable examples in split {split!r}")
    return good, masks


def _class_table(root, class_table, class_names, mask_format, ignore_label) -> ClassTable:
    if class_table:
        table = read_class_table(os.path.join(root, class_table), ignore_label)
    elif class_names:
        table = ClassTable(tuple(class_names))
    elif mask_format == "binary":
        table = ClassTable(("background", "foreground"))
    else:
        raise DatasetError("give class_names or a class_table for an index or colour mask dataset")
    if mask_format == "colour" and table.colours is None:
        raise DatasetError("mask_format='colour' needs a class_table with r,g,b columns")
    if mask_format == "binary" and len(table.names) != 2:
        raise DatasetError(f"a binary dataset has 2 classes; got names {table.names}")
    return table


def default_palette(num_classes: int) -> tuple[tuple[int, int, int], ...]:
    """Distinct colours for visualising masks (a fixed pseudo-random draw, black first)."""
    rng = np.random.default_rng(0)
    colours = [(0, 0, 0)] + [
        tuple(int(c) for c in rng.integers(0, 256, 3)) for _ in range(num_classes - 1)
    ]
    return tuple(colours)
