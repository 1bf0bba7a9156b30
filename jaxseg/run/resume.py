"""Where a training run starts: fresh, or from its newest intact checkpoint, saying what
changed since that checkpoint was saved.

A changed model or optimizer that no longer fits the checkpoint is refused
(jaxseg/run/checkpoint.py names the settings). Other changes are allowed and
said: a new `train.num_steps` lays the learning-rate schedule over the new
length; a new `data.batch_size` (or number of workers) continues the example
stream at the first example the stopped run had not trained on.
"""

import json
import os

from jaxseg.preemption import stop_if_interrupted
from jaxseg.run.built import Run
from jaxseg.run.checkpoint import Checkpointer
from jaxseg.run.initialise import SOURCES

# Settings whose change can make a checkpoint unusable: a mismatch error lists their changes.
STRUCTURAL_GROUPS = ("model", "optim")


def resume_or_start(run: Run, checkpointer: Checkpointer, workdir: str, initialisation=None):
    """(state, batch iterator, step, init report): from the newest intact checkpoint, or
    fresh at step 0 (from `initialisation` if given)."""
    stop_if_interrupted()  # a safe point for a Ctrl-C during start-up (preemption.py)
    restored = checkpointer.restore_newest(
        run.layout.restore_target(run.abstract_state),
        lambda meta: changed_settings(saved_config(meta, workdir), run.config),
    )
    if restored is None:
        state, report = fresh_state(run, initialisation)
        start, data_state = 0, None
    else:
        state, start, data_state, report = resumed_state(
            run, restored, checkpointer.directory, workdir
        )
    return state, run.train_batches(data_state), start, report


def resumed_state(run: Run, restored, directory: str, workdir: str):
    """(state, step, data stream state, init report) of a checkpoint restored from
    `directory`, saying what changed since it was saved."""
    for note in restored.set_aside:
        print(note)
    start = restored.step
    newest_intact = ", the newest intact one" if restored.set_aside else ""
    print(f"Resuming from the checkpoint at step {start} in {directory}{newest_intact}")
    given = [f"init.{key}" for key in SOURCES if run.config.init[key]]
    if given:
        print(f"  ({'/'.join(given)} applies to a fresh run: the checkpoint wins)")
    saved = saved_config(restored.meta, workdir)
    for notice in resume_notices(saved, run.config, start, restored.data_state):
        print(f"  {notice}")
    state = run.layout.place_restored(restored.state)
    data_state = stream_state(restored.data_state, saved, run.config, start)
    return state, start, data_state, (restored.meta or {}).get("init")


def fresh_state(run: Run, initialisation=None):
    """(state, init report): a fresh state, from `initialisation` if given (report None if
    not)."""
    if initialisation is None:
        return run.init_state(), None
    state, report = run.init_state(initialisation)
    print(f"Initialised from {describe_initialisation(report)}")
    return state, report


def saved_config(meta: dict | None, workdir: str) -> dict | None:
    """The config a checkpoint was saved with (older checkpoints: the workdir's config.json)."""
    if meta is not None:
        return meta["config"]
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def changed_settings(saved: dict | None, config, groups=STRUCTURAL_GROUPS) -> str:
    """'Changed since the checkpoint: model.x: old -> new, ...' over `groups` ("" if none)."""
    if saved is None:
        return ""
    changes = []
    for group in groups:
        before, now = saved.get(group, {}), _plain(config[group].to_dict())
        changes += [
            f"{group}.{key}: {before.get(key, 'unset')} -> {now.get(key, 'unset')}"
            for key in sorted(set(before) | set(now))
            if before.get(key) != now.get(key)
        ]
    return "Changed since the checkpoint: " + ", ".join(changes) if changes else ""


def _setting(saved: dict | None, group: str, key: str):
    return (saved or {}).get(group, {}).get(key)


def resume_notices(saved: dict | None, config, start: int, data_state: dict) -> list[str]:
    """What a resumed run does differently from the stopped one, in words."""
    notices = []
    steps_before = _setting(saved, "train", "num_steps")
    if steps_before is not None and steps_before != config.train.num_steps:
        schedule = config.optim.schedule
        effect = (
            "the constant learning rate is not affected"
            if schedule == "constant"
            else f"the {schedule} learning-rate schedule now decays over"
            f" {config.train.num_steps} steps, so from step {start + 1} on the rate differs"
            " from the stopped run's"
        )
        notices.append(
            f"train.num_steps changed since the checkpoint: {steps_before} ->"
            f" {config.train.num_steps}; {effect}"
        )
    batch_before = _setting(saved, "data", "batch_size")
    if batch_before is not None and batch_before != config.data.batch_size:
        position = stream_state(data_state, saved, config, start)["position"]
        notices.append(
            f"data.batch_size changed since the checkpoint: {batch_before} ->"
            f" {config.data.batch_size}; the data stream continues at example {position},"
            " the first one the stopped run had not trained on"
        )
    return notices


def stream_state(data_state: dict, saved: dict | None, config, start: int) -> dict:
    """The input-pipeline state to resume from: {"position": next example}. Checkpoints
    written before jaxseg saved the position hold grain's iterator state; their position
    is the steps times the batch size they were saved with."""
    if "position" in data_state:
        return data_state
    batch_size = _setting(saved, "data", "batch_size") or config.data.batch_size
    return {"position": start * batch_size}


def describe_initialisation(report: dict) -> str:
    counts = (
        f"{len(report['copied'])} variables copied, {len(report['initialised'])} left at their"
        f" initialisation, {len(report['mismatched'])} of another shape (init_report.json lists"
        " them)"
    )
    if "from_run" in report:
        source = report["from_run"]
        return f"run {source['workdir']} step {source['step']}: {counts}"
    kind = "encoder_weights" if "encoder_weights" in report else "model_weights"
    weights = report[kind]
    what = "encoder weights" if kind == "encoder_weights" else f"{weights['layout']} weights"
    return f"{what} {weights['path']} (sha256 {weights['sha256'][:16]}...): {counts}"


def _plain(value):
    """Tuples as lists, as they come back from JSON."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
