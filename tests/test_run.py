"""build_run / load_run: a trained run comes back from its checkpoint alone; bad runs get
clear errors and are left untouched."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_config

from jaxseg.errors import CheckpointError, DataError, RunError
from jaxseg.run import build_run, load_run
from jaxseg.run.checkpoint import Checkpointer, CheckpointMismatchError
from jaxseg.run.step import variables_of

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _snapshot(directory):
    """Every path under `directory` with its size and modification time."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(root, name)
            stat = os.stat(path)
            found[os.path.relpath(path, directory)] = (stat.st_size, stat.st_mtime_ns)
    return found


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """A tiny run trained 3 steps by hand, checkpointed at steps 2 and 3, and its state."""
    workdir = tmp_path_factory.mktemp("run")
    run = build_run(tiny_config(data_dir, **{"train.num_steps": 3}))
    state, batches = run.init_state(), run.train_batches()
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
    for step in (1, 2, 3):
        state, _ = run.train_step(state, run.layout.put_batch(next(batches)), run.step_rng)
        if step >= 2:
            checkpointer.save(step, state, batches.get_state(), run.record())
    checkpointer.wait()
    checkpointer.close()
    return run, state, str(workdir)


def test_load_run_predicts_as_the_training_state(trained):
    run, state, workdir = trained
    loaded = load_run(workdir)
    assert loaded.step == 3
    assert loaded.info == run.info
    assert set(loaded.variables) == {"params", "batch_stats"}  # no optimizer state
    images = run.sources["validation"][0]["image"][None]
    images = np.concatenate([images, images[:, ::-1]])
    expected = jax.nn.softmax(
        run.model.apply(variables_of(state), run.info.normalize(images), train=False), -1
    )
    np.testing.assert_allclose(loaded.predict(images), expected, rtol=1e-5, atol=1e-6)
    # any size: padded to the model's multiple inside, cropped back
    odd = np.random.default_rng(0).integers(0, 255, (1, 27, 41, 3), np.uint8)
    probs = loaded.predict(odd)
    assert probs.shape == (1, 27, 41, 5)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    assert load_run(workdir, step=2).step == 2


def test_load_run_bad_inputs_name_the_problem_and_change_nothing(trained, tmp_path):
    _, _, workdir = trained
    before = _snapshot(workdir)
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 7; saved steps: \[2, 3\]"):
        load_run(workdir, step=7)
    with pytest.raises(RunError, match="no such run directory"):
        load_run(str(tmp_path / "absent"))
    with pytest.raises(RunError, match="is not a jaxseg run: it has no checkpoints/"):
        load_run(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint has been saved yet"):
        load_run(str(tmp_path))
    assert _snapshot(workdir) == before
    assert os.listdir(tmp_path / "checkpoints") == []


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(trained, tmp_path):
    _, _, workdir = trained
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    meta_file = copy / "checkpoints" / "3" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["config"]["model"]["base_features"] = 4
    del meta["fingerprint"]
    meta_file.write_text(json.dumps(meta))
    # As saved by a run that was stopped before it recorded the checkpoint's integrity, by
    # code that saved no fingerprint (with either, the edit above would make it damaged).
    (copy / "checkpoints" / "3" / "jaxseg_integrity.json").unlink()
    before = _snapshot(copy)
    with pytest.raises(
        CheckpointMismatchError, match=r"(?s)step 3 .* does not match the model.*parameter"
    ):
        load_run(str(copy))
    assert _snapshot(copy) == before


def test_a_run_written_before_checkpoints_carried_their_config_still_loads(data_dir, tmp_path):
    """tests/fixtures/old_run was written by the code before this structure (config.json
    only); its parameters restore into today's model and predict the same logits."""
    copy = tmp_path / "old_run"
    shutil.copytree(os.path.join(FIXTURES, "old_run"), copy)
    config = json.loads((copy / "config.json").read_text())
    config["data"]["options"]["data_dir"] = data_dir
    (copy / "config.json").write_text(json.dumps(config))
    loaded = load_run(str(copy))
    assert loaded.step == 2
    images = np.random.default_rng(0).uniform(-2, 2, (2, 32, 32, 3)).astype(np.float32)
    logits = loaded.model.apply(loaded.variables, jnp.asarray(images), train=False)
    np.testing.assert_allclose(
        logits, np.load(os.path.join(FIXTURES, "old_run_logits.npy")), rtol=1e-5, atol=1e-5
    )


def test_a_split_the_dataset_lacks_lists_the_splits(trained):
    run, _, _ = trained
    with pytest.raises(
        DataError,
        match=r"'tset' is not a split of dataset 'shapes'; its splits: \['test', 'train', 'valid",
    ):
        run.eval_batches("tset")


def test_models_declare_their_input_and_the_pipeline_pads_as_asked(data_dir):
    """The original U-Net is padded by the pipeline because the model asks, not by class."""
    config = tiny_config(data_dir)
    from jaxseg.config import model_config

    config.model = model_config("unet_original", base_features=4, depth=2)
    run = build_run(config)
    batch = next(run.train_batches())
    tile = run.model.input_padding(32, 32)
    assert batch["image"].shape[1] == 32 + sum(tile[0][0])
    assert batch["mask"].shape[1] == 32 + sum(tile[1][0])
