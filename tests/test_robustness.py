"""Nothing good lost: damaged checkpoints are set aside and the run falls back to an intact
one, a changed optimizer is refused by name, a failed save stops the run at once, a run
that diverges stops without saving a non-finite state, and what changes on resume is said.

Every case works on a copy of one tiny run made once (checkpoints at steps 2, 4, 6)."""

import contextlib
import errno
import json
import logging
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import logging as absl_logging
from helpers import tiny_config

from jaxseg.errors import CheckpointError, DivergedError
from jaxseg.report.writer import RunWriter, read_metrics
from jaxseg.run import build_run, load_run
from jaxseg.run.checkpoint import (
    INTEGRITY_FILE,
    Checkpointer,
    CheckpointMismatchError,
    DamagedCheckpointError,
)
from jaxseg.run.resume import resume_or_start
from jaxseg.run.state import TrainState
from jaxseg.train.divergence import skipping_nonfinite
from jaxseg.train.loop import train_and_evaluate

SAVED_STEPS = [2, 4, 6]


def _snapshot(directory):
    """Every path under `directory` with its size and modification time."""
    found = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            stat = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), directory)] = (
                stat.st_size,
                stat.st_mtime_ns,
            )
    return found


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    """(run, workdir): 6 steps of the tiny config, saved at 2, 4 and 6 as the loop saves."""
    workdir = tmp_path_factory.mktemp("robust") / "run"
    run = build_run(tiny_config(data_dir, **{"train.num_steps": 6}))
    state, batches = run.init_state(), run.train_batches()
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    for step in range(1, 7):
        state, _ = run.train_step(state, run.layout.put_batch(next(batches)), run.step_rng)
        if step % 2 == 0:
            checkpointer.save(step, state, batches.get_state(), run.record())
    checkpointer.close()
    with open(workdir / "config.json", "w") as f:
        json.dump(run.config.to_dict(), f)
    return run, workdir


@pytest.fixture
def copy(trained, tmp_path):
    run, workdir = trained
    shutil.copytree(workdir, tmp_path / "run")
    return run, tmp_path / "run"


def _resume(run, workdir):
    checkpointer = Checkpointer(str(workdir / "checkpoints"))
    try:
        return resume_or_start(run, checkpointer, str(workdir))
    finally:
        checkpointer.close()


def _largest_data_file(step_dir):
    files = [
        os.path.join(root, name)
        for root, _, names in os.walk(step_dir / "state")
        for name in names
        if "/d/" in os.path.join(root, name)
    ]
    return max(files, key=os.path.getsize)


def _flip_a_bit(step_dir):
    path = _largest_data_file(step_dir)
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))
    return os.path.relpath(path, step_dir)


def _arrays_of_another_step(step_dir):
    """The step's arrays replaced by the step before's (4 for 6): files orbax reads without
    complaint, holding other values, as a flipped bit inside compressed data can leave them.
    (`_flip_a_bit` on a step without its integrity record is not that: the data files are
    compressed and their chunks written in no fixed order, so whether the flipped byte
    breaks reading or only changes values depends on the run.)"""
    before = step_dir.parent / str(int(step_dir.name) - 2)
    shutil.rmtree(step_dir / "state")
    shutil.copytree(before / "state", step_dir / "state")


def _truncate(step_dir):
    path = _largest_data_file(step_dir)
    size = os.path.getsize(path)
    os.truncate(path, size // 2)
    return f"{os.path.relpath(path, step_dir)} has {size // 2} bytes, {size} when saved"


def _delete_metadata(step_dir):
    os.remove(step_dir / "state" / "_METADATA")
    return "state/_METADATA is missing"


def _empty(step_dir):
    for name in os.listdir(step_dir):
        path = step_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return "its directory is empty"


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: f"{_flip_a_bit(d)} differs from the file saved (sha256)",
        _truncate,
        _delete_metadata,
        _empty,
    ],
    ids=["bit_flip", "truncated", "metadata_deleted", "emptied"],
)
def test_a_damaged_checkpoint_is_set_aside_and_the_run_falls_back(trained, copy, capsys, damage):
    run, workdir = copy
    problem = damage(workdir / "checkpoints" / "6")
    state, batches, start, _ = _resume(run, workdir)
    out = capsys.readouterr().out
    aside = workdir / "damaged_checkpoints" / "6"
    assert f"The checkpoint at step 6 in {workdir / 'checkpoints'} is damaged: {problem};" in out
    assert f"moved to {aside}." in out
    assert f"Resuming from the checkpoint at step 4 in {workdir / 'checkpoints'}, the newest" in out
    assert start == 4 and int(state.step) == 4 and batches.get_state() == {"position": 32}
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    assert os.path.isdir(aside)  # kept for inspection, not deleted
    saved = load_run(str(trained[1]), step=4).variables["params"]
    jax.tree.map(np.testing.assert_array_equal, state.params, saved)


