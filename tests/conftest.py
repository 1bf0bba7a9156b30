"""Test setup: 4 fake CPU devices (set before jax is imported) and small shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import pathlib  # noqa: E402

import pytest  # noqa: E402

from jaxseg.config import base_config  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the whole session: tiny datasets are built once."""
    return str(tmp_path_factory.mktemp("tfds"))


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
