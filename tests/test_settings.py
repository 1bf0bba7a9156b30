"""Settings that are wrong are errors before any work (or warnings recorded in config.json),
data that is not where a config expects says where it looked, and jaxseg's errors reach the
command line as a message and an exit status."""

import json
import os
import re
import sys

import numpy as np
import pytest
from helpers import REPO, load_config, tiny_config
from PIL import Image

from jaxseg import cli, preemption
from jaxseg.config import data_config, validate_config
from jaxseg.errors import ConfigError, DataError, DivergedError, Interrupted
from jaxseg.run import build_run
from jaxseg.train.loop import train_and_evaluate


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("optim.learning_rate", 0.0, "a finite number > 0"),
        ("optim.learning_rate", -1e-3, "a finite number > 0"),
        ("optim.learning_rate", float("nan"), "a finite number > 0"),
        ("optim.learning_rate", float("inf"), "a finite number > 0"),
        ("train.num_steps", 0, "an integer >= 1"),
        ("train.keep_checkpoints", 0, "an integer >= 1"),
        ("train.log_every", 0, "an integer >= 1"),
        ("data.eval_batch_size", 0, "an integer >= 1"),
        ("model.base_features", 0, "an integer >= 1"),
        ("data.augment.scale_range", (1.25, 0.8), "(low, high) with 0 < low <= high"),
        ("seed", -1, "an integer in 0..2**32-1"),
    ],
)
def test_a_value_that_is_not_allowed_is_named_with_what_is_allowed(key, value, allowed):
    config = tiny_config("", **{key: value})
    message = f"{key}={value!r} is not allowed: it must be {allowed}"
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        validate_config(config)


