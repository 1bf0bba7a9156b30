"""configs/camvid_segnet_table1.py (the SegNet Table 1 reproduction) on a few real CamVid
images: it resolves, trains two steps and evaluates with SegNet's scores."""

import os
import shutil

import pytest
from helpers import SHARED_DATA

from jaxseg.config import load_config_file, validate_config
from jaxseg.evaluation.evaluate import evaluate_run
from jaxseg.train.loop import train_and_evaluate

CAMVID = SHARED_DATA / "camvid"


def _few_camvid_images(root, per_split=2):
    """A CamVid folder with the first `per_split` images of each split (links, not copies)."""
    os.makedirs(root / "splits")
    shutil.copy(CAMVID / "classes.csv", root / "classes.csv")
    for split in ("train", "val", "test"):
        ids = (CAMVID / "splits" / f"{split}.txt").read_text().split()[:per_split]
        (root / "splits" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for kind in ("images", "masks"):
            os.makedirs(root / kind / split)
            for name in ids:
                os.symlink(
                    CAMVID / kind / split / f"{name}.png", root / kind / split / f"{name}.png"
                )


@pytest.mark.skipif(not CAMVID.exists(), reason="../shared/data/camvid is absent (a fresh clone)")
def test_the_table1_config_trains_two_steps_and_reports_segnet_scores(tmp_path):
    _few_camvid_images(tmp_path / "camvid")
    config = load_config_file("configs/camvid_segnet_table1.py")
    validate_config(config)
    assert config.evaluators == ("segnet",) and config.data.test_split == "test"
    assert config.loss.class_weights == "median_frequency" and config.model.encoder == "resnet18"
    config.data.options.root = str(tmp_path / "camvid")
    config.data.augment.crop_size = (64, 96)
    config.data.batch_size = config.data.eval_batch_size = 2
    config.train.update(num_steps=2, log_every=1, eval_every=0, checkpoint_every=0, num_devices=1)
    results = train_and_evaluate(config, str(tmp_path / "run"))
    assert set(results) == {"val", "test"}
    evaluated = evaluate_run(str(tmp_path / "run"), split="test")  # full 360x480 images
    segnet = evaluated["segnet"]
    assert segnet["global_acc"] == pytest.approx(results["test"]["pixel_acc"], abs=1e-9)
    # SegNet's mIoU: jaxseg's per-class IoU with an absent class (NaN here) as 0, over all 11.
    iou = [
        0.0 if value is None or value != value else value for value in evaluated["iou_per_class"]
    ]
    assert segnet["miou"] == pytest.approx(sum(iou) / 11, abs=1e-9)
