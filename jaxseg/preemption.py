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

Outside the loop a tool that calls `watch_interrupts_from_start` before its
imports (jaxseg/cli.py does) stops on one Ctrl-C with exit status 130 and a
line saying what was saved, never with a KeyboardInterrupt raised at an
arbitrary point of a run's start-up: there, from its imports to its first step,
a first Ctrl-C is only noted (and said), and the run stops at the next safe
point: when the tool starts (`arm_interrupts`), before restoring or
initialising (`stop_if_interrupted`) and before the first step. Nothing new
needs saving then, and nothing is half-written (a lock file, a dataset). Python
raised the KeyboardInterrupt anywhere before, once inside a garbage-collection
callback of JAX that swallowed it and trained on. A second Ctrl-C raises at
once. Other tools, and a run past its loop (the final evaluation: its last
checkpoint is saved), stop at once on the first.

This module imports no JAX at the top: tools install its handler before their
heavy imports.
"""

import os
import signal
import sys
import threading

# Where SIGINTs outside the loop's handler find the tool; read by `describe_interrupt`.
#   phase: "importing" -> "running" (cli.run) -> "starting" (a training run's start-up)
#          -> "trained" (its loop ended); pending: Ctrl-Cs noted, not yet acted on.
_early = {"phase": "importing", "pending": 0, "second": False}


def watch_interrupts_from_start() -> None:
    """Installs the start-up SIGINT handler in place of Python's default (not outside the
    main thread, nor over another handler)."""
    if threading.current_thread() is not threading.main_thread():
        return
    # A blocked mask is inherited from whoever started the tool (a process that was itself
    # creating grain workers, say): the signals it stops on would never arrive.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_early_interrupt)


def arm_interrupts() -> None:
    """The tool runs: stops now (KeyboardInterrupt) if a Ctrl-C came while it imported."""
    _early["phase"] = "running"
    stop_if_interrupted()


def stop_if_interrupted() -> None:
    """A safe point: raises KeyboardInterrupt if a Ctrl-C is noted."""
    if _early["pending"]:
        raise KeyboardInterrupt


def _on_early_interrupt(signum, frame) -> None:
    del signum, frame
    _early["pending"] += 1
    if _early["phase"] in ("importing", "starting") and _early["pending"] == 1:
        # os.write: print() is not safe in a handler that may interrupt another print.
        os.write(
            sys.stderr.fileno(),
            b"\nSIGINT: stopping at the next safe point (Ctrl-C again stops at once)\n",
        )
        return
    raise KeyboardInterrupt


def describe_interrupt() -> str:
    """One line on what a KeyboardInterrupt that stopped the tool left behind."""
    if _early["second"]:
        return (
            "stopped at once (Ctrl-C twice), without saving that step; run the same command"
            " again to resume from the newest checkpoint"
        )
    if _early["phase"] == "trained":
        return (
            "stopped by Ctrl-C after training (its last checkpoint is saved); the final"
            " evaluation was not finished: evaluate.py runs it"
        )
    if _early["phase"] == "starting":
        return "stopped by Ctrl-C before the first training step; there was nothing new to save"
    return "stopped by Ctrl-C"


class StopSignals:
    """Watches for SIGTERM and SIGINT while training; a context manager."""

    @staticmethod
    def training_starts() -> None:
        """A training run starts up: until its loop, a first Ctrl-C waits for a safe point."""
        _early["phase"] = "starting"

    def __init__(self):
        self.received: str | None = None  # the name of the first signal, in this process
        self._previous = {}
        self._distributed = False

    def __enter__(self) -> "StopSignals":
        import jax

        self._distributed = jax.process_count() > 1
        # JAX's preemption service owns SIGTERM when there are several processes.
        watched = (signal.SIGINT,) if self._distributed else (signal.SIGINT, signal.SIGTERM)
        for signum in watched:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        # A Ctrl-C during start-up: stop before the first step. Asked once this handler is
        # in place: one that came between the question and the handover would be lost.
        try:
            stop_if_interrupted()
        except KeyboardInterrupt:
            self.__exit__(KeyboardInterrupt, None, None)
            raise
        return self

    def __exit__(self, exc_type, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        if exc_type is None:
            _early["phase"] = "trained"

    def _on_signal(self, signum, frame) -> None:
        del frame
        name = signal.Signals(signum).name
        if self.received is not None and signum == signal.SIGINT:
            _early["second"] = True
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
            from jax.experimental import multihost_utils

            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None

    @property
    def reason(self) -> str:
        return self.received or "SIGTERM (a preemption notice to one of the processes)"
