"""End-to-end: the training program on tiny configs (seconds each)."""

import json
import os
import shutil
import stat
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, tiny_config

from jaxseg.report.writer import read_metrics
from jaxseg.run.checkpoint import CheckpointMismatchError
from jaxseg.train.loop import train_and_evaluate

REQUIRED_KEYS = {"step", "split", "loss", "pixel_acc", "mean_acc", "miou", "fwiou", "iou_per_class"}


def _train_losses(workdir):
    return [
        r["loss"]
        for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if r["split"] == "train"
    ]


def test_loss_falls_and_records_are_complete(data_dir, tmp_path):
    config = tiny_config(data_dir, **{"train.num_steps": 30, "train.eval_every": 15})
    results = train_and_evaluate(config, str(tmp_path))
    losses = _train_losses(tmp_path)
    assert len(losses) == 30
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    records = read_metrics(os.path.join(tmp_path, "metrics.jsonl"))
    for record in records:
        assert REQUIRED_KEYS <= set(record), record
        assert len(record["iou_per_class"]) == 5
    assert [r["step"] for r in records if r["split"] == "validation"] == [15, 30]
    assert 0 <= results["validation"]["miou"] <= 1
    assert os.path.exists(tmp_path / "checkpoints" / "30")
    assert os.path.exists(tmp_path / "config.json")


def test_one_and_four_devices_give_the_same_loss_curve(data_dir, tmp_path):
    assert len(jax.devices()) == 4
    curves = {}
    for num_devices in (1, 4):
        config = tiny_config(data_dir, **{"train.num_steps": 6, "train.num_devices": num_devices})
        train_and_evaluate(config, str(tmp_path / f"d{num_devices}"))
        curves[num_devices] = _train_losses(tmp_path / f"d{num_devices}")
    # Step 1 is one forward pass on the same batch; later steps differ only by
    # float summation order (per-device partial sums), which Adam amplifies a little.
    np.testing.assert_allclose(curves[1][0], curves[4][0], rtol=1e-6)
    np.testing.assert_allclose(curves[1], curves[4], rtol=1e-3)
    assert curves[1][0] != curves[1][-1]


def _final_params(workdir, config):
    from jaxseg.run import load_run

    trained = load_run(workdir)
    return trained.step, trained.variables["params"]


def test_resume_continues_step_params_and_data(data_dir, tmp_path, capsys):
    overrides = {"optim.schedule": "constant", "train.checkpoint_every": 3}
    straight = tiny_config(data_dir, **overrides, **{"train.num_steps": 6})
    train_and_evaluate(straight, str(tmp_path / "straight"))

    train_and_evaluate(
        tiny_config(data_dir, **overrides, **{"train.num_steps": 3}), str(tmp_path / "resumed")
    )
    # As if the first run had gone on past its last checkpoint before it was stopped:
    lost = {"step": 4, "split": "train", "loss": 123.0}
    with open(tmp_path / "resumed" / "metrics.jsonl", "a") as f:
        f.write(json.dumps(lost) + '\n{"step": 5, "split": "tr')  # killed mid-write
    capsys.readouterr()
    train_and_evaluate(
        tiny_config(data_dir, **overrides, **{"train.num_steps": 6}), str(tmp_path / "resumed")
    )
    assert "Resuming from the checkpoint at step 3" in capsys.readouterr().out
    discarded = (tmp_path / "resumed" / "metrics.discarded.jsonl").read_text()
    assert discarded == json.dumps(lost) + '\n{"step": 5, "split": "tr\n'

    np.testing.assert_allclose(
        _train_losses(tmp_path / "resumed"), _train_losses(tmp_path / "straight"), rtol=1e-5
    )
    # The training time goes on from what the first run logged up to its checkpoint.
    logged = [
        r
        for r in read_metrics(str(tmp_path / "resumed" / "metrics.jsonl"))
        if r["split"] == "train"
    ]
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6] and min(
        r["seconds"] for r in logged
    ) > 0
    np.testing.assert_allclose(
        [r["train_seconds"] for r in logged], np.cumsum([r["seconds"] for r in logged]), rtol=1e-9
    )
    step_a, params_a = _final_params(tmp_path / "straight", straight)
    step_b, params_b = _final_params(tmp_path / "resumed", straight)
    assert step_a == step_b == 6
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params_a, params_b
    )


