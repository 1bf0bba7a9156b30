"""Every config in configs/ resolves, builds its model and trains one step on tiny shapes."""

import os

import pytest
from helpers import REPO

from jaxseg.config import load_config_file, recipes, validate_config
from jaxseg.train.loop import train_and_evaluate

RECIPES = recipes()
CASES = [
    (REPO / "configs" / spec.partition(":")[0], spec.partition(":")[2] or None) for spec in RECIPES
]


def test_every_config_file_documents_its_command():
    documented = {spec.partition(":")[0] for spec in RECIPES}
    assert documented == {
        p.name for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py"
    }


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
        "fcn8s_resnet18",
        "camvid_fcn8s_resnet18",
        "fcn_vgg16_staged:32s",
        "fcn_vgg16_staged:16s",
        "fcn_vgg16_staged:8s",
        "hypercolumn_vgg16",
        "camvid_unet",
        "isbi_unet",
        "dsb2018_unet",
        "deeplabv3_resnet18",
        "deeplabv3plus_resnet18",
        "camvid_deeplabv3plus_resnet18",
        "segformer_b0",
        "camvid_segformer_b0",
    } <= names


@pytest.mark.parametrize(
    "path, argument", CASES, ids=[f"{p.stem}:{a}" if a else p.stem for p, a in CASES]
)
def test_config_trains_one_step(path, argument, data_dir, tmp_path):
    config = load_config_file(f"{path}:{argument}" if argument else str(path))
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
    # A later stage starts from the previous stage's run (tests/test_finetune.py tests that).
    config.init.from_run = ""
    results = train_and_evaluate(config, str(tmp_path))
    for split in results:
        assert 0 <= results[split]["pixel_acc"] <= 1


def test_model_configs_hold_every_option_of_their_model():
    from jaxseg.config import model_config
    from jaxseg.models import model_names, model_options

    for name in model_names():
        config = model_config(name)
        assert set(config) == {"name", *model_options(name)}, name
    fcn = model_config("fcn8s", encoder="resnet18")
    assert dict(fcn.encoder_options) == {"output_stride": 32, "dilate_first_block": False}
    with pytest.raises(ValueError, match=r"model 'unet' has no option\(s\) \['widht'\]"):
        model_config("unet", widht=3)
