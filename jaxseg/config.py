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

import importlib
import importlib.util
import inspect
import math
import os
import re
import sys
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
OPEN_KEYS = ("model", "data.options", "loss.options")
# Keys that choose what an open group holds: when one changes (on the command line), the
# group is rebuilt with the new choice's defaults (jaxseg/overrides.py).
SELECTORS = {
    "model.name": "model",
    "model.encoder": "model",
    "data.name": "data.options",
    "loss.terms": "loss.options",
}
# The arguments every loss term takes from the task, not from `loss.options`.
_TASK_ARGUMENTS = ("logits", "labels", "ignore_label", "class_weights", "pixel_weights")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")  # shipped


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
    `options`. `encoder_options` holds the chosen encoder's options too, except those the
    model sets from its own fields (the U-Net's "unet" encoder: width, depth, padding).
    num_classes None = the dataset's."""
    from jaxseg.models import MODELS
    from jaxseg.models.encoders import ENCODERS

    fields = constructor_defaults(MODELS.get(name))
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no option(s) {unknown}; its options are {sorted(fields)}"
        )
    given = dict(options.pop("encoder_options", None) or {})
    if "encoder_options" in fields:
        encoder = options.get("encoder", fields.get("encoder"))
        probe = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
        model = MODELS.get(name)(**(probe | {"num_classes": 1}), parent=None)
        supplied = model.model_encoder_options()
        encoder_fields = {
            k: v
            for k, v in constructor_defaults(ENCODERS.get(encoder)).items()
            if k not in supplied
        }
        bad = sorted(set(given) - set(encoder_fields))
        if bad:
            raise ConfigError(
                f"encoder {encoder!r} has no option(s) {bad}"
                + (f" (the model sets {sorted(supplied)})" if supplied else "")
                + f"; its options are {sorted(encoder_fields)}"
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


def parse_loss_terms(terms: str) -> tuple[tuple[str, float], ...]:
    """(name, weight) pairs of `loss.terms`, a sum such as "cross_entropy + 0.5 * dice"."""
    from jaxseg.losses import LOSSES

    parsed = []
    for part in terms.split("+") if terms.strip() else []:
        weight, _, name = part.rpartition("*")
        name = name.strip()
        try:
            value = float(weight) if weight.strip() else 1.0
        except ValueError:
            value = -1.0
        if not name.isidentifier() or not (math.isfinite(value) and value >= 0):
            raise ConfigError(
                f"loss.terms={terms!r}: cannot read {part.strip()!r}; write loss names with"
                " optional weights >= 0, e.g. 'cross_entropy + 0.5 * dice'"
            )
        if name not in LOSSES:
            raise ConfigError(
                f"loss.terms={terms!r}: unknown loss {name!r}; available: {LOSSES.names()}"
            )
        parsed.append((name, value))
    if not parsed:
        raise ConfigError(f"loss.terms is empty; available losses: {LOSSES.names()}")
    if len({name for name, _ in parsed}) != len(parsed):
        raise ConfigError(f"loss.terms={terms!r} names a loss twice")
    return tuple(parsed)


def loss_options_config(terms: str, **given) -> ml_collections.ConfigDict:
    """`config.loss.options` for `loss.terms`: each term's options with their defaults,
    overridden by `given` ({term: {option: value}})."""
    from jaxseg.losses import LOSSES

    config = ml_collections.ConfigDict()
    names = [name for name, _ in parse_loss_terms(terms)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ConfigError(f"loss.options has {unknown}, which loss.terms={terms!r} does not use")
    for name in names:
        fields = {
            option: _config_value(p)
            for option, p in option_parameters(LOSSES.get(name)).items()
            if option not in _TASK_ARGUMENTS and p.kind is p.KEYWORD_ONLY
        }
        bad = sorted(set(given.get(name, {})) - set(fields))
        if bad:
            raise ConfigError(
                f"loss {name!r} has no option(s) {bad}; its options are {sorted(fields)}"
            )
        config[name] = ml_collections.ConfigDict(fields | dict(given.get(name, {})))
    return config


def base_config(model: str = "unet", dataset: str = "shapes") -> ml_collections.ConfigDict:
    """Every key with its default, for `model` on `dataset`."""
    from jaxseg.data.pipeline import LoaderConfig
    from jaxseg.data.transforms import AugmentConfig

    config = ml_collections.ConfigDict()
    config.seed = 0
    # Modules imported before the run is built: user code that registers models, encoders,
    # losses, datasets, evaluators, optimizers or schedules (names, or paths of .py files).
    config.imports = ()
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
    # At most one of these three.
    config.init.encoder_weights = ""  # the encoder's weights: torchvision ResNet/VGG16, or MiT
    # A reference library's whole model (torchvision DeepLabV3, smp DeepLabV3+, transformers
    # SegFormer); a classifier for another number of classes is left freshly initialised.
    config.init.model_weights = ""
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
    config.loss.terms = "cross_entropy"  # a weighted sum of losses: "cross_entropy + 0.5 * dice"
    config.loss.options = loss_options_config(config.loss.terms)  # {term: {option: value}}
    config.loss.class_weights = "none"  # none | median_frequency
    config.loss.use_pixel_weights = False  # use the dataset's per-pixel "weight" maps

    # Evaluators beyond the confusion-matrix metrics (jaxseg/evaluation/evaluators.py), run
    # by evaluate.py: e.g. ("isbi2012",) for the ISBI challenge's V_Rand and V_Info.
    config.evaluators = ()

    config.train = ml_collections.ConfigDict()
    config.train.num_steps = 100
    config.train.log_every = 10
    config.train.eval_every = 0  # 0: only at the end
    config.train.checkpoint_every = 0  # 0: only at the end
    config.train.keep_checkpoints = 3
    config.train.num_devices = 0  # 0: all devices; n: the first n (single process only)
    config.train.parallelism = "mesh"  # mesh (jit + sharding) | pmap (jaxseg/run/parallel.py)
    config.train.grid_examples = 6  # validation examples drawn in images/<split>-<step>.png
    config.train.skip_nonfinite_steps = False  # keep the state of a non-finite step, count it
    # auto | onednn | xla: on CPU, the steps' convolutions (both gradients too) run by oneDNN
    # (faster; jaxseg/models/onednn_conv.py) or by XLA; auto: oneDNN where its library is
    # installed and works (x86-64 Linux), else XLA
    config.train.cpu_convolutions = "auto"
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
        options = config.loss.options
        loss_options_config(config.loss.terms, **(options.to_dict() if options else {}))
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
    """`get_config([argument])` of a config file given as "path.py" or "path.py:argument";
    ConfigError for a missing file, a file without `get_config`, or an argument it does not
    take."""
    path, _, argument = spec.partition(":") if not os.path.exists(spec) else (spec, "", "")
    path = _shipped_config(path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"config file {path} does not exist; the shipped configs are"
            f" {sorted(n for n in os.listdir(CONFIGS_DIR) if n.endswith('.py') and n[0] != '_')}"
            " (--config configs/NAME.py)"
        )
    module_spec = importlib.util.spec_from_file_location(
        os.path.splitext(os.path.basename(path))[0], path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file {path} has no get_config() function")
    arguments = [argument] if argument else []
    try:
        inspect.signature(get_config).bind(*arguments)
    except TypeError:
        raise ConfigError(
            f"config file {path} takes no argument (get_config() has no parameter); got"
            f" {spec!r}: use {path} alone"
        ) from None
    try:
        config = get_config(*arguments)
    except ConfigError:
        raise
    except (ValueError, KeyError) as e:  # e.g. an unknown variant: the file's own message
        raise ConfigError(f"{spec}: {e}") from e
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"get_config() of {path} returned {type(config).__name__}, not a config")
    return config


def _shipped_config(path: str) -> str:
    """`path`, or for "configs/NAME.py" absent here the config shipped with jaxseg (so the
    documented commands work from any directory once jaxseg is installed)."""
    if os.path.isfile(path) or os.path.dirname(path) not in ("", "configs"):
        return path
    shipped = os.path.join(CONFIGS_DIR, os.path.basename(path))
    return shipped if os.path.isfile(shipped) else path


def import_modules(config) -> None:
    """Imports the modules named in `config.imports` (module names, or paths of .py files), so
    that what they register (models, losses, datasets, ...) can be named in the config."""
    for name in config.get("imports", ()):
        if name.endswith(".py"):
            path = os.path.abspath(name)
            module_name = "jaxseg_user_" + re.sub(r"\W", "_", path)
            if module_name in sys.modules:
                continue
            if not os.path.isfile(path):
                raise ConfigError(f"imports: {name} does not exist")
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[module_name]
                raise
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                raise  # a module the user's module imports: its own traceback
            raise ConfigError(
                f"imports: no module named {name!r} (is its package installed or on"
                " PYTHONPATH? a .py file is named by its path)"
            ) from e


def recipes(configs_dir: str = CONFIGS_DIR) -> list[str]:
    """Every "file.py[:argument]" whose command (`--config configs/file.py[:argument]`) a
    config file's docstring documents, in file order."""
    found = []
    for name in sorted(os.listdir(configs_dir)):
        if not name.endswith(".py") or name.startswith("_"):
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

    fields = _migrate(fields)
    config = base_config()
    with config.unlocked():
        merge(config, fields)
    return config


def _migrate(fields: dict) -> dict:
    """A saved config in today's keys: runs saved before losses were named kept a
    `loss.dice_weight` (Dice added to cross-entropy with that weight)."""
    loss = dict(fields.get("loss", {}))
    if "dice_weight" in loss:
        weight = loss.pop("dice_weight")
        loss["terms"] = f"cross_entropy + {weight!r} * dice" if weight else "cross_entropy"
        loss["options"] = loss_options_config(loss["terms"]).to_dict()
        fields = {**fields, "loss": loss}
    return fields
