"""The "segnet" evaluator against SegNet-Tutorial's Scripts/compute_test_results.m, re-done
in numpy the way the MATLAB script does it (per-class masks, one loop per pair of classes)."""

import numpy as np
import pytest

from jaxseg.data.info import SegmentationInfo
from jaxseg.evaluation.evaluators import build_evaluators


def matlab_scores(predictions, annotations, num_classes, void):
    """compute_test_results.m: classes 1..n after +1, void set to 0 in both maps."""
    cf = np.zeros((num_classes, num_classes))
    correct = total = 0
    for pred, annot in zip(predictions, annotations):
        pred, annot = pred.astype(int) + 1, annot.astype(int) + 1
        ignore = annot == void + 1
        pred[ignore] = 0
        annot[ignore] = 0
        total += (annot > 0).sum()
        for j in range(1, num_classes + 1):
            for k in range(1, num_classes + 1):
                cf[j - 1, k - 1] += ((annot == j) & (pred == k)).sum()
            correct += ((annot == j) & (pred == j)).sum()
    conf = np.zeros_like(cf)
    iou = np.zeros(num_classes)
    for i in range(num_classes):
        if cf[i].sum() > 0:
            conf[i] = cf[i] / cf[i].sum()
            iou[i] = cf[i, i] / (cf[i].sum() + cf[:, i].sum() - cf[i, i])
    return correct / total, np.trace(conf) / num_classes, iou.sum() / num_classes, iou


@pytest.mark.parametrize("absent_class", [None, 4])
def test_segnet_scores_equal_the_matlab_script(absent_class):
    """Random predictions over 3 images with void pixels; with a class absent from the
    labels, SegNet counts it as 0 in the class average and the mIoU (jaxseg's own metrics
    leave it out, so the two differ there, as documented)."""
    num_classes, void = 6, 6
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, num_classes + 1, (9, 11)) for _ in range(3)]
    predictions = [rng.integers(0, num_classes, (9, 11)) for _ in range(3)]
    if absent_class is not None:
        labels = [np.where(m == absent_class, void, m) for m in labels]
    info = SegmentationInfo(class_names=tuple("abcdef"), ignore_label=void)
    scores = build_evaluators(["segnet"], info)["segnet"]
    for label, predicted in zip(labels, predictions):
        probabilities = np.eye(num_classes, dtype=np.float32)[predicted] * 0.5 + 0.1
        scores.add(probabilities, label)
    result = scores.result()
    global_acc, class_avg, miou, iou = matlab_scores(predictions, labels, num_classes, void)
    assert result["global_acc"] == pytest.approx(global_acc, abs=1e-12)
    assert result["class_avg_acc"] == pytest.approx(class_avg, abs=1e-12)
    assert result["miou"] == pytest.approx(miou, abs=1e-12)
    np.testing.assert_allclose(result["iou_per_class"], iou, atol=1e-12)
    if absent_class is not None:
        assert result["iou_per_class"][absent_class] == 0.0
