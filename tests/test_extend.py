"""Extending jaxseg without editing it: a user package (tests/fixtures/user_extension) adds a
model, an encoder, a loss, a dataset and an evaluator; configs from the command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, tiny_config
from PIL import Image

import jaxseg
from jaxseg.config import loss_options_config
from jaxseg.errors import ConfigError
from jaxseg.overrides import load_config, split_config_args

EXTENSION = REPO / "tests" / "fixtures" / "user_extension"
USER_CONFIG = EXTENSION / "user_config.py"
DEFAULT = str(REPO / "configs" / "default.py")


def _tool(script, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(EXTENSION), XLA_FLAGS="")
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_user_package_trains_evaluates_and_predicts_through_the_tools(tmp_path):
    """The package registers all five; train.py, evaluate.py and predict.py run from a
    directory outside the repository with nothing of jaxseg edited."""
    workdir = tmp_path / "run"
    trained = _tool(
        "train.py", "--config", str(USER_CONFIG), "--workdir", str(workdir), cwd=tmp_path
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "Model tiny_fpn" in trained.stdout and "IoU stripe" in trained.stdout
    with open(workdir / "config.json") as f:
        saved = json.load(f)
    assert saved["loss"]["terms"] == "cross_entropy + 0.5 * squared_error"
    assert saved["loss"]["options"]["squared_error"] == {"scale": 1.0}
    assert saved["model"]["encoder_options"] == {"width": 8}

    evaluated = _tool("evaluate.py", "--workdir", str(workdir), cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "mean_confidence: mean_confidence 0." in evaluated.stdout
    with open(workdir / "eval" / "validation-2.json") as f:
        assert 0 < json.load(f)["mean_confidence"]["mean_confidence"] <= 1

    image = np.random.default_rng(0).integers(0, 255, (36, 44, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "photo.png")
    predicted = _tool(
        "predict.py", "--workdir", str(workdir), "--input", str(tmp_path / "photo.png"),
        "--output", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    mask = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    assert mask.shape == (36, 44) and set(np.unique(mask)) <= {0, 1}


def test_a_run_names_the_module_it_cannot_import(tmp_path):
    config = tiny_config("")
    config.imports = ("no_such_user_package",)
    with pytest.raises(ConfigError, match="no module named 'no_such_user_package'"):
        jaxseg.build_run(config)


def test_registries_list_what_users_added_and_refuse_a_taken_name():
    sys.path.insert(0, str(EXTENSION))
    try:
        import my_extension  # noqa: F401
    finally:
        sys.path.remove(str(EXTENSION))
    from jaxseg.data import dataset_names
    from jaxseg.models.encoders import ENCODERS

    assert "tiny_fpn" in jaxseg.model_names()
    assert "tiny_cnn" in ENCODERS.names()
    assert "squared_error" in jaxseg.loss_names()
    assert "stripes" in dataset_names()
    assert "mean_confidence" in jaxseg.evaluator_names()
    with pytest.raises(ConfigError, match="model 'unet' is already registered"):
        jaxseg.register_model("unet")(type("Other", (), {}))


def test_both_config_forms_read_the_named_file():
    """`--config FILE` and `--config=FILE` are the same: overrides are checked against FILE."""
    root = "/elsewhere/isbi"
    for form in (["--config", "configs/isbi_unet.py"], ["--config=configs/isbi_unet.py"]):
        spec, overrides, rest = split_config_args(
            ["train.py", *form, "--workdir", "w", f"--config.data.options.root={root}"]
        )
        assert rest == ["train.py", "--workdir", "w"]
        config = load_config(str(REPO / spec), overrides)
        assert config.data.options.root == root
    spec, overrides, _ = split_config_args(
        ["train.py", "--config", "configs/fcn_vgg16.py:32s", "--config.model.zero_init_scores",
         "false"]
    )  # fmt: skip
    assert load_config(str(REPO / spec), overrides).model.zero_init_scores is False


def test_data_options_follow_the_dataset_chosen_on_the_command_line(tmp_path):
    config = load_config(
        DEFAULT,
        [("data.name", "folder"), ("data.options.root", str(tmp_path)),
         ("data.options.masks_dir", "labels")],
    )  # fmt: skip
    assert config.data.name == "folder"
    assert config.data.options.root == str(tmp_path)
    assert config.data.options.masks_dir == "labels"
    assert "image_size" not in config.data.options  # the shapes options are gone
    tfds = load_config(DEFAULT, [("data.name", "tfds"), ("data.options.tfds_name", "my_dataset")])
    assert tfds.data.options.tfds_name == "my_dataset"


def test_a_folder_trains_from_the_command_line_alone(tmp_path):
    """README: "train on my own folder of images and masks" is one command."""
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / "data" / "images" / split).mkdir(parents=True)
        (tmp_path / "data" / "masks" / split).mkdir(parents=True)
        for index in range(4):
            mask = (rng.random((32, 32)) > 0.5).astype(np.uint8)
            image = (mask[..., None] * 200 + rng.integers(0, 50, (32, 32, 3))).astype(np.uint8)
            Image.fromarray(image).save(tmp_path / "data" / "images" / split / f"{index}.png")
            Image.fromarray(mask).save(tmp_path / "data" / "masks" / split / f"{index}.png")
    done = _tool(
        "train.py", "--workdir", str(tmp_path / "run"),
        "--config.data.name=folder", f"--config.data.options.root={tmp_path / 'data'}",
        "--config.data.options.splits=train,val", "--config.data.eval_split=val",
        "--config.data.options.class_names=background,object",
        "--config.data.augment.crop_size=32,32", "--config.data.batch_size=4",
        "--config.data.eval_batch_size=4", "--config.train.num_steps=2",
        "--config.train.eval_every=0", "--config.train.checkpoint_every=0",
        "--config.train.grid_examples=2", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Final metrics at step 2" in done.stdout and "IoU object" in done.stdout


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([("train.num_steps", "abc")], "--config.train.num_steps='abc' is not an integer"),
        ([("train.num_steps", "2.5")], "--config.train.num_steps='2.5' is not an integer"),
        ([("data.augment.flip", "maybe")], "is not a boolean: use true or false"),
        ([("optim.learning_rate", "fast")], "--config.optim.learning_rate='fast' is not a number"),
        ([("train.num_step", "5")], "train has no key 'num_step'; allowed keys there: ["),
        ([("model", "unet")], "--config.model is a group of keys"),
        ([("loss.terms", "cross_entropy + dyce")], "unknown loss 'dyce'; available: ["),
        ([("model.name", "segnet")], "unknown model 'segnet'; available: ["),
        ([("data.name", "folder"), ("data.options.image_size", "3")], "has no key 'image_size'"),
    ],
)
def test_bad_overrides_are_config_errors_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=None) as error:
        load_config(DEFAULT, overrides)
    assert message in str(error.value)


def test_loss_terms_and_their_options_from_the_command_line():
    config = load_config(
        DEFAULT, [("loss.terms", "cross_entropy + 0.25 * focal"), ("loss.options.focal.gamma", "1")]
    )
    assert config.loss.options.focal.gamma == 1.0
    assert config.loss.options.cross_entropy.to_dict() == {}
    from jaxseg.config import parse_loss_terms

    assert parse_loss_terms(config.loss.terms) == (("cross_entropy", 1.0), ("focal", 0.25))


def test_changing_the_model_or_encoder_rebuilds_its_options():
    config = load_config(DEFAULT, [("model.name", "fcn8s"), ("model.encoder", "resnet18")])
    assert config.model.name == "fcn8s" and "base_features" not in config.model
    assert config.model.encoder_options.to_dict() == {
        "output_stride": 32,
        "dilate_first_block": False,
    }
    unet = load_config(DEFAULT, [("model.encoder", "resnet34")])
    assert unet.model.base_features == 16  # the rest of the model's options are kept
    assert unet.model.encoder_options.to_dict() == {
        "output_stride": 32,
        "dilate_first_block": False,
    }


def test_config_file_arguments_are_checked():
    with pytest.raises(ConfigError, match="takes no argument"):
        load_config(str(REPO / "configs" / "fcn8s_resnet18.py:bogus"))
    with pytest.raises(ConfigError, match="FCN variant 'bogus' is not one of"):
        load_config(str(REPO / "configs" / "fcn_vgg16.py:bogus"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.train.num_steps=abc"], "is not an integer"),
        (["--config.train.num_step=5"], "train has no key 'num_step'"),
        (["--config", "configs/fcn8s_resnet18.py:bogus"], "takes no argument"),
    ],
)
def test_train_cli_prints_config_errors_without_a_traceback(tmp_path, args, message):
    done = _tool("train.py", "--workdir", str(tmp_path / "run"), *args, cwd=REPO)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


def test_a_loss_term_that_cannot_run_with_the_settings_is_refused_when_the_run_is_built(data_dir):
    """Dice takes no pixel weights, focal no negative gamma: ConfigErrors at build_run, before
    anything is traced, naming the term and the settings."""
    config = tiny_config(data_dir)
    config.loss.terms = "cross_entropy + dice"
    config.loss.options = loss_options_config(config.loss.terms)
    config.loss.use_pixel_weights = True
    with pytest.raises(ConfigError, match="loss term 'dice' .* takes no pixel_weights"):
        jaxseg.build_run(config)
    config = tiny_config(data_dir)
    config.loss.terms = "focal"
    config.loss.options = loss_options_config("focal", focal={"gamma": -1.0})
    with pytest.raises(ConfigError, match="loss term 'focal' .*gamma must be >= 0"):
        jaxseg.build_run(config)
