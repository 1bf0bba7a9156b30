"""What a run reports (metrics.jsonl, TensorBoard, pictures) and evaluate.py on a trained run."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, tiny_config
from PIL import Image

from jaxseg.evaluation.evaluate import grid_examples, predict_classes
from jaxseg.report import figures, tensorboard
from jaxseg.report.writer import read_metrics
from jaxseg.run import build_run, load_run
from jaxseg.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A tiny run: 6 steps, evaluated at 3 and 6, test split evaluated at the end."""
    workdir = str(tmp_path_factory.mktemp("reported") / "run")
    config = tiny_config(
        data_dir,
        **{"train.num_steps": 6, "train.eval_every": 3, "train.checkpoint_every": 3},
    )
    config.data.test_split = "test"
    results = train_and_evaluate(config, workdir)
    return workdir, results


def _png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    return np.asarray(Image.open(path).convert("RGB"))


def test_pictures_exist_and_the_grid_shows_the_models_argmax(run_dir):
    workdir, _ = run_dir
    names = sorted(os.listdir(os.path.join(workdir, "images")))
    assert names == [
        "confusion-test-6.png",
        "confusion-validation-6.png",
        "test-6.png",
        "validation-3.png",
        "validation-6.png",
    ]
    for name in names:
        assert min(_png(os.path.join(workdir, "images", name)).shape[:2]) > 300, name
    curves = _png(os.path.join(workdir, "curves.png"))
    assert curves.shape[:2] == (380, 1000)

    trained = load_run(workdir)
    run = build_run(trained.config)
    images, labels = grid_examples(run, "validation")
    predictions = trained.predict(images).argmax(-1)
    np.testing.assert_array_equal(
        predictions, predict_classes(run.model, run.info, trained.variables, images)
    )
    _, layout = figures.prediction_grid(images, labels, predictions, run.info, title="x")
    written = _png(os.path.join(workdir, "images", "validation-6.png"))
    scale = layout["scale"]
    for row, (image_at, label_at, prediction_at) in enumerate(layout["panels"]):
        for (top, left), expected in (
            (image_at, images[row]),
            (label_at, run.info.colourize(labels[row])),
            (prediction_at, run.info.colourize(predictions[row])),
        ):
            height, width = expected.shape[:2]
            panel = written[top : top + height * scale : scale, left : left + width * scale : scale]
            np.testing.assert_array_equal(panel, expected)


def test_records_tensorboard_and_final_metrics(run_dir):
    workdir, results = run_dir
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    assert [r["step"] for r in records if r["split"] == "validation"] == [3, 6]
    assert [r["step"] for r in records if r["split"] == "test"] == [6]
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        final = json.loads(f.read(), parse_constant=lambda name: pytest.fail(f"bare {name}"))
    assert final["step"] == 6
    assert final["validation"]["miou"] == pytest.approx(results["validation"]["miou"])
    tags = {}
    for root, _, files in os.walk(os.path.join(workdir, "tensorboard")):
        for name in files:
            for event in tensorboard.read_events(os.path.join(root, name)):
                for value in event.summary.value:
                    tags.setdefault(value.tag, []).append(event.step)
    assert tags["train/loss"] == [1, 2, 3, 4, 5, 6]
    assert tags["validation/miou"] == [3, 6]
    assert tags["validation/predictions"] == [3, 6]


def test_resume_purges_tensorboard_events_after_the_checkpoint(tmp_path):
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step in range(1, 8):
        writer.add_scalar("train/loss", 1.0 / step, step)
    writer.close()
    assert tensorboard.purge_after(str(tmp_path), 4) == 3
    (path,) = [os.path.join(tmp_path, n) for n in os.listdir(tmp_path)]
    steps = [e.step for e in tensorboard.read_events(path) if e.summary.value]
    assert steps == [1, 2, 3, 4]
    assert tensorboard.purge_after(str(tmp_path), 4) == 0


