"""train_and_evaluate(config, workdir): the training program as a library call.

Around the loop, each in its own module: the workdir lock (workdir.py), where the run
starts (jaxseg/run/resume.py), stopping on SIGTERM/SIGINT with a checkpoint
(preemption.py), and stopping on a loss or state that is not finite (divergence.py).
"""

import contextlib
import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxseg.checks import data_warnings
from jaxseg.errors import Interrupted, RunError
from jaxseg.evaluation.evaluate import evaluate, report, write_curves
from jaxseg.preemption import StopSignals
from jaxseg.report.tables import MetricSums, format_table, summarize
from jaxseg.report.writer import RunWriter, logged_train_seconds
from jaxseg.run.build import CHECKPOINTS, build_run
from jaxseg.run.built import Run
from jaxseg.run.checkpoint import Checkpointer
from jaxseg.run.initialise import SOURCES, load_initialisation
from jaxseg.run.resume import resume_or_start
from jaxseg.run.state import count_params
from jaxseg.run.step import variables_of
from jaxseg.train.divergence import DivergenceGuard
from jaxseg.train.workdir import lock_for_training


def train_and_evaluate(config, workdir: str) -> dict[str, dict]:
    """Trains `config` in `workdir`, resuming from its checkpoints if any.

    Returns:
      {split: metrics} of the final evaluation.

    Raises:
      Interrupted: SIGTERM or SIGINT stopped training after saving a checkpoint.
      DivergedError: the loss or state stopped being finite (nothing non-finite is saved).
      WorkdirLockedError: another training run uses `workdir`.
    """
    StopSignals.training_starts()  # a Ctrl-C from here to the loop: nothing new to save
    run = build_run(config)
    eval_splits = [config.data.eval_split] + [config.data.test_split] * bool(config.data.test_split)
    for split in eval_splits:
        run.source(split, "data.eval_split/test_split")
    warnings = data_warnings(config, run.sources, run.info)
    # Weights to start from are read and checked before anything is written.
    initialisation = None if has_checkpoints(workdir) else load_initialisation(config, run.model)
    workdir = prepare_workdir(workdir)
    checkpoints = os.path.join(workdir, CHECKPOINTS)
    with (
        lock_for_training(workdir),
        contextlib.closing(
            Checkpointer(checkpoints, config.train.keep_checkpoints)
        ) as checkpointer,
    ):
        state, batches, start, init_report = resume_or_start(
            run, checkpointer, workdir, initialisation
        )
        writer = RunWriter(workdir, enabled=jax.process_index() == 0)
        writer.resume_at(start)
        writer.json("config.json", config.to_dict() | ({"warnings": warnings} if warnings else {}))
        if initialisation is not None:
            writer.json("init_report.json", init_report)
        run_record = {**run.record(), "init": init_report and _short(init_report)}
        state = train(run, state, batches, start, checkpointer, writer, run_record)
        checkpointer.wait()
        results = final_evaluation(run, state, eval_splits, writer, workdir)
        writer.close()
    logging.flush()
    return results


def train(run: Run, state, batches, start: int, checkpointer, writer, run_record: dict):
    """Steps `start + 1`..`train.num_steps`, logging, evaluating and saving on schedule.
    Returns the final state."""
    config = run.config
    train_step = run.train_step  # skips non-finite updates with train.skip_nonfinite_steps
    progress = Progress(
        writer, start, config.train.num_steps, config.data.batch_size, logged_train_seconds(writer)
    )
    guard = DivergenceGuard(checkpointer, config, start)
    sums = MetricSums()
    # The bar is closed (its line ended) however the loop ends, so that what the tools print
    # after a Ctrl-C or an error starts on a line of its own.
    with contextlib.closing(progress), StopSignals() as signals:
        for step in range(start + 1, config.train.num_steps + 1):
            batch = next(batches)
            with progress.compiling(first=step == start + 1):
                state, metrics = train_step(state, run.layout.put_batch(batch), run.step_rng)
            step_sums = run.layout.global_metrics(metrics)
            sums.add(step_sums, pixels_in(batch))
            guard.check_resumed_step(step, step_sums)  # a restored state that fails at once
            checkpointer.check_for_errors()  # a failed asynchronous save stops the run now
            if progress.due(step, config.train.log_every):
                record = train_record(sums.result())  # waits for the device: once per log
                progress.log(step, record)
                guard.check_loss(step, record)
            if progress.due(step, config.train.eval_every, at_end=False):
                with progress.paused():  # evaluation time is not training time
                    record, _ = evaluate(run, variables_of(state), config.data.eval_split)
                    saveable = variables_of(run.layout.saveable(state))
                    report(writer, run, saveable, config.data.eval_split, step, record)
                    progress.bar.write(
                        f"step {step}: {config.data.eval_split} mIoU {record['miou']:.4f}"
                    )
            stopping = signals.should_stop(step)
            if stopping or progress.due(step, config.train.checkpoint_every):
                saveable = run.layout.saveable(state)
                guard.check_state(step, saveable)  # never save a state that is not finite
                checkpointer.save(step, saveable, batches.get_state(), run_record)
            if stopping:
                if step > progress.logged_step:  # the steps since the last log count too
                    progress.log(step, train_record(sums.result()))
                checkpointer.wait()
                progress.close()
                raise Interrupted(
                    f"{signals.reason} at step {step}: saved a checkpoint at step {step} (model,"
                    f" optimizer and data stream) in {checkpointer.directory}. Run the same"
                    " command again to resume from it."
                )
    progress.close()
    return state