def test_an_unverified_checkpoint_that_cannot_be_read_is_set_aside(copy, capsys):
    """A step saved without its integrity record (killed right after saving) is used if orbax
    can read it; here it cannot."""
    run, workdir = copy
    (workdir / "checkpoints" / "6" / INTEGRITY_FILE).unlink()
    _truncate(workdir / "checkpoints" / "6")
    _, _, start, _ = _resume(run, workdir)
    out = capsys.readouterr().out
    assert start == 4
    assert "step 6" in out and "is damaged: it cannot be read (" in out
    assert "Traceback" not in out and len(out.splitlines()) < 10


def test_an_unrecorded_checkpoint_is_verified_by_its_fingerprint(copy, capsys):
    """A run killed between a save's commit and its integrity record: the fingerprint saved
    in the checkpoint verifies it. An intact one is resumed from and given its record; one
    whose arrays read without error but are not the ones saved is found and set aside."""
    run, workdir = copy
    step_dir = workdir / "checkpoints" / "6"
    (step_dir / INTEGRITY_FILE).unlink()
    _, _, start, _ = _resume(run, workdir)
    assert start == 6 and (step_dir / INTEGRITY_FILE).exists()
    checkpointer = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    assert checkpointer.integrity_problem(6) is None
    checkpointer.close()

    (step_dir / INTEGRITY_FILE).unlink()
    _arrays_of_another_step(step_dir)
    capsys.readouterr()
    state, _, start, _ = _resume(run, workdir)
    out = capsys.readouterr().out
    assert start == 4 and int(state.step) == 4
    assert (
        f"The checkpoint at step 6 in {workdir / 'checkpoints'} is damaged: its arrays differ"
        " from those saved (checksum of state/"
    ) in out
    assert os.path.isdir(workdir / "damaged_checkpoints" / "6")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]


def test_a_restored_state_that_fails_at_once_is_named_not_the_learning_rate(copy, data_dir):
    """A checkpoint whose state is finite but gives a non-finite loss at the first step: the
    message names it (that loss comes before any update) and sets it aside."""
    run, workdir = copy
    state, batches, _, _ = _resume(run, workdir)
    huge = state.replace(params=jax.tree.map(lambda p: p * 1e30, state.params))
    with contextlib.closing(Checkpointer(str(workdir / "checkpoints"))) as checkpointer:
        checkpointer.save(8, huge, batches.get_state(), run.record())
    with pytest.raises(DivergedError) as error:
        train_and_evaluate(tiny_config(data_dir, **{"train.num_steps": 10}), str(workdir))
    message = str(error.value)
    assert (
        "the training loss is not finite in step 9, the first step after resuming from the"
        f" checkpoint at step 8 in {workdir / 'checkpoints'}"
    ) in message
    assert "the checkpoint is the likely cause, not the learning rate" in message
    assert f"step 8 to {workdir / 'diverged_checkpoints' / '8'}" in message
    assert "Run the same command again to resume from step 6" in message
    assert "learning_rate (now" not in message and "last good checkpoint is step 8" not in message
    assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "6"]  # 2: rotated out by 8


def test_with_no_intact_checkpoint_nothing_is_moved_or_written(copy):
    run, workdir = copy
    for step in SAVED_STEPS:
        _flip_a_bit(workdir / "checkpoints" / str(step))
    before = _snapshot(workdir)
    with pytest.raises(
        CheckpointError, match=r"(?s)no intact checkpoint in .*step 6: .*step 4: .*step 2: "
    ) as error:
        train_and_evaluate(run.config, str(workdir))
    assert "Nothing was moved or written" in str(error.value)
    assert _snapshot(workdir) == before


def test_evaluating_a_damaged_checkpoint_names_it_and_changes_nothing(copy):
    _, workdir = copy
    _flip_a_bit(workdir / "checkpoints" / "6")
    before = _snapshot(workdir)
    with pytest.raises(
        DamagedCheckpointError, match=r"step 6 .* is damaged: .*Saved steps: \[2, 4, 6\].*--step"
    ):
        load_run(str(workdir))
    assert load_run(str(workdir), step=4).step == 4
    assert _snapshot(workdir) == before


