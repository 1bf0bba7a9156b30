"""Divergence: a loss or a train state that is no longer finite.

Checked without a host sync at every step: the loss at each log interval, from
the metric sums that the log reads anyway, and the whole state before every
save. So a non-finite state is never saved, and a good checkpoint is never
rotated out for a bad one. With `train.skip_nonfinite_steps`, a step whose
loss or new state is not finite keeps the state it started from (its step
counter still advances, as its batch was consumed) and is counted in the log
("skipped_steps") instead of stopping the run.

After a resume, the loss of the first step is checked at once (one host sync
per run). That loss is computed from the restored parameters before any update,
so the learning rate plays no part in it: if it is not finite, the restored
checkpoint is named as the cause and set aside, not the optimizer settings.
"""

import math

from jaxseg.errors import DivergedError
from jaxseg.run.finite import all_finite, is_finite, skipping_nonfinite  # noqa: F401


class DivergenceGuard:
    """Stops a run whose loss or state is not finite, naming the step and the last good
    checkpoint of `checkpointer`; a finite loss confirms the checkpoints before it."""

    def __init__(self, checkpointer, config, start: int):
        self.checkpointer, self.config = checkpointer, config
        self.interval_start = start  # the last step of the previous log interval
        self.resumed_from = start or None  # the checkpoint's step; None for a fresh run

    def check_resumed_step(self, step: int, metrics: dict) -> None:
        """Raises DivergedError, naming the restored checkpoint, if the loss of the first
        step after a resume (`metrics`: that step's sums) is not finite."""
        if self.resumed_from is None or step != self.resumed_from + 1:
            return
        if is_finite(metrics["loss_sum"]):
            return
        restored = self.resumed_from
        self.checkpointer.distrust(restored)
        moved = self.checkpointer.set_aside_unconfirmed()
        before = self.checkpointer.newest_good
        where = ", ".join(f"step {s} to {target}" for s, target in moved.items())
        then = (
            f"resume from step {before}, the newest checkpoint before it"
            if before is not None
            else "start over from step 0 (no checkpoint is older)"
        )
        raise DivergedError(
            f"the training loss is not finite in step {step}, the first step after resuming"
            f" from the checkpoint at step {restored} in {self.checkpointer.directory}. That"
            " loss comes from the restored parameters before any update, so the"
            f" checkpoint is the likely cause, not the learning rate: its state was damaged"
            " after it was verified, or saved on the edge of diverging. Moved aside (kept for"
            f" inspection): {where}. Run the same command again to {then}."
        )

    def check_loss(self, step: int, record: dict) -> None:
        """Raises DivergedError if the mean loss of the steps logged at `step` is not finite;
        else the checkpoints saved before those steps are good."""
        first, self.interval_start = self.interval_start + 1, step
        if math.isfinite(record["loss"]):
            self.checkpointer.confirm(first - 1)
            return
        skipped = record.get("skipped_steps")
        where = f"step {step}" if first == step else f"steps {first}-{step}"
        detail = f" (all {skipped} steps were skipped)" if skipped else ""
        raise DivergedError(
            f"the training loss is not finite ({record['loss']}) in {where}{detail}."
            f" {self._advice()}"
        )

    def check_state(self, step: int, state) -> None:
        """Raises DivergedError if the state to be saved at `step` is not finite."""
        if not is_finite(state):
            raise DivergedError(
                f"the train state at step {step} holds values that are not finite; it was"
                f" not saved. {self._advice()}"
            )

    def _advice(self) -> str:
        moved = self.checkpointer.set_aside_unconfirmed()
        last = self.checkpointer.newest_good
        directory = self.checkpointer.directory
        text = (
            f"The last good checkpoint is step {last} in {directory}"
            if last is not None
            else f"No good checkpoint is in {directory}"
        )
        text += " (a state that is not finite is never saved)."
        if moved:
            text += (
                f" Saved after it, but followed by a loss that was not finite, so moved aside:"
                f" {', '.join(f'step {step} to {target}' for step, target in moved.items())}."
            )
        optim = self.config.optim
        return (
            f"{text} Lower optim.learning_rate (now {optim.learning_rate:g}), set"
            f" optim.grad_clip_norm (now {optim.grad_clip_norm:g}), or set"
            " train.skip_nonfinite_steps=True to skip such steps; then run the same command"
            " again to resume from the last good checkpoint."
        )
