"""Orbax checkpoints in <workdir>/checkpoints: train state, input-pipeline state, and the run's
record (its config and dataset info), so a checkpoint alone says how to rebuild its model.

A run that finds checkpoints resumes from the newest intact one. If the
current config builds a model whose parameters, or an optimizer whose state,
differ in structure or shape from the saved ones, it refuses
(CheckpointMismatchError) before writing anything, so the existing
checkpoints are never overwritten. A read-only Checkpointer (for evaluation
and prediction) creates nothing and restores the model variables alone,
without the optimizer state.

Integrity, twice over. (1) As soon as a save has committed (orbax writes
asynchronously; a thread of process 0 waits for it, so training does not),
`jaxseg_integrity.json` in its step directory records the size and sha256 of
every file. (2) The run record saved in the checkpoint itself ("meta") holds a
fingerprint of what was saved: two wrapping 32-bit sums of every array's bits,
and the sha256 of the data state and of the record. So a checkpoint whose
integrity record was never written (a run killed, or the power lost, between
the commit and the record) is still verified when restored, instead of being
trusted: any single flipped bit changes a sum. Restoring checks both. A damaged
checkpoint (a changed, truncated or missing file; an unreadable step; arrays
that differ from their fingerprint) is reported by name and moved to
<workdir>/damaged_checkpoints/, and the run resumes from the newest intact
one; if none is intact, the error lists each and nothing is moved or written.
An unrecorded step that passes is given its record when a run resumes from it.
(Verified, rather than passed over for the newest recorded step: a run killed in
that moment would lose every step since, for a checkpoint almost always intact.)
Only checkpoints older than the fingerprint with no record are unverified:
used if orbax can restore them.

Saving: a failed save (disk full, ...) stops the run with the path and the
free space in the message; asynchronous errors surface at the next
`check_for_errors()` (every training step) or, at the latest, at the next
save. What a failed or killed save left is removed when the run resumes.

Rotation keeps the newest `keep` checkpoints, and two more rules: an old one
goes only once a newer one has committed and been recorded (a failed save
never costs a good checkpoint), and the newest *good* one (`confirm`: the loss
of the steps after it was finite) is never rotated out. When a run diverges,
the checkpoints saved after that good one are moved to
<workdir>/diverged_checkpoints/, so that resuming starts from it.
"""

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from jaxseg.errors import CheckpointError

INTEGRITY_FILE = "jaxseg_integrity.json"
DAMAGED_DIR = "damaged_checkpoints"  # beside the checkpoints directory
DIVERGED_DIR = "diverged_checkpoints"  # saved just before the loss stopped being finite
TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a step orbax has not finished writing
FINGERPRINT = "fingerprint"  # the key of the meta item that verifies the checkpoint


class CheckpointMismatchError(CheckpointError):
    """The saved checkpoint does not fit the model or optimizer the current config builds."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint whose files do not match its integrity record, or cannot be read;
    `problem` says what is wrong with it."""

    def __init__(self, message: str, problem: str):
        super().__init__(message)
        self.problem = problem


@dataclasses.dataclass
class Restored:
    """What `Checkpointer.restore_newest` found: the step, its contents, and what it set
    aside on the way (one line per damaged checkpoint)."""

    step: int
    state: object
    data_state: dict
    meta: dict | None
    set_aside: list[str]


