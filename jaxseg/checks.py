"""Settings that are wrong, found before any work: each is a ConfigError (or DataError) that
names the key, its value and what is allowed.

`check_values(config)` checks the values alone (config validation calls it);
`check_against_data(config, sources, info)` what needs the dataset: the
number of classes, and image sizes against the crop (`build_run` calls it).
`data_warnings` gives what is allowed but likely unintended (a crop larger than
every image); the training loop logs these and records them in config.json.
"""

import math
from collections.abc import Callable

from absl import logging

from jaxseg.errors import ConfigError, DataError

SAMPLED_EXAMPLES = 8  # images read for their size from a source that does not list its sizes


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _at_least(low: int) -> tuple[str, Callable]:
    return f"an integer >= {low}", lambda v: _integer(v) and v >= low


POSITIVE = _at_least(1)
NON_NEGATIVE = _at_least(0)
POSITIVE_NUMBER = ("a finite number > 0", lambda v: _number(v) and math.isfinite(v) and v > 0)
NON_NEGATIVE_NUMBER = (
    "a finite number >= 0",
    lambda v: _number(v) and math.isfinite(v) and v >= 0,
)
FRACTION = ("a number in [0, 1]", lambda v: _number(v) and 0 <= v <= 1)
CPU_CONVOLUTIONS = ("auto", "onednn", "xla")  # jaxseg/models/onednn_conv.py
CLASSES = ("None (the dataset's) or an integer >= 1", lambda v: v is None or POSITIVE[1](v))

# key: (what is allowed, test). Keys absent from a config (model options) are not checked.
RULES = {
    "seed": ("an integer in 0..2**32-1", lambda v: _integer(v) and 0 <= v < 2**32),
    "model.base_features": POSITIVE,
    "model.depth": POSITIVE,
    "model.num_classes": CLASSES,
    "data.batch_size": POSITIVE,
    "data.eval_batch_size": POSITIVE,
    "data.eval_pad_multiple": POSITIVE,
    "data.eval_examples": ("0 (all) or a positive integer", lambda v: _integer(v) and v >= 0),
    "data.num_threads": POSITIVE,
    "data.num_workers": NON_NEGATIVE,
    "data.prefetch": NON_NEGATIVE,
    "data.augment.crop_size": (
        "() (whole images) or (height, width), both >= 1",
        lambda v: tuple(v) == () or (len(v) == 2 and all(_integer(s) and s >= 1 for s in v)),
    ),
    "data.augment.scale_range": (
        "(low, high) with 0 < low <= high",
        lambda v: len(v) == 2 and all(_number(s) for s in v) and 0 < v[0] <= v[1] < math.inf,
    ),
    "data.augment.rotation_degrees": NON_NEGATIVE_NUMBER,
    "data.augment.elastic_sigma": NON_NEGATIVE_NUMBER,
    "data.augment.elastic_grid": _at_least(2),
    "data.augment.brightness": FRACTION,
    "data.augment.contrast": FRACTION,
    "data.augment.saturation": FRACTION,
    "data.augment.image_order": ("an integer in 0..5 (spline order)", lambda v: v in range(6)),
    "optim.learning_rate": POSITIVE_NUMBER,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.momentum": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "optim.weight_decay": NON_NEGATIVE_NUMBER,
    "optim.grad_clip_norm": ("0 (off) or a finite number > 0", NON_NEGATIVE_NUMBER[1]),
    "optim.encoder_lr_mult": NON_NEGATIVE_NUMBER,
    "loss.dice_weight": NON_NEGATIVE_NUMBER,
    "train.num_steps": POSITIVE,
    "train.log_every": POSITIVE,
    "train.eval_every": ("0 (only at the end) or a positive integer", NON_NEGATIVE[1]),
    "train.checkpoint_every": ("0 (only at the end) or a positive integer", NON_NEGATIVE[1]),
    "train.keep_checkpoints": POSITIVE,
    "train.num_devices": ("0 (all) or a positive integer", NON_NEGATIVE[1]),
    "train.grid_examples": NON_NEGATIVE,
    "train.cpu_convolutions": ('"auto", "onednn" or "xla"', lambda v: v in CPU_CONVOLUTIONS),
}


