"""Fine-tuning controls: frozen parameters, encoder learning-rate multiplier, poly schedule,
frozen batch norm, and what a fresh run starts from (pretrained encoder weights, another run)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from jaxseg.config import base_config, model_config
from jaxseg.errors import ConfigError
from jaxseg.models import get_model, pretrained
from jaxseg.run import load_run
from jaxseg.run.optim import make_optimizer, make_schedule
from jaxseg.train.loop import train_and_evaluate


def _optim(**overrides):
    optim = base_config().optim
    optim.update(overrides)
    return optim


@pytest.fixture(scope="module")
def fcn_params():
    model = get_model("fcn32s", num_classes=3, encoder="resnet18")
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, 32, 32, 3)))
    return variables["params"]


def _one_update(optim, params):
    tx = make_optimizer(optim, 100)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_a_frozen_encoder_does_not_move_the_rest_does(fcn_params):
    updates = _one_update(_optim(freeze="encoder", weight_decay=0.1), fcn_params)
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["encoder"]))
    assert float(jnp.abs(updates["score_fr"]["conv"]["kernel"]).max()) > 0
    # a path pattern freezes just what it matches
    updates = _one_update(_optim(freeze="^encoder/layer[12]_"), fcn_params)
    assert float(jnp.abs(updates["encoder"]["layer1_0"]["conv1_conv"]["kernel"]).max()) == 0
    assert float(jnp.abs(updates["encoder"]["layer3_0"]["conv1_conv"]["kernel"]).max()) > 0
    with pytest.raises(ConfigError, match="optim.freeze '\\[' is not a pattern"):
        make_optimizer(_optim(freeze="["), 10)


def test_encoder_learning_rate_multiplier(fcn_params):
    plain = _one_update(_optim(name="sgd", momentum=0.0, schedule="constant"), fcn_params)
    scaled = _one_update(
        _optim(name="sgd", momentum=0.0, schedule="constant", encoder_lr_mult=0.1), fcn_params
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(b, 0.1 * a, rtol=1e-6),
        plain["encoder"],
        scaled["encoder"],
    )
    jax.tree.map(np.testing.assert_array_equal, plain["score_fr"], scaled["score_fr"])


def test_poly_schedule_with_warmup():
    schedule = make_schedule(_optim(schedule="poly", learning_rate=0.1, warmup_steps=10), 110)
    assert float(schedule(0)) == 0 and float(schedule(5)) == pytest.approx(0.05)
    assert float(schedule(10)) == pytest.approx(0.1)
    assert float(schedule(60)) == pytest.approx(0.1 * 0.5**0.9, rel=1e-5)
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-9)
    plain = make_schedule(_optim(schedule="poly", learning_rate=1.0), 100)
    assert float(plain(25)) == pytest.approx(0.75**0.9, rel=1e-5)


def test_frozen_batch_norm_keeps_the_encoders_statistics():
    model = get_model("unet", num_classes=2, encoder="resnet18", encoder_frozen_bn=True)
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    jax.tree.map(
        np.testing.assert_array_equal,
        variables["batch_stats"]["encoder"],
        updates["batch_stats"]["encoder"],
    )
    moved = get_model("unet", num_classes=2, encoder="resnet18")
    _, updates = moved.apply(variables, x, train=True, mutable=["batch_stats"])
    stem = updates["batch_stats"]["encoder"]["stem_bn"]["mean"]
    assert not np.allclose(stem, variables["batch_stats"]["encoder"]["stem_bn"]["mean"])


def _resnet18_config(data_dir, **overrides):
    config = tiny_config(data_dir, **{"train.num_steps": 2, **overrides})
    config.model = model_config("fcn32s", encoder="resnet18")
    return config


def test_encoder_weights_initialise_a_fresh_run_and_are_recorded(data_dir, tmp_path):
    model = get_model("fcn32s", num_classes=5, encoder="resnet18")
    variables = jax.jit(model.init)(jax.random.key(7, impl="rbg"), jnp.zeros((1, 32, 32, 3)))
    encoder = {k: variables[k]["encoder"] for k in ("params", "batch_stats")}
    weights = str(tmp_path / "resnet18.safetensors")
    pretrained.save_safetensors(weights, pretrained.torchvision_state_dict("resnet18", encoder))

    config = _resnet18_config(
        data_dir, **{"init.encoder_weights": weights, "optim.freeze": "encoder"}
    )
    workdir = tmp_path / "run"
    train_and_evaluate(config, str(workdir))
    trained = load_run(str(workdir))
    # frozen during training: the encoder still holds exactly the file's weights
    jax.tree.map(
        np.testing.assert_array_equal, trained.variables["params"]["encoder"], encoder["params"]
    )
    report = json.loads((workdir / "init_report.json").read_text())
    assert report["encoder_weights"]["sha256"] == pretrained.file_sha256(weights)
    assert all(label.split("/")[1] == "encoder" for label in report["copied"])
    assert "batch_stats/encoder/stem_bn/mean" in report["copied"]
    assert "params/score_fr/conv/kernel" in report["initialised"]
    assert not any(label.split("/")[1] == "encoder" for label in report["initialised"])
    meta = json.loads((workdir / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["init"]["encoder_weights"]["sha256"] == report["encoder_weights"]["sha256"]


def test_bad_weights_are_refused_before_the_run_directory_exists(data_dir, tmp_path):
    bad = tmp_path / "resnet50.npz"
    np.savez(bad, **{"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"init.encoder_weights: {bad}: the tensors do not"):
        train_and_evaluate(
            _resnet18_config(data_dir, **{"init.encoder_weights": str(bad)}), str(workdir)
        )
    assert not workdir.exists()
    unet = tiny_config(data_dir, **{"init.encoder_weights": str(bad)})
    with pytest.raises(ConfigError, match="needs a model whose encoder is one of"):
        train_and_evaluate(unet, str(workdir))
    assert not workdir.exists()


def test_staged_training_copies_what_matches_and_reports_it(data_dir, tmp_path, capsys):
    """FCN-32s -> FCN-16s, as in the paper: the encoder and score_fr carry over, the new
    skip's score layer starts at zero and its upsamplers at bilinear."""
    first = tmp_path / "fcn32s"
    train_and_evaluate(_resnet18_config(data_dir), str(first))
    config = _resnet18_config(data_dir, **{"init.from_run": str(first)})
    config.model = model_config("fcn16s", encoder="resnet18")
    second = tmp_path / "fcn16s"
    train_and_evaluate(config, str(second))
    report = json.loads((second / "init_report.json").read_text())
    assert report["from_run"] == {"workdir": str(first), "step": 2}
    assert "params/encoder/stem_conv/kernel" in report["copied"]
    assert "params/score_fr/conv/kernel" in report["copied"]
    assert "params/score_stride16/conv/kernel" in report["initialised"]
    assert report["mismatched"] == []
    assert "Initialised from run" in capsys.readouterr().out
    # resuming ignores init.* : the checkpoint wins, and says so
    config.train.num_steps = 3
    train_and_evaluate(config, str(second))
    assert "the checkpoint wins" in capsys.readouterr().out


def test_pretraining_tool_writes_torchvision_weights_a_run_can_start_from(tmp_path):
    import subprocess
    import sys

    from helpers import REPO

    output = tmp_path / "resnet18_shapes.safetensors"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "tools" / "pretrain_shapes_classifier.py"),
            f"--output={output}",
            "--steps=3",
            "--batch_size=4",
            "--image_size=32",
            f"--data_dir={tmp_path / 'tfds'}",
            "--num_train=32",
            "--num_validation=8",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(output.with_suffix(".json").read_text())
    assert 0 <= record["validation_accuracy"] <= 1 and record["steps"] == 3
    loaded = pretrained.load_encoder_weights(str(output), "resnet18")
    assert loaded.sha256 == record["sha256"]
    assert loaded.variables["params"]["stem_conv"]["kernel"].shape == (7, 7, 3, 64)
