"""Turning metric sums into records: metrics.jsonl lines and the final table."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.metrics import segmentation_metrics

# Fold device-side confusion counts into host int64 well before int32 overflows.
MAX_PIXELS_ON_DEVICE = 2**30


def summarize(sums: dict) -> dict:
    """Mean loss and segmentation metrics from summed {loss_sum, loss_weight, confusion}."""
    loss_weight = float(sums["loss_weight"])
    record = {"loss": float(sums["loss_sum"]) / loss_weight if loss_weight else float("nan")}
    record.update(segmentation_metrics(np.asarray(sums["confusion"], np.int64)))
    return record


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class MetricsLogger:
    """Appends one JSON object per record to <workdir>/metrics.jsonl (NaN written as null)."""

    def __init__(self, path: str, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def resume_at(self, step: int) -> None:
        """Moves records after `step` (from a run that stopped before its next checkpoint;
        the resumed run writes them again) to metrics.discarded.jsonl, so steps in
        metrics.jsonl never go backwards."""
        if not self.enabled or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [line.rstrip("\n") + "\n" for line in f if line.strip()]
        keep = [line for line in lines if _logged_step(line) <= step]
        if len(keep) == len(lines):
            return
        discarded = os.path.join(os.path.dirname(self.path), "metrics.discarded.jsonl")
        with open(discarded, "a") as f:
            f.writelines(line for line in lines if _logged_step(line) > step)
        partial = self.path + ".tmp"
        with open(partial, "w") as f:
            f.writelines(keep)
        os.replace(partial, self.path)  # atomic: an interruption leaves the old file whole

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        line = json.dumps({k: _json_safe(v) for k, v in record.items()})
        with open(self.path, "a") as f:
            f.write(line + "\n")


def _logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; inf for a line cut short when a run was killed."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


def read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def format_table(results: dict[str, dict], class_names) -> str:
    """A text table: rows = metrics and per-class IoU, one column per split."""
    splits = list(results)
    rows = [
        ("loss", "loss"),
        ("pixel acc", "pixel_acc"),
        ("mean acc", "mean_acc"),
        ("mean IoU", "miou"),
        ("f.w. IoU", "fwiou"),
    ]
    name_width = max([len(n) for n, _ in rows] + [len(f"IoU {c}") for c in class_names])
    col = max(10, *(len(s) for s in splits))

    def cell(value):
        return f"{'n/a' if value is None or math.isnan(value) else f'{value:.4f}':>{col}}"

    lines = [f"{'':<{name_width}}  " + "  ".join(f"{s:>{col}}" for s in splits)]
    lines.append("-" * len(lines[0]))
    for label, key in rows:
        lines.append(f"{label:<{name_width}}  " + "  ".join(cell(results[s][key]) for s in splits))
    for index, name in enumerate(class_names):
        label = f"IoU {name}"
        values = [results[s]["iou_per_class"][index] for s in splits]
        lines.append(f"{label:<{name_width}}  " + "  ".join(cell(v) for v in values))
    return "\n".join(lines)


class MetricSums:
    """Sums metric dicts on device; folds into host int64/float64 before int32 overflow."""

    def __init__(self):
        self._add = jax.jit(lambda a, b: jax.tree.map(jnp.add, a, b))
        self.device_sums, self.host_sums, self._pixels = None, None, 0

    def add(self, metrics, pixels: int):
        if self.device_sums is None:
            self.device_sums = metrics
        else:
            self.device_sums = self._add(self.device_sums, metrics)
        self._pixels += pixels
        if self._pixels >= MAX_PIXELS_ON_DEVICE:
            self._fold()

    def _fold(self):
        if self.device_sums is None:
            return
        fetched = jax.tree.map(
            lambda x: np.asarray(x, np.float64 if x.dtype.kind == "f" else np.int64),
            jax.device_get(self.device_sums),
        )
        self.host_sums = (
            fetched if self.host_sums is None else jax.tree.map(np.add, self.host_sums, fetched)
        )
        self.device_sums, self._pixels = None, 0

    def result(self) -> dict:
        self._fold()
        sums, self.host_sums = self.host_sums, None
        return sums
