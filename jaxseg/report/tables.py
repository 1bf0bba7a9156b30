"""Metric sums: accumulated on device over steps, turned into records and a text table."""

import math

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


@jax.jit
def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


class MetricSums:
    """Sums metric dicts on device; folds into host int64/float64 before int32 overflow."""

    def __init__(self):
        self.device_sums, self.host_sums, self._pixels = None, None, 0

    def add(self, metrics, pixels: int):
        if self.device_sums is None:
            self.device_sums = metrics
        else:
            self.device_sums = _add(self.device_sums, metrics)
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