def test_the_wait_for_the_first_step_says_it_compiles_and_how_long(copy, data_dir, capsys):
    _, workdir = copy
    train_and_evaluate(tiny_config(data_dir, **{"train.num_steps": 7}), str(workdir))
    out = capsys.readouterr().out
    assert re.search(
        r"Resuming from the checkpoint at step 6 .*\n(.*\n)*"
        r"Compiling the training step \(the first step waits for it\)\.\.\.\n"
        r"Compiled the training step in \d+\.\d s\n",
        out,
    ), out


def test_reading_a_run_logs_no_read_only_notice(trained, caplog):
    _, workdir = trained
    with caplog.at_level(logging.INFO):
        assert load_run(str(workdir)).step == 6
    assert "read only" not in caplog.text
    with caplog.at_level(logging.WARNING):  # other warnings still pass
        absl_logging.warning("Given directory is read only, but this is another line")
    assert "another line" in caplog.text


@pytest.mark.parametrize(
    "override, change",
    [
        ({"optim.name": "sgd"}, "optim.name: adamw -> sgd"),
        ({"optim.grad_clip_norm": 1.0}, "optim.grad_clip_norm: 0.0 -> 1.0"),
    ],
)
def test_a_changed_optimizer_is_refused_by_name_and_nothing_is_written(
    copy, data_dir, override, change
):
    _, workdir = copy
    before = _snapshot(workdir)
    config = tiny_config(data_dir, **{"train.num_steps": 8, **override})
    with pytest.raises(CheckpointMismatchError) as error:
        train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert "does not fit the optimizer of the config" in message and change in message
    assert "Nothing was written" in message and f"--config.init.from_run={workdir}" in message
    assert "partial_restore" not in message
    assert _snapshot(workdir) == before


def test_a_full_disk_stops_the_run_at_the_failed_save_and_keeps_the_others(
    copy, data_dir, monkeypatch
):
    _, workdir = copy
    save_json = ocp.JsonCheckpointHandler._save_fn

    async def disk_full_at_step_10(self, item, directory):
        if os.path.basename(os.path.dirname(str(directory))).startswith("10."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return await save_json(self, item, directory)

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "_save_fn", disk_full_at_step_10)
    config = tiny_config(data_dir, **{"train.num_steps": 14, "train.checkpoint_every": 2})
    with pytest.raises(CheckpointError) as error:
        train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert f"saving the checkpoint at step 10 to {workdir / 'checkpoints' / '10'} failed" in message
    assert "OSError: [Errno 28] No space left on device" in message
    assert "Free space there: " in message and "(steps 4, 6, 8) are intact" in message
    assert len(message.splitlines()) == 1
    # Stopped before the next save (12), not at the end; the older checkpoints verified.
    saved = [name for name in os.listdir(workdir / "checkpoints") if name.isdigit()]
    assert sorted(saved) == ["4", "6", "8"]
    assert not os.path.exists(workdir / "final_metrics.json")
    checkpointer = Checkpointer(str(workdir / "checkpoints"), read_only=True)
    assert [checkpointer.integrity_problem(step) for step in (4, 6, 8)] == [None] * 3
    assert all(os.path.exists(workdir / "checkpoints" / s / INTEGRITY_FILE) for s in "468")
    checkpointer.close()


def test_the_next_run_removes_what_a_failed_save_left(tmp_path):
    partial = tmp_path / "checkpoints" / "10.orbax-checkpoint-tmp-1234" / "state"
    partial.mkdir(parents=True)
    Checkpointer(str(tmp_path / "checkpoints"), read_only=True).close()
    assert partial.exists()  # reading a run changes nothing
    Checkpointer(str(tmp_path / "checkpoints")).close()  # the run that holds the lock
    assert os.listdir(tmp_path / "checkpoints") == []


