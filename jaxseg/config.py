"""The config schema: every key a training config may have, with its default.

Config files in `configs/` start from `base_config()` and override values;
`validate_config` rejects keys that are not in the schema (typos would
otherwise be silently ignored). Two sub-dicts are open-ended and checked by
what consumes them: `model` (the registered model's options, checked by
`jaxseg.models.get_model`) and `data.options` (the dataset loader's
arguments, checked by `jaxseg.data.load_dataset`).
"""

import ml_collections

OPEN_KEYS = ("model", "data.options")


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    # Model: `name` is a key of the model registry; every other key is passed
    # to the model constructor. num_classes defaults to the dataset's.
    config.model = ml_collections.ConfigDict({"name": "unet"})

    config.data = ml_collections.ConfigDict()
    config.data.name = "shapes"
    config.data.options = ml_collections.ConfigDict()  # loader arguments
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.test_split = ""  # evaluated once at the end when set
    config.data.batch_size = 16  # global, over all devices and hosts
    config.data.eval_batch_size = 16
    config.data.eval_pad_multiple = 1  # pad eval images to a multiple of this
    config.data.eval_examples = 0  # evaluate on the first n examples of a split; 0 = all
    config.data.eval_pad_to = ()  # (H, W): pad eval images of different sizes to one size
    config.data.num_threads = 2
    config.data.num_workers = 0
    config.data.prefetch = 4
    config.data.augment = ml_collections.ConfigDict(
        {
            "crop_size": (),  # (height, width); () keeps the image size
            "scale_range": (1.0, 1.0),
            "flip": False,
            "rotation_degrees": 0.0,
            "elastic_sigma": 0.0,
            "elastic_grid": 3,
            "brightness": 0.0,
            "contrast": 0.0,
            "saturation": 0.0,
            "image_order": 1,
        }
    )

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adamw"  # adamw | sgd
    config.optim.learning_rate = 1e-3
    config.optim.schedule = "cosine"  # cosine | constant
    config.optim.warmup_steps = 0
    config.optim.momentum = 0.9  # sgd only
    config.optim.weight_decay = 0.0
    config.optim.grad_clip_norm = 0.0  # 0 disables

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
    return config


def validate_config(config: ml_collections.ConfigDict, schema=None, prefix="") -> None:
    """Raises ValueError naming any key of `config` absent from the schema."""
    schema = base_config() if schema is None else schema
    for key, value in config.items():
        path = f"{prefix}{key}"
        if path in OPEN_KEYS:
            continue
        if key not in schema:
            raise ValueError(
                f"unknown config key {path!r}; allowed keys here: {sorted(schema.keys())}"
            )
        if isinstance(schema[key], ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ValueError(
                    f"config key {path!r} must be a dict of {sorted(schema[key].keys())}"
                )
            validate_config(value, schema[key], prefix=f"{path}.")


def use_shapes_data(config: ml_collections.ConfigDict, image_size: int = 64) -> None:
    """Sets `config.data` to the built-in shapes dataset with flip + scale/crop augmentation."""
    config.data.name = "shapes"
    config.data.options = ml_collections.ConfigDict(
        {
            "image_size": image_size,
            "num_train": 4000,
            "num_validation": 500,
            "num_test": 500,
            "seed": 0,
            "data_dir": "",  # "": the TFDS default (~/tensorflow_datasets)
        }
    )
    config.data.eval_batch_size = 50
    config.data.augment.flip = True
    config.data.augment.scale_range = (0.8, 1.25)
    config.data.augment.crop_size = (image_size, image_size)
