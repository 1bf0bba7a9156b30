"""Every config in configs/ resolves, builds its model and trains one step on tiny shapes."""

import os
import re

import pytest
from helpers import REPO, load_config

from jaxseg.config import validate_config
from jaxseg.train.loop import train_and_evaluate

CONFIG_FILES = sorted((REPO / "configs").glob("*.py"))


def documented_configs():
    """(file, argument) of every `--config configs/<file>[:argument]` in the configs' docstrings."""
    cases = []
    for path in CONFIG_FILES:
        docstring = path.read_text().split('"""')[1]
        found = re.findall(rf"--config configs/{path.name}(?::(\S+))?", docstring)
        assert found, f"{path.name}: the docstring gives no command that runs it"
        cases += [(path, argument or None) for argument in dict.fromkeys(found)]
    return cases


CASES = documented_configs()


def test_there_are_configs_for_every_recipe():
    names = {f"{p.stem}:{a}" if a else p.stem for p, a in CASES}
    assert {
        "default",
        "unet",
        "unet_original",
        "fcn_vgg16:32s",
        "fcn_vgg16:16s",
        "fcn_vgg16:8s",
        "fcn8s_resnet50",
        "hypercolumn_vgg16",
        "camvid_unet",
        "isbi_unet",
        "dsb2018_unet",
    } <= names


@pytest.mark.parametrize(
    "path, argument", CASES, ids=[f"{p.stem}:{a}" if a else p.stem for p, a in CASES]
)
def test_config_trains_one_step(path, argument, data_dir, tmp_path):
    config = load_config(path, *([argument] if argument else []))
    validate_config(config)
    # Same architecture, tiny work: 32x32 crops, batch 2, one step, 2 eval examples.
    if config.data.name == "shapes":
        config.data.options.update(
            image_size=32, num_train=16, num_validation=4, num_test=4, data_dir=data_dir
        )
    elif not os.path.isdir(config.data.options.root):
        pytest.skip(f"{config.data.options.root} is absent (no ../shared/data beside this clone)")
    config.data.augment.crop_size = (32, 32)
    config.data.batch_size = 2
    config.data.eval_batch_size = 2
    config.data.eval_examples = 2
    config.train.update(num_steps=1, log_every=1, eval_every=0, checkpoint_every=0, num_devices=1)
    results = train_and_evaluate(config, str(tmp_path))
    for split in results:
        assert 0 <= results[split]["pixel_acc"] <= 1