def test_a_diverging_run_stops_and_never_saves_a_non_finite_state(copy, data_dir):
    """Resumed at step 6 with a learning rate that explodes: the state of step 7 is finite
    (saved), the loss of step 8 still finite (3.9e11, so 7 counts as good), the state of
    step 8 is not: the run stops there, saving nothing."""
    _, workdir = copy
    overrides = {"train.checkpoint_every": 1, "train.keep_checkpoints": 1}
    config = tiny_config(
        data_dir, **{"train.num_steps": 40, "optim.learning_rate": 1e6, **overrides}
    )
    with pytest.raises(DivergedError) as error:
        train_and_evaluate(config, str(workdir))
    message = str(error.value)
    assert "the train state at step 8 holds values that are not finite; it was not saved" in (
        message
    )
    assert f"The last good checkpoint is step 7 in {workdir / 'checkpoints'}" in message
    assert "optim.learning_rate (now 1e+06)" in message
    assert sorted(os.listdir(workdir / "checkpoints")) == ["7"]
    variables = load_run(str(workdir)).variables
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_the_last_good_checkpoint_is_never_rotated_out_and_later_ones_are_set_aside(tmp_path):
    """A checkpoint is good once the loss after it was finite; with keep=1, newer saves do not
    rotate it out, and when the run diverges they are moved aside, so that a resumed run
    starts from it."""
    checkpointer = Checkpointer(str(tmp_path / "checkpoints"), keep=1)
    for step in (1, 2, 3):
        checkpointer.save(step, {"w": np.full(3, step, np.float32)}, {"position": 0}, {})
        if step == 1:
            checkpointer.confirm(1)  # the loss of step 2 was finite
    checkpointer.wait()
    assert checkpointer.all_steps() == [1, 3]  # 2 rotated out, 1 kept: the newest good one
    moved = checkpointer.set_aside_unconfirmed()
    assert moved == {3: str(tmp_path / "diverged_checkpoints" / "3")}
    assert checkpointer.all_steps() == [1] and checkpointer.newest_good == 1
    checkpointer.close()


def test_skipping_keeps_the_state_of_a_non_finite_step_and_counts_it():
    import jax.numpy as jnp
    import optax

    def step_fn(state, batch, rng):
        grads = jax.tree.map(lambda p: p * batch, state.params)
        metrics = {"loss_sum": jnp.sum(batch), "loss_weight": jnp.float32(1)}
        return state.apply_gradients(grads=grads), metrics

    state = TrainState.create(
        apply_fn=None, params={"w": jnp.ones(3)}, batch_stats={}, tx=optax.sgd(0.1)
    )
    step = jax.jit(skipping_nonfinite(step_fn))
    good, metrics = step(state, jnp.float32(1.0), None)
    assert int(metrics["skipped"]) == 0 and float(good.params["w"][0]) == pytest.approx(0.9)
    kept, metrics = step(good, jnp.float32(jnp.nan), None)
    assert int(metrics["skipped"]) == 1 and float(metrics["loss_sum"]) == 0.0
    np.testing.assert_array_equal(kept.params["w"], good.params["w"])
    assert int(kept.step) == 2  # the batch was consumed: the step counter advances


def test_with_skipping_a_run_whose_every_step_is_skipped_still_stops(copy, data_dir):
    _, workdir = copy
    config = tiny_config(
        data_dir,
        **{
            "train.num_steps": 12,
            "optim.learning_rate": 1e6,
            "train.skip_nonfinite_steps": True,
        },
    )
    with pytest.raises(DivergedError, match=r"steps were skipped"):
        train_and_evaluate(config, str(workdir))
    skipped = [
        r.get("skipped_steps")
        for r in read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if r["split"] == "train" and r["step"] > 6
    ]
    assert skipped and skipped[-1] >= 1


def test_resuming_with_another_batch_size_continues_the_example_stream(copy, data_dir, capsys):
    run, workdir = copy
    bigger = build_run(tiny_config(data_dir, **{"train.num_steps": 9, "data.batch_size": 16}))
    _, batches, start, _ = _resume(bigger, workdir)
    out = capsys.readouterr().out
    assert start == 6
    assert "data.batch_size changed since the checkpoint: 8 -> 16; the data stream" in out
    assert "continues at example 48, the first one the stopped run had not trained on" in out
    assert "train.num_steps changed since the checkpoint: 6 -> 9; the cosine" in out
    straight = run.train_batches()
    for _ in range(6):
        next(straight)
    expected = [next(straight), next(straight)]  # examples 48..63, batches of 8
    resumed = next(batches)
    for key in ("image", "mask"):
        np.testing.assert_array_equal(
            resumed[key], np.concatenate([expected[0][key], expected[1][key]])
        )
    assert batches.get_state() == {"position": 64}


def test_final_metrics_write_null_for_absent_classes(tmp_path):
    writer = RunWriter(str(tmp_path))
    writer.json("final_metrics.json", {"validation": {"iou_per_class": [0.5, float("nan")]}})
    text = (tmp_path / "final_metrics.json").read_text()
    final = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert final["validation"]["iou_per_class"] == [0.5, None]
