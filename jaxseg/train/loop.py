"""train_and_evaluate(config, workdir): the training program as a library call."""

import contextlib
import os
import time

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxseg.errors import RunError
from jaxseg.train.checkpoint import Checkpointer
from jaxseg.train.evaluation import evaluate, report, write_curves
from jaxseg.train.initialise import load_initialisation
from jaxseg.train.reporting import MetricSums, format_table, summarize
from jaxseg.train.setup import CHECKPOINTS, Run, build_run
from jaxseg.train.state import count_params
from jaxseg.train.step import variables_of
from jaxseg.train.writer import RunWriter


def train_and_evaluate(config, workdir: str) -> dict[str, dict]:
    """Trains `config` in `workdir`, resuming from its checkpoints if any.

    Returns:
      {split: metrics} of the final evaluation.
    """
    run = build_run(config)
    eval_splits = [config.data.eval_split] + [config.data.test_split] * bool(config.data.test_split)
    for split in eval_splits:
        run.source(split, "data.eval_split/test_split")
    # Weights to start from are read and checked before anything is written.
    initialisation = None if has_checkpoints(workdir) else load_initialisation(config)
    workdir = prepare_workdir(workdir)
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINTS), config.train.keep_checkpoints)
    state, batches, start, init_report = resume_or_start(run, checkpointer, workdir, initialisation)
    writer = RunWriter(workdir, enabled=jax.process_index() == 0)
    writer.resume_at(start)
    writer.json("config.json", config.to_dict())
    if initialisation is not None:
        writer.json("init_report.json", init_report)
    run_record = {**run.record(), "init": init_report and _short(init_report)}
    progress = Progress(writer, start, config.train.num_steps, config.data.batch_size)
    sums = MetricSums()
    for step in range(start + 1, config.train.num_steps + 1):
        batch = next(batches)
        state, metrics = run.train_step(state, run.layout.put_batch(batch), run.step_rng)
        sums.add(run.layout.global_metrics(metrics), pixels_in(batch))
        if progress.due(step, config.train.log_every):
            progress.log(step, summarize(sums.result()))  # waits for the device: once per log
        if progress.due(step, config.train.eval_every, at_end=False):
            with progress.paused():  # evaluation time is not training time
                record, _ = evaluate(run, variables_of(state), config.data.eval_split)
                saveable = variables_of(run.layout.saveable(state))
                report(writer, run, saveable, config.data.eval_split, step, record)
                progress.bar.write(
                    f"step {step}: {config.data.eval_split} mIoU {record['miou']:.4f}"
                )
        if progress.due(step, config.train.checkpoint_every):
            checkpointer.save(step, run.layout.saveable(state), batches.get_state(), run_record)
    progress.close()
    checkpointer.wait()
    results = final_evaluation(run, state, eval_splits, writer, workdir)
    checkpointer.close()
    writer.close()
    logging.flush()
    return results


def pixels_in(batch) -> int:
    """Pixels of the global batch (a bound for the on-device int32 confusion counts)."""
    return int(np.prod(batch["mask"].shape)) * jax.process_count()


class Progress:
    """The progress bar and the training records: loss and images/s per log interval."""

    def __init__(self, writer: RunWriter, start: int, num_steps: int, batch_size: int):
        self.writer, self.num_steps, self.batch_size = writer, num_steps, batch_size
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
        steps = step - self.bar.n
        rate = steps * self.batch_size / (time.perf_counter() - self.interval_start)
        self.writer.scalars({"step": step, "split": "train", **record, "images_per_second": rate})
        # The bar moves when the device has finished the steps, not when they are queued.
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{rate:.1f}")
        self.bar.update(steps)
        self.interval_start = time.perf_counter()

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside does not count in the images/s of the interval."""
        start = time.perf_counter()
        yield
        self.interval_start += time.perf_counter() - start

    def close(self) -> None:
        self.bar.close()


def resume_or_start(run: Run, checkpointer: Checkpointer, workdir: str, initialisation=None):
    """(state, batch iterator, step, init report): from the latest checkpoint, or fresh at
    step 0 (from `initialisation` if given)."""
    start = checkpointer.latest_step() or 0
    if not start:
        if initialisation is None:
            return run.init_state(), run.train_batches(), 0, None
        state, report = run.init_state(initialisation)
        print(f"Initialised from {describe_initialisation(report)}")
        return state, run.train_batches(), 0, report
    meta = checkpointer.meta(start)
    explanation = _model_changes(meta, run.config, workdir)
    state, data_state = checkpointer.restore(
        start, run.layout.restore_target(run.abstract_state), explanation
    )
    print(f"Resuming from the checkpoint at step {start} in {checkpointer.directory}")
    if run.config.init.encoder_weights or run.config.init.from_run:
        print("  (init.encoder_weights/init.from_run apply to a fresh run: the checkpoint wins)")
    return (
        run.layout.place_restored(state),
        run.train_batches(data_state),
        start,
        (meta or {}).get("init"),
    )


def has_checkpoints(workdir: str) -> bool:
    """Whether `workdir` holds a finished checkpoint (a step directory; orbax writes into a
    temporary name first). Read from the file system: no collective, any process may ask."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINTS)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def describe_initialisation(report: dict) -> str:
    if "encoder_weights" in report:
        weights = report["encoder_weights"]
        return f"encoder weights {weights['path']} (sha256 {weights['sha256'][:16]}...)"
    source = report["from_run"]
    return (
        f"run {source['workdir']} step {source['step']}: {len(report['copied'])} variables"
        f" copied, {len(report['initialised'])} left at their initialisation,"
        f" {len(report['mismatched'])} of another shape (init_report.json lists them)"
    )


def _short(report: dict) -> dict:
    """The initialisation's source, as every checkpoint records it."""
    return {key: report[key] for key in ("encoder_weights", "from_run") if key in report}


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


def _model_changes(meta: dict | None, config, workdir: str) -> str:
    """'model.x: old -> new' for model settings that differ from the checkpoint's config."""
    if meta is None:  # checkpoints written before they carried their config
        path = os.path.join(workdir, "config.json")
        if not os.path.exists(path):
            return ""
        import json

        with open(path) as f:
            meta = {"config": json.load(f)}
    saved = meta["config"].get("model", {})
    current = config.model.to_dict()
    changes = [
        f"model.{key}: {saved.get(key, 'unset')} -> {_plain(current.get(key, 'unset'))}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != _plain(current.get(key))
    ]
    return "Changed since the checkpoint: " + ", ".join(changes) if changes else ""


def _plain(value):
    """Tuples as lists, as they come back from JSON."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