def train_record(totals: dict) -> dict:
    """The log record of summed training metrics; with skipping on, the steps skipped."""
    record = summarize(totals)
    if "skipped" in totals:
        record["skipped_steps"] = int(totals["skipped"])
    return record


def pixels_in(batch) -> int:
    """Pixels of the global batch (a bound for the on-device int32 confusion counts)."""
    return int(np.prod(batch["mask"].shape)) * jax.process_count()


class Progress:
    """The progress bar and the training records: loss and images/s per log interval, the
    interval's seconds and `train_seconds`, the training time of the run so far (over its
    resumptions; evaluation left out, compilation counted)."""

    def __init__(
        self, writer: RunWriter, start: int, num_steps: int, batch_size: int, seconds: float = 0.0
    ):
        self.writer, self.num_steps, self.batch_size = writer, num_steps, batch_size
        self.train_seconds = seconds
        # The last step logged. Kept here, not read from the bar: a disabled bar (every process
        # but the first) does not count.
        self.logged_step = start
        self.bar = tqdm(
            total=num_steps,
            initial=start,
            desc="train",
            disable=not writer.enabled,
            dynamic_ncols=True,
        )
        self.interval_start = time.perf_counter()

    def due(self, step: int, every: int, at_end: bool = True) -> bool:
        """Whether something done every `every` steps (0: never) is due at `step`; with
        `at_end`, also at the last step."""
        if step == self.num_steps:
            return at_end
        return bool(every) and step % every == 0

    def log(self, step: int, record: dict) -> None:
        steps = step - self.logged_step
        self.logged_step = step
        seconds = time.perf_counter() - self.interval_start
        self.train_seconds += seconds
        self.writer.scalars(
            {
                "step": step,
                "split": "train",
                **record,
                "images_per_second": steps * self.batch_size / seconds,
                "seconds": seconds,
                "train_seconds": self.train_seconds,
            }
        )
        rate = steps * self.batch_size / seconds
        # The bar moves when the device has finished the steps, not when they are queued.
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{rate:.1f}")
        self.bar.update(steps)
        self.interval_start = time.perf_counter()

    @contextlib.contextmanager
    def compiling(self, first: bool):
        """Around the call of the first step, which compiles it (up to a minute for the larger
        models, the bar at 0): says so, then how long it took."""
        if not first or not self.writer.enabled:
            yield
            return
        self.bar.write("Compiling the training step (the first step waits for it)...")
        start = time.perf_counter()
        yield
        self.bar.write(f"Compiled the training step in {time.perf_counter() - start:.1f} s")

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside does not count in the images/s of the interval."""
        start = time.perf_counter()
        yield
        self.interval_start += time.perf_counter() - start

    def close(self) -> None:
        self.bar.close()


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a finished checkpoint (a step directory; orbax writes into a
    temporary name first). Read from the file system: no collective, any process may ask."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def _short(report: dict) -> dict:
    """The initialisation's source, as every checkpoint records it."""
    return {key: report[key] for key in SOURCES if key in report}


def final_evaluation(run: Run, state, splits, writer: RunWriter, workdir: str) -> dict:
    """Evaluates each split, writes its record, grid and confusion matrix, the curves, and
    final_metrics.json; prints the table. Returns {split: metrics}."""
    step = int(jax.device_get(run.layout.saveable(state).step))
    results = {}
    for split in splits:
        results[split], confusion = evaluate(run, variables_of(state), split)
        report(
            writer,
            run,
            variables_of(run.layout.saveable(state)),
            split,
            step,
            results[split],
            confusion,
        )
    write_curves(writer, run.config.data.eval_split, os.path.basename(workdir))
    writer.json("final_metrics.json", {"step": step, **results})
    if writer.enabled:
        print(
            f"\nModel {run.config.model.name}:"
            f" {count_params(run.abstract_state.params):,} parameters;"
            f" {run.layout.num_devices} device(s), {jax.process_count()} process(es)"
        )
        print(f"Final metrics at step {step} ({workdir}):")
        print(format_table(results, run.info.class_names))
    return results


def prepare_workdir(workdir: str) -> str:
    """Creates `workdir` if needed; raises RunError if it cannot be written."""
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunError(f"workdir {workdir} exists and is not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")  # processes may share it
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise RunError(f"workdir {workdir} is not writable: {e.strerror or e}") from e
    return workdir