class Checkpointer:
    """Saves and restores {"state": TrainState pytree, "data": input-pipeline state,
    "meta": {"config": ..., "info": ...}} at integer steps."""

    def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        self.keep = keep
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory}: no checkpoints directory")
        with _without_read_only_notice():
            self._manager = ocp.CheckpointManager(
                self.directory,
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=None,  # rotated here, once the newer checkpoint is recorded
                    create=not read_only,
                    read_only=read_only,
                    save_interval_steps=0 if read_only else 1,
                ),
                item_handlers={
                    "state": ocp.PyTreeCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler(),
                },
            )
        if not read_only and _is_first():
            _remove_unfinished_saves(self.directory)
        self._unrecorded: int | None = None  # saved, not yet settled (recorded and rotated)
        self._recorder: threading.Thread | None = None  # writes its record once committed
        self._recorder_error: BaseException | None = None
        self._failed = False
        self._good: int | None = None  # the newest checkpoint known good (see `confirm`)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def step_directory(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def check_step(self, step: int | None) -> int:
        """`step`, or the latest when None; CheckpointError listing the steps there are."""
        steps = self.all_steps()
        if not steps:
            raise CheckpointError(f"{self.directory}: no checkpoint has been saved yet")
        if step is None:
            return steps[-1]
        if step not in steps:
            raise CheckpointError(
                f"{self.directory}: no checkpoint at step {step}; saved steps: {steps}"
            )
        return step

    # Saving.

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        """Starts an asynchronous save of `step` (after settling the previous one); its
        integrity record is written as soon as it has committed."""
        self._settle()
        self._unrecorded = step
        meta = {**meta, FINGERPRINT: fingerprint(state, data_state, meta)}
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeSave(state),
                    data=ocp.args.JsonSave(data_state),
                    meta=ocp.args.JsonSave(meta),
                ),
            )
        except Exception as e:
            raise self._save_error(e) from e
        if _is_first():
            self._recorder = threading.Thread(
                target=self._record_when_committed, args=(step,), name="jaxseg_integrity"
            )
            self._recorder.daemon = True  # a killed run loses at most this record
            self._recorder.start()

    def _record_when_committed(self, step: int) -> None:
        """In a thread: waits for orbax to commit `step`, then records its integrity (only
        reads orbax's in-progress flag; the waiting and the hashing leave training alone)."""
        try:
            while self._manager.is_saving_in_progress():
                time.sleep(0.02)
            directory = self.step_directory(step)
            if os.path.isdir(directory):  # committed; a failed save left only its tmp name
                _write_integrity(directory)
        except BaseException as e:  # raised on the main thread by _settle
            self._recorder_error = e

    def check_for_errors(self) -> None:
        """Raises CheckpointError at once if an asynchronous save has failed."""
        try:
            self._manager.check_for_errors()
        except Exception as e:
            raise self._save_error(e) from e

    def wait(self) -> None:
        """Waits for the last save, records its integrity and rotates old checkpoints."""
        self._settle()

    def _settle(self) -> None:
        if self._unrecorded is None:
            return
        try:
            self._manager.wait_until_finished()
            if self._recorder is not None:
                self._recorder.join()
                self._recorder = None
            if self._recorder_error is not None:
                error, self._recorder_error = self._recorder_error, None
                raise error
        except Exception as e:
            raise self._save_error(e) from e
        self._unrecorded = None
        for step in self.all_steps()[: -self.keep]:
            if step != self._good:
                self._manager.delete(step)

    def _save_error(self, error: Exception) -> CheckpointError:
        """The error for a failed save of the unrecorded step (the run stops on it)."""
        self._failed = True
        step = self._unrecorded
        kept = [s for s in _listed_steps(self.directory) if s != step]
        usage = shutil.disk_usage(self.directory)
        return CheckpointError(
            f"saving the checkpoint at step {step} to {self.step_directory(step)} failed:"
            f" {_root_cause(error)}. Free space there: {_size(usage.free)} of"
            f" {_size(usage.total)}. Training stopped; the checkpoints saved before it"
            f" ({'steps ' + ', '.join(map(str, kept)) if kept else 'none'}) are intact. Make"
            " room (or use another --workdir), then run the same command again to resume"
            + (f" from step {kept[-1]}" if kept else "")
            + f" (it removes what the failed save left, {step}.orbax-checkpoint-tmp*)."
        )

    # Restoring.

    def meta(self, step: int) -> dict | None:
        """The run record saved with `step` (checked against its fingerprint); None for
        checkpoints written before jaxseg saved one (their config is the workdir's
        config.json)."""
        if not os.path.isdir(os.path.join(self.step_directory(step), "meta")):
            return None
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception as e:
            raise self._damaged(step, e) from e
        meta = restored["meta"]
        saved = meta.get(FINGERPRINT) if isinstance(meta, dict) else None
        if saved is not None and saved.get("meta") != _json_sha256(_without_fingerprint(meta)):
            raise self._damaged(step, "its run record (meta) differs from the one saved (sha256)")
        return meta

    def restore(self, step: int, abstract_state, explanation: str = ""):
        """Restores (state, data_state) at `step` into the shardings of `abstract_state`.

        `explanation` (e.g. which settings changed) is added to a mismatch error.
        """
        self.check_compatible(step, abstract_state.params, explanation)
        self.check_optimizer(step, abstract_state.opt_state, explanation)
        meta = self.meta(step)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=_restore_args(abstract_state), data=ocp.args.JsonRestore()
                ),
            )
        except Exception as e:
            raise self._damaged(step, e) from e
        self._verify(step, meta, restored["state"], restored["data"])
        return restored["state"], restored["data"]

    def _verify(self, step: int, meta: dict | None, state, data_state=None) -> None:
        """Raises DamagedCheckpointError if what was restored differs from the fingerprint
        saved with it (checkpoints saved before jaxseg wrote one pass unverified)."""
        saved = (meta or {}).get(FINGERPRINT)
        if saved is None:
            return
        problem = _fingerprint_problem(saved, state, data_state)
        if _any_process(problem) is not None:
            raise self._damaged(step, problem or "another process of this run found it damaged")

    def restore_newest(self, abstract_state, explain) -> Restored | None:
        """Restores the newest intact checkpoint (None if there is none at all); newer damaged
        ones are moved to damaged_checkpoints/.

        Args:
          abstract_state: the state to restore into (shapes and shardings).
          explain: meta -> text naming the settings changed since it was saved, for a
            mismatch error.

        Raises:
          CheckpointMismatchError: the newest intact checkpoint does not fit the config.
          CheckpointError: no checkpoint is intact (nothing moved or written).
        """
        damaged = []
        for step in reversed(self.all_steps()):
            # Process 0 reads the files; every process must come to the same step.
            problem = _any_process(self.integrity_problem(step) if _is_first() else None)
            if problem is None:
                try:
                    meta = self.meta(step)
                    state, data_state = self.restore(step, abstract_state, explain(meta))
                except DamagedCheckpointError as e:
                    problem = e.problem
                problem = _any_process(problem)
                if problem is None:
                    self._good = step  # it was trained on before
                    self._record_if_missing(step)
                    return Restored(step, state, data_state, meta, self._set_aside(damaged))
            damaged.append((step, problem))
        if not damaged:
            return None
        listed = "\n".join(f"  step {step}: {problem}" for step, problem in damaged)
        raise CheckpointError(
            f"no intact checkpoint in {self.directory}:\n{listed}\nNothing was moved or"
            " written. Use a new --workdir to start over, or move these steps away to"
            " inspect them."
        )

    def _record_if_missing(self, step: int) -> None:
        """Writes the integrity record of a step just verified by its fingerprint, whose
        record was never written (a run killed between its commit and its record)."""
        directory = self.step_directory(step)
        if self.read_only or not _is_first():
            return
        if os.path.exists(os.path.join(directory, INTEGRITY_FILE)):
            return
        if (self.meta(step) or {}).get(FINGERPRINT) is not None:
            _write_integrity(directory)

    def _set_aside(self, damaged: list[tuple[int, str]]) -> list[str]:
        """Moves damaged step directories out of the way; one line on each."""
        moved = self._move_aside([step for step, _ in damaged], DAMAGED_DIR)
        return [
            f"The checkpoint at step {step} in {self.directory} is damaged: {problem};"
            f" moved to {moved[step]}."
            for step, problem in damaged
        ]

    def _move_aside(self, steps: list[int], folder: str) -> dict[int, str]:
        """Moves step directories into <workdir>/<folder>/ (kept for inspection, never
        deleted); {step: where it went}."""
        aside = os.path.join(os.path.dirname(self.directory), folder)
        moved = {}
        for step in steps:
            target, suffix = os.path.join(aside, str(step)), 1
            while os.path.exists(target):
                target, suffix = os.path.join(aside, f"{step}-{suffix}"), suffix + 1
            if _is_first():
                os.makedirs(aside, exist_ok=True)
                os.rename(self.step_directory(step), target)
            moved[step] = target
        if steps:
            _sync("jaxseg_move_aside")
            self._manager.reload()
        return moved

    # What is known good: a checkpoint after which training went on with a finite loss.

    def confirm(self, up_to: int) -> None:
        """Marks the checkpoints up to step `up_to` good (the loss of the steps after them was
        finite). The newest good one is never rotated out."""
        good = [step for step in self.all_steps() if step <= up_to]
        if good:
            self._good = max(good)

    def distrust(self, step: int) -> None:
        """`step` is no longer known good (training from it went wrong at once): the newest
        good one becomes the newest checkpoint before it, if any."""
        before = [s for s in self.all_steps() if s < step]
        self._good = max(before) if before else None

    @property
    def newest_good(self) -> int | None:
        return self._good

    def set_aside_unconfirmed(self) -> dict[int, str]:
        """Moves the checkpoints newer than the newest good one (saved, finite, but not
        followed by a finite loss) into <workdir>/diverged_checkpoints/, so that a resumed
        run starts from the good one; {step: where it went}."""
        self._settle()
        newer = [step for step in self.all_steps() if self._good is None or step > self._good]
        return self._move_aside(newer, DIVERGED_DIR)

    def restore_variables(self, step: int, abstract_variables: dict, explanation: str = ""):
        """The model variables {"params", "batch_stats"} at `step`, without the optimizer."""
        problem = self.integrity_problem(step)
        if problem is not None:
            raise self._damaged(step, problem)
        self.check_compatible(step, abstract_variables["params"], explanation)
        meta = self.meta(step)
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(state=_restore_args(abstract_variables, partial=True))
            )
        except Exception as e:
            raise self._damaged(step, e) from e
        variables = {key: restored["state"][key] for key in abstract_variables}
        self._verify(step, meta, variables)
        return variables

    def _damaged(self, step: int, problem: str | Exception) -> DamagedCheckpointError:
        if isinstance(problem, Exception):
            problem = f"it cannot be read ({_root_cause(problem)})"
        return DamagedCheckpointError(
            f"the checkpoint at step {step} in {self.directory} is damaged: {problem}."
            f" Saved steps: {self.all_steps()}; choose another with --step (training"
            " falls back to the newest intact one by itself).",
            problem,
        )

    def integrity_problem(self, step: int) -> str | None:
        """What is wrong with `step`'s files against its integrity record; None if nothing
        (also when it has no record: unverified)."""
        directory = self.step_directory(step)
        if not os.path.isdir(directory) or not os.listdir(directory):
            return "its directory is empty"
        record_path = os.path.join(directory, INTEGRITY_FILE)
        if not os.path.exists(record_path):
            return None
        try:
            with open(record_path) as f:
                recorded = json.load(f)["files"]
        except (OSError, ValueError, KeyError) as e:
            return f"its integrity record {INTEGRITY_FILE} cannot be read ({e})"
        problems = []
        for name, expected in sorted(recorded.items()):
            path = os.path.join(directory, name)
            if not os.path.isfile(path):
                problems.append(f"{name} is missing")
            elif os.path.getsize(path) != expected["size"]:
                problems.append(
                    f"{name} has {os.path.getsize(path)} bytes, {expected['size']} when saved"
                )
            elif _sha256(path) != expected["sha256"]:
                problems.append(f"{name} differs from the file saved (sha256)")
        if not problems:
            return None
        more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
        return ", ".join(problems[:3]) + more

    def check_compatible(self, step: int, abstract_params, explanation: str = "") -> None:
        """Raises CheckpointMismatchError listing the params whose shape or presence differs."""
        saved_params = _shapes(self._state_metadata(step)["params"])
        problems = _differences(saved_params, _shapes(abstract_params))
        if problems:
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} does not match the model of"
                f" the config ({len(problems)} parameter(s) differ):\n{_shown(problems, 20)}\n"
                f"{explanation + chr(10) if explanation else ''}"
                "Nothing was written. Use a new --workdir for a different model, or restore"
                " the config this workdir was trained with (saved in its checkpoints)."
            )

    def check_optimizer(self, step: int, abstract_opt_state, explanation: str = "") -> None:
        """Raises CheckpointMismatchError if the saved optimizer state has another structure
        than the config's optimizer (another optimizer, clipping, freezing, ...)."""
        saved = _shapes(self._state_metadata(step)["opt_state"])
        problems = _differences(saved, _shapes(abstract_opt_state))
        if problems:
            directory = os.path.dirname(self.directory)
            raise CheckpointMismatchError(
                f"the optimizer state in the checkpoint at step {step} in {self.directory}"
                f" does not fit the optimizer of the config ({len(problems)} array(s)"
                f" differ):\n{_shown(problems, 5)}\n"
                f"{explanation + chr(10) if explanation else ''}"
                "Nothing was written. Resume with the optim settings this workdir was trained"
                " with (saved in its checkpoints), or start a new --workdir from these weights"
                f" with the new optimizer: --config.init.from_run={directory}"
            )

    def _state_metadata(self, step: int):
        try:
            state = self._manager.item_metadata(step)["state"]
        except Exception as e:
            raise self._damaged(step, e) from e
        if state is None:
            raise self._damaged(step, "the metadata of its state (state/_METADATA) is missing")
        return state

    def close(self) -> None:
        """Waits for the last save (unless one failed: then only lets go of it)."""
        try:
            if not self._failed:
                self._settle()
            self._manager.close()
        except Exception:
            if not self._failed:
                raise
            logging.warning("closing the checkpoints after a failed save", exc_info=True)


