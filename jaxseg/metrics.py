"""Confusion matrix on device, and the four FCN metrics computed from it.

Definitions (Long et al. 2015, with n_ij the pixels of class i predicted as
j, t_i = sum_j n_ij the pixels labelled i):
  pixel accuracy          sum_i n_ii / sum_i t_i
  mean accuracy           mean over classes with t_i > 0 of n_ii / t_i
  IoU of class i          n_ii / (t_i + sum_j n_ji - n_ii)
  mean IoU                mean of IoU over classes that occur in the labels
                          or in the predictions
  frequency-weighted IoU  sum_i t_i * IoU_i / sum_i t_i

Absent classes. A class that never occurs in the labels nor in the
predictions has no defined IoU: it is reported as NaN (null in JSON) and left
out of the mean IoU, rather than counted as 0 or 1. A class that occurs only
in the predictions has IoU 0 and counts. Mean accuracy averages over the
classes present in the labels. Pixels with the ignore label count nowhere.
"""

import jax.numpy as jnp
import numpy as np


def confusion_matrix(
    labels: jnp.ndarray, predictions: jnp.ndarray, num_classes: int, ignore_label: int = 255
) -> jnp.ndarray:
    """(num_classes, num_classes) int32 counts, rows = label, columns = prediction.

    Jit-able. Under `jax.jit` with batch-sharded inputs the sum runs over the
    global batch, i.e. across devices and hosts.
    """
    labels = labels.reshape(-1)
    predictions = predictions.reshape(-1)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    index = jnp.where(valid, labels * num_classes + predictions, 0)
    counts = jnp.zeros(num_classes * num_classes, jnp.int32).at[index].add(valid.astype(jnp.int32))
    return counts.reshape(num_classes, num_classes)


def segmentation_metrics(confusion) -> dict:
    """Pixel acc, mean acc, mIoU, f.w. IoU and per-class IoU/accuracy from a confusion matrix.

    Computed on the host in float64 from the summed counts. Per-class lists
    hold NaN for undefined entries (see module docstring).
    """
    confusion = np.asarray(confusion, np.float64)
    true_positives = np.diag(confusion)
    label_counts = confusion.sum(axis=1)
    predicted_counts = confusion.sum(axis=0)
    union = label_counts + predicted_counts - true_positives
    total = label_counts.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positives / union, np.nan)
        class_acc = np.where(label_counts > 0, true_positives / label_counts, np.nan)
    present = union > 0
    return {
        "pixel_acc": float(true_positives.sum() / total) if total else float("nan"),
        "mean_acc": float(np.nanmean(class_acc)) if (label_counts > 0).any() else float("nan"),
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "fwiou": float(np.nansum(label_counts * np.nan_to_num(iou)) / total)
        if total
        else float("nan"),
        "iou_per_class": [float(v) for v in iou],
        "acc_per_class": [float(v) for v in class_acc],
    }
