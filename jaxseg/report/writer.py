"""One writer for everything a run reports, in training and in evaluation alike.

- `metrics.jsonl`: one JSON object per record (NaN written as null);
- `tensorboard/`: the same scalars per split, and the pictures, as TensorBoard
  events (written by tensorboardX, without TensorFlow): `tensorboard --logdir runs`;
- pictures (PNG) and JSON files at paths relative to the run.

Only process 0 writes (`enabled`); every process must still compute what is
written (a forward pass on process 0 alone would deadlock a multi-host run).
On resume, records logged after the checkpoint by the stopped run are moved
out of metrics.jsonl (to metrics.discarded.jsonl) and purged from the
TensorBoard events, so steps never go backwards. Files are written whole or not
at all (jaxseg.atomic); opening the writer removes what killed processes left.
"""

import io
import json
import math
import os

import numpy as np

from jaxseg.atomic import sweep_stale_temporaries, write_atomically
from jaxseg.report import tensorboard

SCALARS = ("loss", "pixel_acc", "mean_acc", "miou", "fwiou", "images_per_second")


def json_safe(value):
    """NaN and inf as null (valid JSON), numpy scalars as Python numbers, recursively."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunWriter:
    """Writes a run's records, pictures and files under `workdir` (when `enabled`)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.workdir = workdir
        self.enabled = enabled
        self.metrics_path = os.path.join(workdir, "metrics.jsonl")
        self.tensorboard_dir = os.path.join(workdir, "tensorboard")
        self._events = None
        if enabled and os.path.isdir(workdir):
            # What a killed process left half-written (orbax and TensorBoard keep their own).
            sweep_stale_temporaries(workdir, skip=("checkpoints", "tensorboard"))

    @property
    def events(self):
        if self._events is None:
            from tensorboardX import SummaryWriter

            self._events = SummaryWriter(self.tensorboard_dir, flush_secs=30)
        return self._events

    def resume_at(self, step: int) -> None:
        """Drops what a stopped run logged after `step` (see module docstring)."""
        if not self.enabled:
            return
        if os.path.isdir(self.tensorboard_dir):
            tensorboard.purge_after(self.tensorboard_dir, step)
        if not os.path.exists(self.metrics_path):
            return
        with open(self.metrics_path) as f:
            lines = [line.rstrip("\n") + "\n" for line in f if line.strip()]
        keep = [line for line in lines if _logged_step(line) <= step]
        if len(keep) == len(lines):
            return
        discarded = os.path.join(self.workdir, "metrics.discarded.jsonl")
        with open(discarded, "a") as f:
            f.writelines(line for line in lines if _logged_step(line) > step)
        write_atomically(self.metrics_path, "".join(keep).encode())

    def scalars(self, record: dict) -> None:
        """Appends `record` (with "step" and "split") to metrics.jsonl and TensorBoard."""
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(json_safe(record)) + "\n")
        for key in SCALARS:
            value = record.get(key)
            if value is not None and math.isfinite(value):
                self.events.add_scalar(f"{record['split']}/{key}", value, record["step"])

    def picture(self, relative_path: str, png: bytes, step: int | None = None, tag: str = ""):
        """Writes a PNG under the run, and to TensorBoard as image `tag` at `step` if given."""
        if not self.enabled:
            return
        write_atomically(os.path.join(self.workdir, relative_path), png)
        if tag:
            from PIL import Image

            image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self.events.add_image(tag, image, step, dataformats="HWC")

    def json(self, relative_path: str, content: dict) -> None:
        if self.enabled:
            text = json.dumps(json_safe(content), indent=2, allow_nan=False)
            write_atomically(os.path.join(self.workdir, relative_path), text.encode())

    def flush(self) -> None:
        if self._events is not None:
            self._events.flush()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line cut short when a run was killed."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def logged_train_seconds(writer: RunWriter) -> float:
    """The training seconds metrics.jsonl holds: the sum of the train records' intervals
    (records of a stopped run past its checkpoint were dropped by `resume_at`)."""
    records = read_metrics(writer.metrics_path) if writer.enabled else []
    return sum(r.get("seconds") or 0.0 for r in records if r.get("split") == "train")


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