def fingerprint(state, data_state: dict, meta: dict) -> dict:
    """What a checkpoint is verified by when restored: {"arrays": {path: [dtype, sum of
    its bits as 32-bit words, sum of word * (2i+1)]}, "data": sha256, "meta": sha256},
    both sums wrapping, so exact in any order and changed by any single flipped bit."""
    leaves = _flat_arrays(state)
    sums = jax.device_get(_local(_array_sums(list(leaves.values()))))
    return {
        "arrays": {
            path: [str(np.dtype(leaf.dtype)), int(total), int(weighted)]
            for (path, leaf), (total, weighted) in zip(leaves.items(), sums)
        },
        "data": _json_sha256(data_state),
        "meta": _json_sha256(_without_fingerprint(meta)),
    }


def _fingerprint_problem(saved: dict, state, data_state) -> str | None:
    """What differs between a restored checkpoint and its saved fingerprint (None: nothing;
    the run record itself is checked when read, by `Checkpointer.meta`). Arrays restored in
    another dtype than saved (a changed config) are not compared."""
    if data_state is not None and _json_sha256(data_state) != saved.get("data"):
        return "its data-stream state differs from the one saved (sha256)"
    leaves = {
        path: leaf
        for path, leaf in _flat_arrays(state).items()
        if path in saved["arrays"] and saved["arrays"][path][0] == str(np.dtype(leaf.dtype))
    }
    sums = jax.device_get(_local(_array_sums(list(leaves.values()))))
    differ = [
        path
        for path, restored in zip(leaves, sums)
        if [int(x) for x in restored] != saved["arrays"][path][1:]
    ]
    if not differ:
        return None
    more = f" and {len(differ) - 3} more" if len(differ) > 3 else ""
    return (
        f"its arrays differ from those saved (checksum of state/{', state/'.join(differ[:3])}"
        f"{more})"
    )


