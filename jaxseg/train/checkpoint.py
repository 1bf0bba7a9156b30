"""Orbax checkpoints in <workdir>/checkpoints: train state + input-pipeline state.

A run that finds checkpoints resumes from the latest. If the current config
builds a model whose parameters differ in structure or shape from the saved
ones, it refuses (CheckpointMismatchError) before writing anything, so the
existing checkpoints are never overwritten.
"""

import os

import jax
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """The saved checkpoint does not fit the model the current config builds."""


class Checkpointer:
    """Saves and restores {"state": TrainState pytree, "data": grain iterator state}."""

    def __init__(self, directory: str, keep: int = 3):
        self.directory = os.path.abspath(directory)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)
            ),
        )

    def restore(self, step: int, abstract_state, explanation: str = ""):
        """Restores (state, data_state) at `step` into the shardings of `abstract_state`.

        `explanation` (e.g. which settings changed) is added to a mismatch error.
        """
        self.check_compatible(step, abstract_state, explanation)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["data"]

    def check_compatible(self, step: int, abstract_state, explanation: str = "") -> None:
        """Raises CheckpointMismatchError listing the params whose shape or presence differs."""
        saved = self._manager.item_metadata(step)["state"]
        saved_params = _shapes(saved["params"])
        wanted_params = _shapes(abstract_state.params)
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
                f" the current config ({len(problems)} parameter(s) differ):\n{shown}\n"
                f"{explanation + chr(10) if explanation else ''}"
                "Nothing was written. Use a new --workdir for a different model, or restore"
                " the config this workdir was trained with (saved in its config.json)."
            )

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _shapes(tree) -> dict[str, tuple]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(path): tuple(leaf.shape) for path, leaf in flat}
