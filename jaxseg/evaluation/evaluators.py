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
