"""Evaluation of a model on a split, and what it reports: metrics, a prediction grid, a
confusion matrix, the config's evaluators. Used by the training loop and evaluate.py alike."""

import dataclasses
import functools
import os

import jax
import numpy as np

from jaxseg.data.pipeline import to_example
from jaxseg.data.transforms import pad_to_size
from jaxseg.evaluation.evaluators import build_evaluators
from jaxseg.inference import Predictor
from jaxseg.metrics import confusion_matrix, segmentation_metrics
from jaxseg.models.platforms import xla_options
from jaxseg.report import figures
from jaxseg.report.tables import MetricSums, format_table, summarize
from jaxseg.report.writer import RunWriter, read_metrics
from jaxseg.run import Run, build_run, load_run, predict_probabilities


def to_host(x) -> np.ndarray:
    """A replicated array as numpy on every process (also when it spans several hosts)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = x.addressable_data(0)
    return np.asarray(x)


def evaluate(run: Run, variables, split: str) -> tuple[dict, np.ndarray]:
    """(metrics record, confusion matrix) of `variables` on one pass over `split`.

    `variables` are placed as the run's layout places a train state's.
    """
    sums = MetricSums()
    for batch in run.eval_batches(split):
        pixels = int(np.prod(batch["mask"].shape)) * jax.process_count()
        metrics = run.eval_step(variables, run.layout.put_batch(batch))
        sums.add(run.layout.global_metrics(metrics), pixels)
    totals = sums.result()
    return summarize(totals), np.asarray(totals["confusion"], np.int64)


def grid_examples(run: Run, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The first `train.grid_examples` examples of `split` (images, labels), padded (label:
    ignored) to one size; the same examples at every evaluation."""
    source = run.source(split)
    examples = [
        to_example(source[i]) for i in range(min(run.config.train.grid_examples, len(source)))
    ]
    height = max(e["mask"].shape[0] for e in examples)
    width = max(e["mask"].shape[1] for e in examples)
    examples = [pad_to_size(e, height, width, run.info.ignore_label) for e in examples]
    return np.stack([e["image"] for e in examples]), np.stack([e["mask"] for e in examples])


@functools.cache
def _predictor(model, info):
    return jax.jit(
        functools.partial(predict_probabilities, model, info), compiler_options=xla_options()
    )


def predict_classes(model, info, variables, images: np.ndarray) -> np.ndarray:
    """argmax class (N, H, W) of uint8 images; every process computes it."""
    return to_host(_predictor(model, info)(variables, images).argmax(-1))


def report(
    writer: RunWriter,
    run: Run,
    variables,
    split: str,
    step: int,
    record: dict,
    confusion: np.ndarray | None = None,
    suffix: str = "",
    log: bool = True,
) -> None:
    """Writes an evaluation's prediction grid and, if given, its confusion matrix; with `log`,
    its record to metrics.jsonl and both to TensorBoard (training does, evaluate.py not).

    `variables` must be usable by a plain jit (a mesh state, or `layout.saveable`'s).
    The pictures are drawn first, then everything is written.
    """
    pictures = []  # (path under the run, PNG, TensorBoard tag or "")
    if run.config.train.grid_examples:
        images, labels = grid_examples(run, split)
        predictions = predict_classes(run.model, run.info, variables, images)
        png, _ = figures.prediction_grid(
            images, labels, predictions, run.info,
            title=f"{split}, step {step}{suffix}: mIoU {record['miou']:.3f}",
        )  # fmt: skip
        tag = f"{split}/predictions" if log else ""
        pictures.append((f"images/{split}-{step}{suffix}.png", png, tag))
    if confusion is not None:
        png = figures.confusion_heatmap(
            confusion, run.info.class_names, f"Confusion matrix, {split}, step {step}{suffix}"
        )
        pictures.append((f"images/confusion-{split}-{step}{suffix}.png", png, ""))
    if log:
        writer.scalars({"step": step, "split": split, **record})
    for path, png, tag in pictures:
        writer.picture(path, png, step, tag)


def write_curves(writer: RunWriter, eval_split: str, title: str) -> None:
    records = read_metrics(writer.metrics_path)
    if records:
        writer.picture("curves.png", figures.training_curves(records, eval_split, title))


@dataclasses.dataclass(frozen=True)
class PredictionSettings:
    """How evaluate.py predicts: tiles, overlap, flip and multi-scale TTA (None: whole images,
    one batched pass, as training evaluates)."""

    tile: tuple[int, int] | None = None
    overlap: float | None = None
    flip: bool = False
    scales: tuple[float, ...] = (1.0,)

    @property
    def batched(self) -> bool:
        return self == PredictionSettings()

    def suffix(self) -> str:
        """What the settings add to a result's file name, after the step."""
        parts = []
        if self.tile:
            parts.append(f"tile{self.tile[0]}x{self.tile[1]}")
            if self.overlap is not None:
                parts.append(f"overlap{self.overlap:g}")
        if self.flip:
            parts.append("flip")
        if self.scales != (1.0,):
            parts.append("scales" + "_".join(f"{s:g}" for s in self.scales))
        return "".join(f"-{p}" for p in parts)