def _lookup(config, key: str):
    node = config
    for part in key.split("."):
        if not hasattr(node, "keys") or part not in node:
            return None, False
        node = node[part]
    return node, True


def check_values(config) -> None:
    """Raises ConfigError for the first value of `config` that `RULES` does not allow."""
    for key, (allowed, test) in RULES.items():
        value, present = _lookup(config, key)
        if not present:
            continue
        try:
            ok = test(value)
        except TypeError:  # e.g. a number where a pair is expected
            ok = False
        if not ok:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}")


def check_against_data(config, sources: dict, info) -> None:
    """Raises ConfigError/DataError for settings that do not fit the dataset."""
    _check_num_classes(config, info)
    if not tuple(config.data.augment.crop_size):
        split = config.data.train_split
        if split in sources:
            _check_one_size(split, image_sizes(sources[split]))


def _check_num_classes(config, info) -> None:
    wanted = config.model.get("num_classes")
    if wanted is None or wanted == info.num_classes:
        return
    names = ", ".join(info.class_names)
    dataset = f"dataset {config.data.name!r} has {info.num_classes} classes ({names})"
    if wanted < info.num_classes:
        raise ConfigError(
            f"model.num_classes={wanted}, but the {dataset}: labels {wanted}.."
            f"{info.num_classes - 1} would have no output and the loss would not be finite."
            " Leave model.num_classes unset (None: the dataset's), or set it to"
            f" {info.num_classes}"
        )
    if not config.data.allow_extra_classes:
        raise ConfigError(
            f"model.num_classes={wanted}, but the {dataset}: outputs"
            f" {info.num_classes}..{wanted - 1} would never be a target. Leave"
            " model.num_classes unset (None: the dataset's), or set"
            " data.allow_extra_classes=True if that is intended"
        )


def image_sizes(source) -> list[tuple[str, tuple[int, int]]]:
    """(name, (height, width)) of the images of a split: all of them when the source lists
    them (folder datasets), else the first SAMPLED_EXAMPLES, named by index."""
    if hasattr(source, "image_sizes"):
        return source.image_sizes()
    count = min(len(source), SAMPLED_EXAMPLES)
    return [(f"example {i}", tuple(source[i]["mask"].shape[:2])) for i in range(count)]


def _check_one_size(split: str, sizes) -> None:
    by_size = {}
    for name, size in sizes:
        by_size.setdefault(size, []).append(name)
    if len(by_size) <= 1:
        return
    listed = "; ".join(
        f"{h}x{w}: {len(names)} image(s), e.g. {', '.join(names[:2])}"
        for (h, w), names in sorted(by_size.items(), key=lambda item: -len(item[1]))[:4]
    )
    smallest = min(by_size, key=lambda size: size[0] * size[1])
    raise DataError(
        f"the images of split {split!r} differ in size ({listed}), and"
        " data.augment.crop_size=() trains on whole images, which a batch cannot stack. Set"
        f" data.augment.crop_size=(H, W), e.g. ({smallest[0]}, {smallest[1]}) (the smallest"
        " size, so that no crop needs padding)"
    )


def data_warnings(config, sources: dict, info) -> list[str]:
    """Settings that are allowed but likely unintended; each is logged and returned."""
    warnings = []
    crop = tuple(config.data.augment.crop_size)
    split = config.data.train_split
    if crop and split in sources:
        sizes = image_sizes(sources[split])
        largest_scale = max(config.data.augment.scale_range)
        tallest = max(size[0] for _, size in sizes)
        widest = max(size[1] for _, size in sizes)
        if crop[0] > tallest * largest_scale or crop[1] > widest * largest_scale:
            checked = "every" if hasattr(sources[split], "image_sizes") else "each sampled"
            warnings.append(
                f"data.augment.crop_size={crop} is larger than {checked} training image"
                f" (at most {tallest}x{widest}, scaled by up to {largest_scale:g} by"
                " data.augment.scale_range): every crop is padded with the ignore label"
                f" {info.ignore_label}, which trains on nothing there"
            )
    for warning in warnings:
        logging.warning("%s", warning)
    return warnings
