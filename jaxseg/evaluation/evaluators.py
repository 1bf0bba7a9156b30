"""Evaluators: scores beyond the confusion-matrix metrics, named in `config.evaluators`.

An evaluator is built as `constructor(info)` (the dataset's SegmentationInfo) and fed one
image at a time by evaluate.py: `add(probabilities (H, W, C) float32, labels (H, W) int)`,
then `result() -> {name: number}`. With several processes each sees its share of the
images; evaluators whose scores do not add up over shares are computed per process and
reported by process 0 (the shipped one is for single-host evaluation of small stacks).
"""

from typing import Protocol

import numpy as np

from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import ConfigError
from jaxseg.evaluation.membrane_scores import isbi_scores
from jaxseg.registry import Registry

EVALUATORS = Registry("evaluator")


class Evaluator(Protocol):
    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> None: ...

    def result(self) -> dict: ...


def register_evaluator(name: str):
    """Decorator: a `(info) -> Evaluator` constructor (a class) under `name`."""
    return EVALUATORS.register(name)


def evaluator_names() -> list[str]:
    return EVALUATORS.names()


def build_evaluators(names, info: SegmentationInfo) -> dict[str, Evaluator]:
    """{name: evaluator} for `config.evaluators`; unknown names list the available ones."""
    return {name: EVALUATORS.get(name)(info) for name in names}


@register_evaluator("isbi2012")
class ISBI2012:
    """The ISBI 2012 EM segmentation challenge's foreground-restricted V_Rand and V_Info
    (jaxseg/evaluation/membrane_scores.py), maximised over thresholds of the cell
    probability. Needs a class named "cell" (the membranes' complement)."""

    def __init__(self, info: SegmentationInfo):
        if "cell" not in info.class_names:
            raise ConfigError(
                f"evaluator 'isbi2012' needs a class named 'cell'; the dataset's classes are"
                f" {info.class_names}"
            )
        self.cell = info.class_names.index("cell")
        self.cell_probabilities, self.true_cells = [], []

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        self.cell_probabilities.append(probabilities[..., self.cell])
        self.true_cells.append(labels == self.cell)

    def result(self) -> dict:
        if not self.true_cells:
            return {}
        return isbi_scores(np.stack(self.cell_probabilities), np.stack(self.true_cells))


@register_evaluator("segnet")
class SegNetScores:
    """SegNet's CamVid scores (Badrinarayanan et al., TPAMI 2017, Table 1), as SegNet-Tutorial's
    Scripts/compute_test_results.m computes them: one confusion matrix summed over the
    split, ignore-label pixels dropped; global accuracy = correct / labelled pixels; class
    average accuracy and mIoU = sums over all classes divided by the number of classes, so a
    class absent from the labels counts 0 (jaxseg's `mean_acc` and `miou` leave such a class
    out; with every class present, as on CamVid's test split, the three numbers agree)."""

    def __init__(self, info: SegmentationInfo):
        self.num_classes, self.ignore_label = info.num_classes, info.ignore_label
        self.confusion = np.zeros((self.num_classes, self.num_classes), np.int64)

    def add(self, probabilities: np.ndarray, labels: np.ndarray) -> None:
        predicted = probabilities.argmax(-1).reshape(-1)
        labels = labels.reshape(-1)
        valid = (labels != self.ignore_label) & (labels >= 0) & (labels < self.num_classes)
        index = labels[valid] * self.num_classes + predicted[valid]
        self.confusion += np.bincount(index, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def result(self) -> dict:
        confusion = self.confusion.astype(np.float64)
        correct = np.diag(confusion)
        labelled, predicted = confusion.sum(1), confusion.sum(0)
        union = labelled + predicted - correct
        recall = np.divide(correct, labelled, out=np.zeros_like(correct), where=labelled > 0)
        iou = np.divide(correct, union, out=np.zeros_like(correct), where=union > 0)
        total = labelled.sum()
        return {
            "global_acc": float(correct.sum() / total) if total else float("nan"),
            "class_avg_acc": float(recall.sum() / self.num_classes),
            "miou": float(iou.sum() / self.num_classes),
            "iou_per_class": [float(v) for v in iou],
        }