def test_changed_model_refuses_to_resume_and_keeps_checkpoints(data_dir, tmp_path):
    train_and_evaluate(tiny_config(data_dir, **{"train.num_steps": 2}), str(tmp_path))
    before = sorted(os.listdir(tmp_path / "checkpoints"))
    saved_config = (tmp_path / "config.json").read_text()
    changed = tiny_config(data_dir, **{"train.num_steps": 4, "model.base_features": 4})
    with pytest.raises(
        CheckpointMismatchError,
        match="(?s)does not match the model.*model.base_features: 8 -> 4.*Nothing was written",
    ):
        train_and_evaluate(changed, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == before
    assert (tmp_path / "config.json").read_text() == saved_config


def test_bad_inputs_get_clear_errors(data_dir, tmp_path):
    bad = tiny_config(data_dir)
    bad.train.num_stesp = 3
    with pytest.raises(
        ValueError, match=r"unknown config key 'train.num_stesp'; allowed keys here: \["
    ):
        train_and_evaluate(bad, str(tmp_path / "a"))
    with pytest.raises(ValueError, match=r"unknown model 'resnet9000'; available: \["):
        train_and_evaluate(
            tiny_config(data_dir, **{"model.name": "resnet9000"}), str(tmp_path / "b")
        )
    with pytest.raises(
        ValueError, match=r"data.batch_size=6 is not divisible by the 4 devices;.*\[4, 8\]"
    ):
        train_and_evaluate(
            tiny_config(data_dir, **{"data.batch_size": 6, "train.num_devices": 4}),
            str(tmp_path / "c"),
        )
    with pytest.raises(ValueError, match=r"unknown dataset 'shapez'; available: \["):
        train_and_evaluate(tiny_config(data_dir, **{"data.name": "shapez"}), str(tmp_path / "d"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        train_and_evaluate(tiny_config(data_dir), str(a_file))


def test_unwritable_workdir(data_dir, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ValueError, match="workdir .*/file/run is not writable: Not a directory"):
        train_and_evaluate(tiny_config(data_dir), str(a_file / "run"))
    if os.geteuid() != 0:  # root may write to read-only directories
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(ValueError, match="is not writable: Permission denied"):
            train_and_evaluate(tiny_config(data_dir), str(locked / "run"))


def _run_cli(*args, cwd=REPO):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_cli_trains_resumes_and_prints_the_table(data_dir, tmp_path):
    args = [
        "--config",
        str(REPO / "configs" / "default.py"),
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data.options.data_dir={data_dir}",
        "--config.data.options.image_size=32",
        "--config.data.options.num_train=64",
        "--config.data.options.num_validation=16",
        "--config.data.options.num_test=8",
        "--config.data.augment.crop_size=(32, 32)",
        "--config.model.base_features=4",
        "--config.model.depth=2",
        "--config.model.use_batch_norm=False",  # an option default.py does not set
        "--config.data.batch_size=4",
        "--config.data.eval_batch_size=4",
        "--config.train.num_steps=2",
        "--config.train.eval_every=0",
        "--config.train.checkpoint_every=0",
    ]
    first = _run_cli(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Final metrics at step 2" in first.stdout and "mean IoU" in first.stdout
    assert "2 device(s)" in first.stdout
    again = _run_cli(*args[:-3], "--config.train.num_steps=3")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming from the checkpoint at step 2" in again.stdout
    assert "Final metrics at step 3" in again.stdout


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.train.num_stpes=3", "train has no key 'num_stpes'; allowed keys there: ["),
        ("--config.model.foo=1", "model has no key 'foo'; allowed keys there: ['base_features'"),
    ],
)
def test_cli_rejects_unknown_override_with_the_allowed_keys(tmp_path, override, message):
    result = _run_cli(
        "--config", str(REPO / "configs" / "default.py"), "--workdir", str(tmp_path), override
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


def test_pmap_form_matches_mesh_without_batch_norm_and_trains_with_it(data_dir, tmp_path):
    """pmap: exact global loss normalisation and summed gradients, per-device BN statistics."""
    curves = {}
    for parallelism in ("mesh", "pmap"):
        config = tiny_config(
            data_dir,
            **{
                "train.num_steps": 5,
                "train.num_devices": 4,
                "train.parallelism": parallelism,
                "model.use_batch_norm": False,
                "train.checkpoint_every": 3,
            },
        )
        train_and_evaluate(config, str(tmp_path / parallelism))
        curves[parallelism] = _train_losses(tmp_path / parallelism)
    np.testing.assert_allclose(curves["pmap"], curves["mesh"], rtol=1e-3)
    # resume a pmap run from its step-3 checkpoint: same losses as straight through
    shutil.rmtree(tmp_path / "pmap" / "checkpoints" / "5")
    (tmp_path / "pmap" / "metrics.jsonl").unlink()
    config = tiny_config(
        data_dir,
        **{
            "train.num_steps": 5,
            "train.num_devices": 4,
            "train.parallelism": "pmap",
            "model.use_batch_norm": False,
        },
    )
    train_and_evaluate(config, str(tmp_path / "pmap"))
    np.testing.assert_allclose(_train_losses(tmp_path / "pmap"), curves["pmap"][3:], rtol=1e-5)

    with_bn = tiny_config(
        data_dir, **{"train.num_steps": 30, "train.num_devices": 4, "train.parallelism": "pmap"}
    )
    results = train_and_evaluate(with_bn, str(tmp_path / "pmap_bn"))
    losses = _train_losses(tmp_path / "pmap_bn")
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses
    assert 0 <= results["validation"]["miou"] <= 1


@pytest.mark.parametrize("enabled", [True, False])
def test_progress_counts_logged_steps_with_the_bar_on_or_off(tmp_path, enabled):
    """Every process but the first has a disabled bar, which counts nothing; the steps since
    the last log must still be known there (a stop between logs logs them)."""
    from jaxseg.report.writer import RunWriter
    from jaxseg.train.loop import Progress

    progress = Progress(RunWriter(str(tmp_path), enabled=enabled), 10, 100, 4)
    progress.log(14, {"loss": 1.0})
    assert progress.logged_step == 14
    progress.log(15, {"loss": 1.0})
    assert progress.logged_step == 15
    progress.close()
    if enabled:
        records = read_metrics(str(tmp_path / "metrics.jsonl"))
        assert [r["step"] for r in records] == [14, 15]
