"""Stopping a run cleanly on SIGTERM (schedulers, TPU/GPU preemption) or SIGINT (Ctrl-C).

On either signal the training loop finishes its current step, saves a
checkpoint and stops (`Interrupted`, exit status 4); running the same command
again resumes from it. A second SIGINT stops at once, without saving
(KeyboardInterrupt, exit status 130).

One process: jaxseg's own handlers note the signal; the loop asks after each
step. Several processes must all save at the same step, so JAX's preemption
service decides: `jax.distributed` installs its SIGTERM handler, tells every
process, and `reached_preemption_sync_point(step)` is true for all of them at
one step. jaxseg leaves that handler in place; a SIGINT there is passed on to
it as a SIGTERM to this process.
"""

import os
import signal
import sys

import jax
from jax.experimental import multihost_utils


class StopSignals:
    """Watches for SIGTERM and SIGINT while training; a context manager."""

    def __init__(self):
        self.received: str | None = None  # the name of the first signal, in this process
        self._previous = {}
        self._distributed = False

    def __enter__(self) -> "StopSignals":
        self._distributed = jax.process_count() > 1
        # JAX's preemption service owns SIGTERM when there are several processes.
        watched = (signal.SIGINT,) if self._distributed else (signal.SIGINT, signal.SIGTERM)
        for signum in watched:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _on_signal(self, signum, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = self.received or name
        # os.write: print() is not safe in a handler that may interrupt another print.
        os.write(
            sys.stderr.fileno(),
            f"\n{name}: finishing this step, then saving a checkpoint and stopping"
            " (Ctrl-C again stops at once, without saving)\n".encode(),
        )
        if self._distributed:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler tells every process

    def should_stop(self, step: int) -> bool:
        """Whether to save and stop after `step`; every process must ask at every step."""
        if self._distributed:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    @property
    def reason(self) -> str:
        return self.received or "SIGTERM (a preemption notice to one of the processes)"
