"""The config schema: every key a training config may have, with its default.

Defaults live where the code that uses them is declared, and are read from
there: `config.model` is the chosen model's constructor options
(`model_config`), `config.data.options` the dataset loader's arguments,
`config.data.augment` the fields of `AugmentConfig`, the loader settings
those of `LoaderConfig`. So every key a run uses is in its config, can be
overridden on the command line (`--config.model.dtype=...`), and is recorded
in every checkpoint. Keys absent from the schema are errors
(`validate_config`), as are unknown model or loader options.

Groups: `model` (the network), `data` (dataset, batches, augmentation),
`init` (what a fresh run starts from), `optim` (how it is optimised), `loss`,
`train` (the loop, checkpoints, devices). `seed` seeds initialisation, data
order and dropout.
"""

import importlib.util
import inspect
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence

import ml_collections
from ml_collections import config_dict

from jaxseg.checks import check_values
from jaxseg.errors import ConfigError
from jaxseg.registry import option_parameters

# Sub-dicts whose keys are checked by what consumes them (the model's and the
# loader's constructors), not by the schema.
OPEN_KEYS = ("model", "data.options")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_value(parameter: inspect.Parameter):
    """A constructor default as a config value that the command line can override."""
    default = parameter.default
    if default is inspect.Parameter.empty or default is None:
        return config_dict.placeholder(_placeholder_type(parameter.annotation))
    if isinstance(default, list | tuple):
        return tuple(default)
    if isinstance(default, Mapping):
        return ml_collections.ConfigDict(dict(default))
    return default


def _placeholder_type(annotation):
    """int for `int | None`, tuple for `Sequence[str] | None`, ... (str when unknown)."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else ()
    for candidate in candidates or (annotation,):
        origin = typing.get_origin(candidate) or candidate
        if candidate is type(None):
            continue
        if origin in (int, float, str, bool):
            return origin
        if isinstance(origin, type) and issubclass(origin, Sequence):
            return tuple
    return str


def constructor_defaults(constructor, exclude=()) -> dict:
    """{option: config value} of a constructor's options (`registry.option_parameters`)."""
    return {
        name: _config_value(p)
        for name, p in option_parameters(constructor).items()
        if name not in exclude
    }


def model_config(name: str, **options) -> ml_collections.ConfigDict:
    """`config.model` for model `name`: all its constructor options, defaults overridden by
    `options`. `encoder_options` holds the chosen encoder's options too (except for the
    "unet" encoder, which the U-Net's own options shape). num_classes None = the dataset's."""
    from jaxseg.models import MODELS
    from jaxseg.models.encoders import ENCODERS

    fields = constructor_defaults(MODELS.get(name))
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option(s) {unknown}; its options are {sorted(fields)}"
        )
    if "encoder_options" in fields:
        encoder = options.get("encoder", fields.get("encoder"))
        encoder_fields = {} if encoder == "unet" else constructor_defaults(ENCODERS.get(encoder))
        given = dict(options.pop("encoder_options", None) or {})
        bad = sorted(set(given) - set(encoder_fields)) if encoder != "unet" else sorted(given)
        if bad:
            raise ConfigError(
                f"encoder {encoder!r} has no option(s) {bad}; its options are"
                f" {sorted(encoder_fields)}"
            )
        fields["encoder_options"] = ml_collections.ConfigDict(encoder_fields | given)
    config = ml_collections.ConfigDict({"name": name, **fields})
    for key, value in options.items():
        config[key] = tuple(value) if isinstance(value, list) else value
    return config


def data_config(name: str, **options) -> ml_collections.ConfigDict:
    """`config.data.options` for dataset loader `name`: its arguments with their defaults."""
    from jaxseg.data import DATASETS

    fields = constructor_defaults(DATASETS.get(name))
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(
            f"dataset {name!r} has no option(s) {unknown}; its options are {sorted(fields)}"
        )
    config = ml_collections.ConfigDict(fields)
    for key, value in options.items():
        config[key] = tuple(value) if isinstance(value, list) else value
    return config