def test_a_wrong_setting_stops_the_run_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"train.num_steps=0 is not allowed"):
        train_and_evaluate(tiny_config("", **{"train.num_steps": 0}), str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run")


def test_num_classes_must_be_the_datasets_unless_more_are_asked_for(data_dir):
    with pytest.raises(
        ConfigError,
        match=r"model.num_classes=3, but the dataset 'shapes' has 5 classes \(background, disc,"
        r" .*labels 3..4 would have no output",
    ):
        build_run(tiny_config(data_dir, **{"model.num_classes": 3}))
    with pytest.raises(ConfigError, match=r"outputs 5..8 would never be a target.*allow_extra"):
        build_run(tiny_config(data_dir, **{"model.num_classes": 9}))
    more = {"model.num_classes": 9, "data.allow_extra_classes": True}
    assert build_run(tiny_config(data_dir, **more)).model.num_classes == 9


def test_a_crop_larger_than_every_image_is_a_warning_recorded_in_config_json(
    data_dir, tmp_path, caplog
):
    """The warning goes to the log and config.json; the run trains (final_metrics.json is
    strict JSON: no bare NaN, see also test_robustness.py)."""
    config = tiny_config(
        data_dir,
        **{"train.num_steps": 1, "data.augment.crop_size": (48, 48), "data.eval_examples": 1},
    )
    train_and_evaluate(config, str(tmp_path))
    warning = (
        "data.augment.crop_size=(48, 48) is larger than each sampled training image (at most"
        " 32x32, scaled by up to 1.25 by data.augment.scale_range): every crop is padded with"
        " the ignore label 255"
    )
    assert warning in caplog.text
    saved = json.loads((tmp_path / "config.json").read_text())
    assert [w.startswith(warning) for w in saved["warnings"]] == [True]
    text = (tmp_path / "final_metrics.json").read_text()
    final = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in {text}"))
    assert final["step"] == 1


def _write(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _folder_config(root, **overrides):
    config = tiny_config("")
    config.data.name = "folder"
    config.data.options = data_config(
        "folder", root=str(root), splits=("train",), class_names=("a", "b")
    )
    config.data.eval_split = "train"
    config.data.augment.crop_size = ()
    config.data.augment.scale_range = (1.0, 1.0)
    for key, value in overrides.items():
        config.data[key] = value
    return config


def test_images_of_several_sizes_without_a_crop_name_the_files_and_sizes(tmp_path):
    for name, size in (("a", (16, 16)), ("b", (16, 16)), ("c", (24, 32))):
        _write(tmp_path / "images" / "train" / f"{name}.png", np.zeros((*size, 3)))
        _write(tmp_path / "masks" / "train" / f"{name}.png", np.zeros(size))
    with pytest.raises(DataError) as error:
        build_run(_folder_config(tmp_path))
    message = str(error.value)
    assert "the images of split 'train' differ in size" in message
    assert f"16x16: 2 image(s), e.g. {tmp_path}/images/train/a.png" in message
    assert f"24x32: 1 image(s), e.g. {tmp_path}/images/train/c.png" in message
    assert "Set data.augment.crop_size=(H, W), e.g. (16, 16)" in message


def test_a_jpeg_mask_is_named_and_why_it_is_refused(tmp_path):
    _write(tmp_path / "images" / "train" / "train0.png", np.zeros((8, 8, 3)))
    _write(tmp_path / "masks" / "train" / "train0.jpg", np.zeros((8, 8)))
    with pytest.raises(DataError) as error:
        build_run(_folder_config(tmp_path))
    message = str(error.value)
    assert f"no mask {tmp_path}/masks/train/train0.png (found {tmp_path}/masks/train/" in message
    assert "train0.jpg: JPEG is lossy" in message and "save them as PNG" in message


def test_a_config_whose_data_is_absent_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXSEG_SHARED_DATA", str(tmp_path))
    config = load_config(REPO / "configs" / "camvid_unet.py")
    with pytest.raises(DataError) as error:
        build_run(config)
    message = str(error.value)
    assert f"no dataset at {tmp_path / 'camvid'} (data.options.root)" in message
    assert (
        "images/{train,val,test}/<id>" in message and "masks/{train,val,test}/<id>.png" in message
    )
    assert "--config.data.options.root=/path/to/dataset" in message
    assert "$JAXSEG_SHARED_DATA" in message


def _exit_of(main, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["tool"])
    with pytest.raises(SystemExit) as stopped:
        cli.run(main)
    return stopped.value.code, capsys.readouterr().err


def _raising(error):
    def main(argv):
        raise error

    return main


@pytest.mark.parametrize(
    "error, status, heading",
    [
        (ConfigError("train.num_steps=0 is not allowed"), 2, "jaxseg config error:"),
        (DivergedError("the training loss is not finite"), 2, "jaxseg training diverged:"),
        (Interrupted("SIGTERM at step 3: saved a checkpoint"), 4, "jaxseg interrupted:"),
    ],
)
def test_jaxseg_errors_print_a_heading_and_message_with_their_exit_status(
    monkeypatch, capsys, error, status, heading
):
    monkeypatch.delenv("JAXSEG_TRACEBACK", raising=False)
    code, err = _exit_of(_raising(error), monkeypatch, capsys)
    assert code == status and err == f"{heading}\n{error}\n"
    monkeypatch.setenv("JAXSEG_TRACEBACK", "1")
    code, err = _exit_of(_raising(error), monkeypatch, capsys)
    assert code == status and "Traceback (most recent call last)" in err and heading in err


@pytest.mark.parametrize(
    "phase, second, said",
    [
        ("importing", False, "stopped by Ctrl-C"),
        ("starting", False, "stopped by Ctrl-C before the first training step; there was"),
        ("starting", True, "stopped at once (Ctrl-C twice), without saving that step"),
        ("trained", False, "stopped by Ctrl-C after training (its last checkpoint is saved)"),
    ],
    ids=["other_tool", "start_up", "second", "final_evaluation"],
)
def test_ctrl_c_exits_130_saying_what_was_saved_without_a_traceback(
    monkeypatch, capsys, phase, second, said
):
    state = {"phase": phase, "pending": 0, "second": second}
    monkeypatch.setattr(preemption, "_early", state)
    monkeypatch.setattr(preemption, "arm_interrupts", lambda: None)  # keeps the phase
    code, err = _exit_of(_raising(KeyboardInterrupt()), monkeypatch, capsys)
    assert code == 130 and err.startswith(f"jaxseg: {said}") and len(err.splitlines()) == 1
