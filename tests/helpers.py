"""Shared test helpers (no side effects: safe to import anywhere)."""

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_CONFIG = REPO / "tests" / "tiny_config.py"


def load_config(path, *args):
    """get_config(*args) of a config file."""
    spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*args)


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
