"""Evaluation of a model on a split, and what it reports: metrics, a prediction grid, a
confusion matrix. Used by the training loop and by evaluate.py alike."""

import functools
import os

import jax
import numpy as np

from jaxseg.data.pipeline import to_example
from jaxseg.data.transforms import pad_to_size
from jaxseg.train import figures
from jaxseg.train.reporting import MetricSums, format_table, summarize
from jaxseg.train.setup import Run, build_run, load_run, predict_probabilities
from jaxseg.train.writer import RunWriter, read_metrics


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
    return jax.jit(functools.partial(predict_probabilities, model, info))


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
    """
    if log:
        writer.scalars({"step": step, "split": split, **record})
    if run.config.train.grid_examples:
        images, labels = grid_examples(run, split)
        predictions = predict_classes(run.model, run.info, variables, images)
        png, _ = figures.prediction_grid(
            images, labels, predictions, run.info,
            title=f"{split}, step {step}{suffix}: mIoU {record['miou']:.3f}",
        )  # fmt: skip
        tag = f"{split}/predictions" if log else ""
        writer.picture(f"images/{split}-{step}{suffix}.png", png, step, tag)
    if confusion is not None:
        png = figures.confusion_heatmap(
            confusion, run.info.class_names, f"Confusion matrix, {split}, step {step}{suffix}"
        )
        writer.picture(f"images/confusion-{split}-{step}{suffix}.png", png)


def write_curves(writer: RunWriter, eval_split: str, title: str) -> None:
    records = read_metrics(writer.metrics_path)
    if records:
        writer.picture("curves.png", figures.training_curves(records, eval_split, title))


def evaluate_run(workdir: str, split: str | None = None, step: int | None = None) -> dict:
    """evaluate.py: metrics of a run's checkpoint on a split of its dataset.

    Prints the metrics table and writes RUN/eval/<split>-<step>.json, the
    prediction grid and confusion matrix (RUN/images/), and RUN/curves.png.
    Never trains, never writes a checkpoint.

    Args:
      workdir: the run directory.
      split: default: the config's test split if it has one, else its eval split.
      step: default: the latest checkpoint.
    """
    trained = load_run(workdir, step)
    config = trained.config
    run = build_run(config, parallelism="mesh")
    split = split or config.data.test_split or config.data.eval_split
    run.source(split)
    replicated = jax.sharding.NamedSharding(run.layout.mesh, jax.sharding.PartitionSpec())
    variables = jax.device_put(trained.variables, replicated)
    record, confusion = evaluate(run, variables, split)
    writer = RunWriter(trained.workdir, enabled=jax.process_index() == 0)
    writer.json(
        f"eval/{split}-{trained.step}.json",
        {"step": trained.step, "split": split, **record, "confusion": confusion.tolist()},
    )
    report(writer, run, variables, split, trained.step, record, confusion, log=False)
    write_curves(writer, config.data.eval_split, os.path.basename(trained.workdir))
    writer.close()
    if writer.enabled:
        print(f"{split} metrics at step {trained.step} ({trained.workdir}):")
        print(format_table({split: record}, run.info.class_names))
    return record
