"""Shared test helpers (no side effects: safe to import anywhere)."""

import pathlib

from jaxseg.config import load_config_file, shared_data

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = pathlib.Path(shared_data())
TINY_CONFIG = REPO / "tests" / "tiny_config.py"


def load_config(path, *args):
    """get_config(*args) of a config file."""
    return load_config_file(f"{path}:{args[0]}" if args else str(path))


def tiny_config(data_dir, **overrides):
    """tests/tiny_config.py with dotted-key overrides, e.g. {"train.num_steps": 30}."""
    config = load_config(TINY_CONFIG, data_dir)
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config
