"""Every config in configs/ resolves, builds its model and trains one step on tiny shapes."""

import os

import pytest
from helpers import REPO, load_config

from jaxseg.config import validate_config
from jaxseg.train.loop import train_and_evaluate

CONFIGS = sorted((REPO / "configs").glob("*.py"))


def test_there_are_configs_for_every_recipe():
    names = {p.stem for p in CONFIGS}
    assert {
        "default",
        "unet",
        "unet_original",
        "fcn32s_vgg16",
        "fcn16s_vgg16",
        "fcn8s_vgg16",
        "fcn8s_resnet50",
        "hypercolumn_vgg16",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_trains_one_step(path, data_dir, tmp_path):
    config = load_config(path)
    validate_config(config)
    assert "python train.py" in (path.read_text().split('"""')[1]), "docstring gives the command"
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