def _evaluate_cli(*args):
    return subprocess.run(
        [sys.executable, str(REPO / "evaluate.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    )


def test_evaluate_cli_reproduces_the_final_metrics_and_writes_no_checkpoint(run_dir):
    workdir, results = run_dir
    checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    done = _evaluate_cli("--workdir", workdir, "--split", "validation")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "validation metrics at step 6" in done.stdout and "mean IoU" in done.stdout
    with open(os.path.join(workdir, "eval", "validation-6.json")) as f:
        evaluated = json.load(f)
    for key in ("loss", "pixel_acc", "mean_acc", "miou", "fwiou"):
        assert evaluated[key] == pytest.approx(results["validation"][key], rel=1e-5), key
    assert np.asarray(evaluated["confusion"]).shape == (5, 5)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints

    earlier = _evaluate_cli("--workdir", workdir, "--step", "3")  # default split: test
    assert earlier.returncode == 0, earlier.stderr[-3000:]
    assert os.path.exists(os.path.join(workdir, "eval", "test-3.json"))
    assert "evaluating split 'test' (the config's test split" in earlier.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--step", "4"], r"no checkpoint at step 4; saved steps: [3, 6]"),
        (["--split", "val"], "'val' is not a split of dataset 'shapes'; its splits:"),
    ],
)
def test_evaluate_cli_bad_input_is_a_message_and_exit_status_2(run_dir, args, message):
    workdir, _ = run_dir
    done = _evaluate_cli("--workdir", workdir, *args)
    assert done.returncode == 2, done.stderr[-3000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_evaluate_cli_on_a_directory_that_is_not_a_run(tmp_path):
    done = _evaluate_cli("--workdir", str(tmp_path))
    assert done.returncode == 2
    assert "is not a jaxseg run" in done.stderr and "Traceback" not in done.stderr
    assert os.listdir(tmp_path) == []


def test_figures_render_other_sizes_and_many_classes():
    """A grid of non-square images with ignored pixels, and a 30-class confusion matrix."""
    from jaxseg.data.info import SegmentationInfo

    info = SegmentationInfo(
        tuple(f"class {i}" for i in range(30)),
        255,
        tuple((8 * i, 255 - 8 * i, 0) for i in range(30)),
    )
    labels = np.zeros((2, 24, 40), np.int32)
    labels[:, :4] = 255
    png, layout = figures.prediction_grid(np.zeros((2, 24, 40, 3), np.uint8), labels, labels, info)
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert layout["scale"] == 4 and image.shape[1] > 3 * 160
    png = figures.confusion_heatmap(np.eye(30) * 10, info.class_names)
    assert Image.open(io.BytesIO(png)).size[0] >= 1000


def test_image_by_image_evaluation_equals_the_batched_one(run_dir):
    """The per-image path (for tiles and TTA) computes what the batched path does."""
    from jaxseg.evaluation.evaluate import evaluate, evaluate_images
    from jaxseg.inference import Predictor

    workdir, _ = run_dir
    trained = load_run(workdir)
    run = build_run(trained.config, parallelism="mesh")
    batched, batched_confusion = evaluate(run, trained.variables, "validation")
    predictor = Predictor(trained.model, trained.variables, trained.info, tile=None)
    record, confusion = evaluate_images(run, predictor, "validation")
    np.testing.assert_array_equal(confusion, batched_confusion)
    assert record["loss"] == pytest.approx(batched["loss"], rel=1e-4)


def test_evaluate_cli_with_tiles_and_tta_names_its_settings(run_dir):
    workdir, _ = run_dir
    done = _evaluate_cli(
        "--workdir", workdir, "--split", "validation", "--tile", "32,32", "--tta", "--scales=1,1.25"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    with open(os.path.join(workdir, "eval", "validation-6-tile32x32-flip-scales1_1.25.json")) as f:
        evaluated = json.load(f)
    assert evaluated["settings"] == {
        "tile": [32, 32], "overlap": None, "flip": True, "scales": [1.0, 1.25]
    }  # fmt: skip
    assert 0 <= evaluated["miou"] <= 1


def test_membrane_data_gets_the_isbi_challenge_scores(data_dir, tmp_path):
    """A folder dataset of membrane/cell masks with the "isbi2012" evaluator: evaluation adds
    V_Rand and V_Info."""
    from jaxseg.config import data_config
    from jaxseg.evaluation.evaluate import evaluate_run

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / "em" / "images" / split).mkdir(parents=True)
        (tmp_path / "em" / "masks" / split).mkdir(parents=True)
        for index in range(4):
            cells = np.ones((32, 32), np.uint8) * 255
            cells[:, rng.integers(4, 28)] = 0  # a membrane across the slice
            cells[rng.integers(4, 28), :] = 0
            image = np.where(cells > 0, 200, 40).astype(np.uint8) + rng.integers(0, 30, (32, 32))
            Image.fromarray(image.astype(np.uint8)).save(
                tmp_path / "em" / "images" / split / f"{index}.png"
            )
            Image.fromarray(cells).save(tmp_path / "em" / "masks" / split / f"{index}.png")
    config = tiny_config(data_dir, **{"train.num_steps": 2})
    config.data.name = "folder"
    config.data.options = data_config(
        "folder", root=str(tmp_path / "em"), splits=("train", "val"), mask_format="binary",
        class_names=("membrane", "cell"),
    )  # fmt: skip
    config.data.eval_split = "val"
    config.evaluators = ("isbi2012",)
    config.data.batch_size = config.data.eval_batch_size = 4
    train_and_evaluate(config, str(tmp_path / "run"))
    result = evaluate_run(str(tmp_path / "run"))
    scores = result["isbi2012"]
    for key in ("v_rand", "v_info", "v_rand_split", "v_rand_merge"):
        assert 0 <= scores[key] <= 1, key
    assert 0 <= scores["v_rand_threshold"] < 1


def test_evaluate_defaults_to_the_test_split_the_dataset_has_and_says_so(data_dir):
    """The built-in dataset generates a test split: evaluate.py uses it even when the config
    names none, and prints which split it chose and why."""
    from jaxseg.evaluation.evaluate import default_split

    config = tiny_config(data_dir)
    assert config.data.test_split == ""
    splits = {"train": [], "validation": [], "test": []}
    assert default_split(config, splits) == ("test", "the dataset's test split")
    config.data.test_split = "validation"
    assert default_split(config, splits)[0] == "validation"
    config.data.test_split = ""
    split, why = default_split(config, {"train": [], "validation": []})
    assert split == "validation" and "has no test split" in why