def _flat_arrays(tree) -> dict:
    """{path: array} with paths as orbax writes them (as `_shapes`)."""
    flat = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(tree, keep_empty_nodes=True))
    return {"/".join(map(str, path)): leaf for path, leaf in flat.items() if hasattr(leaf, "dtype")}


@jax.jit
def _array_sums(arrays: list) -> jax.Array:
    """(n, 2) uint32: per array, the wrapping sums of its 32-bit words and of word * (2i+1)."""
    rows = []
    for array in arrays:
        array = jnp.asarray(array)
        if array.dtype == jnp.bool_:
            words = array.astype(jnp.uint32)
        elif array.dtype.itemsize == 8:
            words = jax.lax.bitcast_convert_type(array, jnp.uint32)  # (..., 2)
        else:
            unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[array.dtype.itemsize]
            words = jax.lax.bitcast_convert_type(array, unsigned).astype(jnp.uint32)
        words = words.ravel()
        odd = jnp.arange(words.size, dtype=jnp.uint32) * 2 + 1
        rows.append(jnp.stack([words.sum(dtype=jnp.uint32), (words * odd).sum(dtype=jnp.uint32)]))
    return jnp.stack(rows) if rows else jnp.zeros((0, 2), jnp.uint32)


def _local(result: jax.Array):
    """A replicated result of arrays spanning several processes, readable by this one."""
    return result if result.is_fully_addressable else result.addressable_data(0)