def evaluate_images(
    run: Run, predictor: Predictor, split: str, evaluators=None
) -> tuple[dict, np.ndarray]:
    """Evaluates image by image with `predictor` (tiles, TTA), each process a share of the
    images, feeding each image to `evaluators` ({name: Evaluator}). Returns (record,
    confusion). The record's loss is the mean negative log probability of the true class."""
    source = run.source(split)
    count = min(len(source), run.config.data.eval_examples or len(source))
    classes, ignore = run.info.num_classes, run.info.ignore_label
    confusion = np.zeros((classes, classes), np.int64)
    log_loss, labelled = 0.0, 0
    for index in range(jax.process_index(), count, jax.process_count()):
        example = to_example(source[index])
        probabilities = np.empty((*example["mask"].shape, classes), np.float32)
        predicted = predictor.predict(example["image"], probabilities)
        labels = example["mask"].astype(np.int64)
        confusion += np.asarray(confusion_matrix(labels, predicted, classes, ignore), np.int64)
        valid = (labels != ignore) & (labels >= 0) & (labels < classes)
        log_loss -= float(np.log(np.maximum(probabilities[valid, labels[valid]], 1e-12)).sum())
        labelled += int(valid.sum())
        for evaluator in (evaluators or {}).values():
            evaluator.add(probabilities, labels)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        totals = multihost_utils.process_allgather(np.array([log_loss, labelled], np.float64))
        confusion = multihost_utils.process_allgather(confusion).sum(0)
        log_loss, labelled = totals.sum(0)
    record = {"loss": log_loss / labelled if labelled else float("nan")}
    record.update(segmentation_metrics(confusion))
    return record, confusion


def default_split(config, sources) -> tuple[str, str]:
    """(split, why) evaluate.py uses when none is given: the config's test split, else the
    dataset's "test" split, else the config's eval split."""
    if config.data.test_split:
        return config.data.test_split, "the config's test split"
    if "test" in sources:
        return "test", "the dataset's test split"
    return config.data.eval_split, "the config's eval split; the dataset has no test split"


def evaluate_run(
    workdir: str,
    split: str | None = None,
    step: int | None = None,
    settings: PredictionSettings = PredictionSettings(),
) -> dict:
    """evaluate.py: metrics of a run's checkpoint on a split of its dataset.

    Prints the metrics table and writes RUN/eval/<split>-<step><settings>.json,
    the prediction grid and confusion matrix (RUN/images/), and RUN/curves.png.
    Never trains, never writes a checkpoint. With `config.evaluators` (e.g. "isbi2012": the
    ISBI 2012 challenge's V_Rand and V_Info) it predicts image by image and adds their scores.

    Args:
      workdir: the run directory.
      split: default: `default_split` (the test split if there is one), printed.
      step: default: the latest checkpoint.
      settings: tiles and test-time augmentation (default: whole images, batched).
    """
    trained = load_run(workdir, step)
    config = trained.config
    run = build_run(config, parallelism="mesh")
    if split is None:
        split, why = default_split(config, run.sources)
        if jax.process_index() == 0:
            print(f"evaluating split {split!r} ({why}; --split chooses another)")
    run.source(split)
    evaluators = build_evaluators(config.evaluators, run.info)
    replicated = jax.sharding.NamedSharding(run.layout.mesh, jax.sharding.PartitionSpec())
    variables = jax.device_put(trained.variables, replicated)
    if settings.batched and not evaluators:
        record, confusion = evaluate(run, variables, split)
    else:
        predictor = Predictor(
            trained.model,
            trained.variables,
            trained.info,
            tile=settings.tile,
            overlap=settings.overlap,
            flip=settings.flip,
            scales=settings.scales,
        )
        record, confusion = evaluate_images(run, predictor, split, evaluators)
    scores = {name: evaluator.result() for name, evaluator in evaluators.items()}
    suffix = settings.suffix()
    writer = RunWriter(trained.workdir, enabled=jax.process_index() == 0)
    writer.json(
        f"eval/{split}-{trained.step}{suffix}.json",
        {
            "step": trained.step,
            "split": split,
            "settings": dataclasses.asdict(settings),
            **record,
            **scores,
            "confusion": confusion.tolist(),
        },
    )
    report(writer, run, variables, split, trained.step, record, confusion, suffix, log=False)
    write_curves(writer, config.data.eval_split, os.path.basename(trained.workdir))
    writer.close()
    if writer.enabled:
        print(f"{split} metrics at step {trained.step}{suffix} ({trained.workdir}):")
        print(format_table({split: record}, run.info.class_names))
        for name, result in scores.items():
            print(f"{name}: " + ", ".join(f"{k} {_score_text(v)}" for k, v in result.items()))
    return {**record, **scores}


def _score_text(value) -> str:
    """An evaluator's score as printed: a number, or a list of them (per class)."""
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_score_text(v) for v in value) + "]"
    return f"{value:.4g}"
