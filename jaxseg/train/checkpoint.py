"""Orbax checkpoints in <workdir>/checkpoints: train state, input-pipeline state, and the run's
record (its config and dataset info), so a checkpoint alone says how to rebuild its model.

A run that finds checkpoints resumes from the latest. If the current config
builds a model whose parameters differ in structure or shape from the saved
ones, it refuses (CheckpointMismatchError) before writing anything, so the
existing checkpoints are never overwritten. A read-only Checkpointer (for
evaluation and prediction) creates nothing and restores the model variables
alone, without the optimizer state.
"""

import os

import jax
import orbax.checkpoint as ocp

from jaxseg.errors import CheckpointError


class CheckpointMismatchError(CheckpointError):
    """The saved checkpoint does not fit the model the current config builds."""


class Checkpointer:
    """Saves and restores {"state": TrainState pytree, "data": grain iterator state,
    "meta": {"config": ..., "info": ...}} at integer steps."""

    def __init__(self, directory: str, keep: int = 3, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        self.read_only = read_only
        if read_only and not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory}: no checkpoints directory")
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=not read_only, read_only=read_only
            ),
            item_handlers={
                "state": ocp.PyTreeCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

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

    def save(self, step: int, state, data_state: dict, meta: dict) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeSave(state),
                data=ocp.args.JsonSave(data_state),
                meta=ocp.args.JsonSave(meta),
            ),
        )

    def meta(self, step: int) -> dict | None:
        """The run record saved with `step`; None for checkpoints written before jaxseg
        saved one (their config is the workdir's config.json)."""
        if not os.path.isdir(os.path.join(self.directory, str(step), "meta")):
            return None
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"
        ]

    def restore(self, step: int, abstract_state, explanation: str = ""):
        """Restores (state, data_state) at `step` into the shardings of `abstract_state`.

        `explanation` (e.g. which settings changed) is added to a mismatch error.
        """
        self.check_compatible(step, abstract_state.params, explanation)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=_restore_args(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"]

    def restore_variables(self, step: int, abstract_variables: dict, explanation: str = ""):
        """The model variables {"params", "batch_stats"} at `step`, without the optimizer."""
        self.check_compatible(step, abstract_variables["params"], explanation)
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=_restore_args(abstract_variables, partial=True))
        )
        return {key: restored["state"][key] for key in abstract_variables}

    def check_compatible(self, step: int, abstract_params, explanation: str = "") -> None:
        """Raises CheckpointMismatchError listing the params whose shape or presence differs."""
        saved_params = _shapes(self._manager.item_metadata(step)["state"]["params"])
        wanted_params = _shapes(abstract_params)
        problems = []
        for path in sorted(set(saved_params) | set(wanted_params)):
            have, want = saved_params.get(path), wanted_params.get(path)
            if have != want:
                problems.append(
                    f"  {path}: checkpoint {have or 'absent'}, config {want or 'absent'}"
                )
        if problems:
            shown = "\n".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
            raise CheckpointMismatchError(
                f"the checkpoint at step {step} in {self.directory} does not match the model of"
                f" the config ({len(problems)} parameter(s) differ):\n{shown}\n"
                f"{explanation + chr(10) if explanation else ''}"
                "Nothing was written. Use a new --workdir for a different model, or restore"
                " the config this workdir was trained with (saved in its checkpoints)."
            )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _restore_args(abstract_tree, partial: bool = False):
    return ocp.args.PyTreeRestore(
        abstract_tree,
        restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree),
        partial_restore=partial,
    )


def _shapes(tree) -> dict[str, tuple]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}
