"""config -> Run: the dataset, model, task (loss + metrics), optimizer and compiled steps a
config describes, built once for training, evaluation and the benchmarks (the Run itself,
with its data streams and fresh state: built.py).
"""

import functools

import flax
import jax
import ml_collections

from jaxseg.checks import check_against_data
from jaxseg.config import import_modules, validate_config
from jaxseg.data import load_dataset
from jaxseg.models import SegmentationModel, get_model, onednn_conv
from jaxseg.models.platforms import xla_options
from jaxseg.models.remat import compiler_options
from jaxseg.run import parallel
from jaxseg.run.built import Run
from jaxseg.run.finite import skipping_nonfinite
from jaxseg.run.optim import make_optimizer
from jaxseg.run.step import eval_step, train_step
from jaxseg.run.task import build_task

CHECKPOINTS = "checkpoints"


def build_model(model_config, num_classes: int) -> SegmentationModel:
    """The model `config.model` describes; its num_classes defaults to the dataset's."""
    # Nested dicts (encoder_options) frozen: a Flax module must be hashable.
    options = {
        key: flax.core.FrozenDict(value) if isinstance(value, dict) else value
        for key, value in model_config.to_dict().items()
    }
    name = options.pop("name")
    if options.get("num_classes") is None:
        options["num_classes"] = num_classes
    return get_model(name, **options)


def step_options(remat: str) -> dict[str, str] | None:
    """XLA options of the train step: jaxseg's for the backend, and those remat needs."""
    options = {**(xla_options() or {}), **(compiler_options(remat, jax.default_backend()) or {})}
    return options or None


def build_run(config: ml_collections.ConfigDict, parallelism: str | None = None) -> Run:
    """Builds the dataset, model, optimizer and compiled steps a config describes.

    Args:
      config: a training config (jaxseg/config.py).
      parallelism: overrides `config.train.parallelism` (evaluation always uses "mesh").

    Returns:
      The Run; nothing is read from or written to a workdir.
    """
    import_modules(config)
    validate_config(config)
    layout = parallel.make_parallel(
        parallelism or config.train.parallelism, config.train.num_devices
    )
    parallel.check_batch_size(config.data.batch_size, layout.num_devices)
    parallel.check_batch_size(
        config.data.eval_batch_size, layout.num_devices, "data.eval_batch_size"
    )
    optimizer = make_optimizer(config.optim, config.train.num_steps)
    sources, info = load_dataset(config.data.name, **config.data.options)
    check_against_data(config, sources, info)
    model = build_model(config.model, info.num_classes)
    task = build_task(config.loss, info)
    step_fn = functools.partial(train_step, task=task, axis=layout.axis)
    if config.train.skip_nonfinite_steps:
        step_fn = skipping_nonfinite(step_fn)
    eval_fn = functools.partial(eval_step, apply_fn=model.apply, task=task, axis=layout.axis)
    eval_fn = layout.compile_eval(eval_fn, xla_options())
    step_fn = layout.compile_train(step_fn, step_options(model.remat))
    if onednn_conv.chosen(config.train.cpu_convolutions):  # traced, compiled within it
        eval_fn, step_fn = map(onednn_conv.with_onednn_convolutions, (eval_fn, step_fn))
    return Run(
        config=config,
        sources=sources,
        info=info,
        model=model,
        layout=layout,
        optimizer=optimizer,
        task=task,
        eval_step=eval_fn,
        train_step=step_fn,
    )