def _json_sha256(item) -> str:
    """sha256 of `item` as JSON, normalised as orbax writes and reads it back."""
    text = json.dumps(json.loads(json.dumps(item)), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _without_fingerprint(meta: dict | None) -> dict | None:
    if not isinstance(meta, dict):
        return meta
    return {key: value for key, value in meta.items() if key != FINGERPRINT}


# orbax warns "Given directory is read only=<path>" each time a run is read (load_run,
# evaluate.py, predict.py): that is what was asked for. Only this line is dropped.
_READ_ONLY_NOTICE = "Given directory is read only=%s"


def _not_the_read_only_notice(record) -> bool:
    return record.msg != _READ_ONLY_NOTICE


@contextlib.contextmanager
def _without_read_only_notice():
    logger = logging.get_absl_logger()
    logger.addFilter(_not_the_read_only_notice)
    try:
        yield
    finally:
        logger.removeFilter(_not_the_read_only_notice)


def _restore_args(abstract_tree, partial: bool = False):
    return ocp.args.PyTreeRestore(
        abstract_tree,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree),
        partial_restore=partial,
    )


def _shapes(tree) -> dict[str, tuple]:
    """{path: shape} of a tree's arrays, with paths as orbax writes them (metadata and
    abstract trees alike: optax's named tuples become indices and field names)."""
    flat = ocp.tree.to_flat_dict(ocp.tree.serialize_tree(tree, keep_empty_nodes=True))
    return {
        "/".join(map(str, path)): tuple(leaf.shape)
        for path, leaf in flat.items()
        if hasattr(leaf, "shape")  # not the empty states of stateless transforms
    }


