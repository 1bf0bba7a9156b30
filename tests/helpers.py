"""Shared test helpers (no side effects: safe to import from subprocess workers)."""

import pathlib

from jaxseg.config import base_config

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_config(data_dir, **overrides):
    """The default config shrunk to seconds: 32x32 shapes, a depth-2 U-Net of width 8."""
    config = base_config()
    config.model.name = "unet"
    config.model.base_features = 8
    config.model.depth = 2
    config.data.name = "shapes"
    config.data.options.image_size = 32
    config.data.options.num_train = 64
    config.data.options.num_validation = 16
    config.data.options.num_test = 8
    config.data.options.data_dir = data_dir
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.augment.flip = True
    config.data.augment.scale_range = (0.8, 1.25)
    config.data.augment.crop_size = (32, 32)
    config.data.num_threads = 1
    config.optim.learning_rate = 3e-3
    config.train.num_steps = 4
    config.train.log_every = 1
    config.train.num_devices = 1
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config