def base_config(model: str = "unet", dataset: str = "shapes") -> ml_collections.ConfigDict:
    """Every key with its default, for `model` on `dataset`."""
    from jaxseg.data.pipeline import LoaderConfig
    from jaxseg.data.transforms import AugmentConfig

    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = model_config(model)

    config.data = ml_collections.ConfigDict()
    config.data.name = dataset
    config.data.options = data_config(dataset)
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.test_split = ""  # evaluated once at the end when set
    config.data.batch_size = 16  # global, over all devices and hosts
    config.data.eval_batch_size = 16
    config.data.eval_pad_multiple = 1  # pad eval images to a multiple (and the model's own)
    config.data.eval_examples = 0  # evaluate on the first n examples of a split; 0 = all
    config.data.eval_pad_to = ()  # (H, W): pad eval images of different sizes to one size
    config.data.allow_extra_classes = False  # allow model.num_classes > the dataset's classes
    config.data.update(
        constructor_defaults(LoaderConfig, exclude=("global_batch_size",))
    )  # num_threads, num_workers, prefetch
    config.data.augment = ml_collections.ConfigDict(
        constructor_defaults(AugmentConfig, exclude=("ignore_label",))
    )

    # What a fresh run starts from (a resumed run: its checkpoint, whatever these say).
    config.init = ml_collections.ConfigDict()
    config.init.encoder_weights = ""  # torchvision-layout weights file for the encoder
    config.init.from_run = ""  # a run directory: copy every variable whose path and shape match

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"  # adamw | sgd
    config.optim.learning_rate = 1e-3
    config.optim.schedule = "cosine"  # cosine | constant | poly
    config.optim.warmup_steps = 0
    config.optim.momentum = 0.9  # sgd only
    config.optim.weight_decay = 0.0
    config.optim.grad_clip_norm = 0.0  # 0 disables
    config.optim.freeze = ""  # "encoder", or a pattern of parameter paths held fixed
    config.optim.encoder_lr_mult = 1.0  # the encoder's learning rate = this x the rest's

    config.loss = ml_collections.ConfigDict()
    config.loss.class_weights = "none"  # none | median_frequency
    config.loss.use_pixel_weights = False  # use the dataset's per-pixel "weight" maps
    config.loss.dice_weight = 0.0  # adds dice_weight * soft Dice loss

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 100
    config.train.log_every = 10
    config.train.eval_every = 0  # 0: only at the end
    config.train.checkpoint_every = 0  # 0: only at the end
    config.train.keep_checkpoints = 3
    config.train.num_devices = 0  # 0: all devices; n: the first n (single process only)
    config.train.parallelism = "mesh"  # mesh (jit + sharding) | pmap (jaxseg/train/parallel.py)
    config.train.grid_examples = 6  # validation examples drawn in images/<split>-<step>.png
    config.train.skip_nonfinite_steps = False  # keep the state of a non-finite step, count it
    return config


def validate_config(config: ml_collections.ConfigDict, schema=None, prefix="") -> None:
    """Raises ConfigError naming any key of `config` absent from the schema, or a value that
    is not allowed (jaxseg/checks.py)."""
    schema = base_config() if schema is None else schema
    for key, value in config.items():
        path = f"{prefix}{key}"
        if path in OPEN_KEYS:
            continue
        if key not in schema:
            raise ConfigError(
                f"unknown config key {path!r}; allowed keys here: {sorted(schema.keys())}"
            )
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(
                    f"config key {path!r} must be a dict of {sorted(schema[key].keys())}"
                )
            validate_config(value, schema[key], prefix=f"{path}.")
    if not prefix:
        check_values(config)


def use_shapes_data(config: ml_collections.ConfigDict, **options) -> None:
    """Sets `config.data` to the built-in shapes dataset (loader `options` over its defaults)
    with flip + scale/crop augmentation at the dataset's image size."""
    config.data.name = "shapes"
    config.data.options = data_config("shapes", **options)
    size = config.data.options.image_size
    config.data.eval_batch_size = 50
    config.data.augment.flip = True
    config.data.augment.scale_range = (0.8, 1.25)
    config.data.augment.crop_size = (size, size)


def shared_data(name: str = "") -> str:
    """The path of a real dataset in ../shared/data beside the repository
    ($JAXSEG_SHARED_DATA overrides the directory)."""
    root = os.environ.get("JAXSEG_SHARED_DATA") or os.path.join(REPO, "..", "shared", "data")
    return os.path.normpath(os.path.join(root, name))


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """`get_config([argument])` of a config file given as "path.py" or "path.py:argument"."""
    path, _, argument = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*([argument] if argument else []))


def recipes(configs_dir: str = os.path.join(REPO, "configs")) -> list[str]:
    """Every "file.py[:argument]" whose command (`--config configs/file.py[:argument]`) a
    config file's docstring documents, in file order."""
    found = []
    for name in sorted(os.listdir(configs_dir)):
        if not name.endswith(".py"):
            continue
        with open(os.path.join(configs_dir, name)) as f:
            docstring = f.read().split('"""')[1]
        for argument in re.findall(rf"--config configs/{re.escape(name)}(?::(\S+))?", docstring):
            spec = f"{name}:{argument}" if argument else name
            if spec not in found:
                found.append(spec)
    return found


def config_from_dict(fields: dict) -> ml_collections.ConfigDict:
    """A config read back from JSON (a checkpoint's record): lists become tuples again, and
    keys added to jaxseg since it was saved take their defaults."""

    def convert(value):
        if isinstance(value, dict):
            return ml_collections.ConfigDict({k: convert(v) for k, v in value.items()})
        if isinstance(value, list):
            return tuple(convert(v) for v in value)
        return value

    def merge(target, saved, prefix=""):
        for key, value in saved.items():
            path = f"{prefix}{key}"
            if (
                path not in OPEN_KEYS
                and key in target
                and isinstance(target[key], ml_collections.ConfigDict)
                and isinstance(value, dict)
            ):
                merge(target[key], value, f"{path}.")
            else:
                target[key] = convert(value)

    config = base_config()
    with config.unlocked():
        merge(config, fields)
    return config