def _differences(saved: dict, wanted: dict) -> list[str]:
    def shape(found):
        return "absent" if found is None else found

    return [
        f"  {path}: checkpoint {shape(saved.get(path))}, config {shape(wanted.get(path))}"
        for path in sorted(set(saved) | set(wanted))
        if saved.get(path) != wanted.get(path)
    ]


def _shown(problems: list[str], limit: int) -> str:
    return "\n".join(problems[:limit]) + ("\n  ..." if len(problems) > limit else "")


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _write_integrity(directory: str) -> None:
    """Records the size and sha256 of every file of a committed step directory."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, directory)
            if relative != INTEGRITY_FILE:
                files[relative] = {"size": os.path.getsize(path), "sha256": _sha256(path)}
    partial = os.path.join(directory, f"{INTEGRITY_FILE}.tmp")
    try:
        with open(partial, "w") as f:
            json.dump({"files": files}, f, indent=1, sort_keys=True)
        os.replace(partial, os.path.join(directory, INTEGRITY_FILE))
    except BaseException:  # a full disk, a signal: no temporary file is left
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise


def _remove_unfinished_saves(directory: str) -> None:
    """Removes what failed or killed saves left (orbax writes a step under a temporary
    name first). Only the run holding the workdir's lock opens its checkpoints writable,
    so nothing is writing there."""
    for name in os.listdir(directory):
        if TMP_MARK in name:
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)


def _listed_steps(directory: str) -> list[int]:
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit())


def _root_cause(error: BaseException) -> str:
    """The innermost cause's first line (orbax and tensorstore wrap OS errors)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _size(num_bytes: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.1f} {unit}" if unit != "bytes" else f"{num_bytes} bytes"
        num_bytes /= 1024
    return ""


def _is_first() -> bool:
    return jax.process_index() == 0


def _any_process(problem: str | None) -> str | None:
    """`problem`, or if this process found none, whether another process found one."""
    if jax.process_count() == 1:
        return problem
    from jax.experimental import multihost_utils

    found = multihost_utils.process_allgather(np.int32(problem is not None))
    if not np.any(found):
        return None
    return problem or "another process of this run could not read it"


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
