"""train_and_evaluate(config, workdir): the whole training program as a library call."""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from tqdm import tqdm

from jaxseg.config import validate_config
from jaxseg.data import load_dataset
from jaxseg.data.pipeline import LoaderConfig, batches, eval_dataset, train_dataset
from jaxseg.data.transforms import AugmentConfig, pad_example
from jaxseg.models import get_model
from jaxseg.models.unet import UNet, unet_tile_padding
from jaxseg.train import parallel
from jaxseg.train.checkpoint import Checkpointer
from jaxseg.train.reporting import MetricsLogger, MetricSums, format_table, summarize
from jaxseg.train.state import count_params, create_train_state, make_optimizer
from jaxseg.train.step import bind_steps


def prepare_workdir(workdir: str) -> str:
    """Creates `workdir` if needed; raises ValueError if it cannot be written."""
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir} exists and is not a directory")
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{os.getpid()}")  # processes may share it
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"workdir {workdir} is not writable: {e.strerror or e}") from e
    return workdir


def build_model(config, num_classes: int):
    options = config.model.to_dict()  # nested ConfigDicts (encoder_options) as dicts
    name = options.pop("name")
    options.setdefault("num_classes", num_classes)
    return get_model(name, **options)


def model_input_padding(model, ignore_label: int):
    """The per-example padding a model needs, or None: the original U-Net predicts the
    centre of a larger, mirror-padded tile (`unet_tile_padding`)."""
    if not (isinstance(model, UNet) and model.padding == "VALID"):
        return None

    def pad(example):
        image_pads, label_pads = unet_tile_padding(*example["mask"].shape, model.depth)
        return pad_example(example, image_pads, label_pads, ignore_label)

    return pad


def augment_config(config, ignore_label: int) -> AugmentConfig:
    options = dict(config.data.augment)
    options["crop_size"] = tuple(options["crop_size"]) or None
    options["scale_range"] = tuple(options["scale_range"])
    return AugmentConfig(**options, ignore_label=ignore_label)


def class_weights(config, info):
    if config.loss.class_weights == "none":
        return None
    if config.loss.class_weights == "median_frequency":
        return jnp.asarray(info.median_frequency_weights())
    raise ValueError(
        f"unknown loss.class_weights {config.loss.class_weights!r};"
        " allowed: 'none', 'median_frequency'"
    )


def _model_changes(workdir: str, config) -> str:
    """'model.x: old -> new' for settings that differ from the workdir's saved config.json."""
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        saved = json.load(f).get("model", {})
    current = json.loads(config.model.to_json_best_effort())
    changes = [
        f"model.{key}: {saved.get(key, 'unset')} -> {current.get(key, 'unset')}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    return "Changed since this workdir was created: " + ", ".join(changes) if changes else ""


def _split(sources, name, key):
    if name not in sources:
        raise ValueError(
            f"{key}={name!r} is not a split of this dataset; splits: {sorted(sources)}"
        )
    return sources[name]


def evaluate(eval_fn, state, dataset, layout) -> dict:
    """Runs `eval_fn` over one pass of `dataset`; returns the summarized metrics."""
    accumulator = MetricSums()
    for batch in dataset:
        pixels = int(np.prod(batch["mask"].shape)) * jax.process_count()
        metrics = eval_fn(state, layout.put_batch(batch))
        accumulator.add(layout.global_metrics(metrics), pixels)
    return summarize(accumulator.result())


def train_and_evaluate(config, workdir: str) -> dict[str, dict]:
    """Trains `config` in `workdir`, resuming from its checkpoints if any.

    Returns:
      {split: metrics} of the final evaluation.
    """
    validate_config(config)
    workdir = prepare_workdir(workdir)
    is_main = jax.process_index() == 0
    layout = parallel.make_parallel(config.train.parallelism, config.train.num_devices)
    parallel.check_batch_size(config.data.batch_size, layout.num_devices)
    parallel.check_batch_size(
        config.data.eval_batch_size, layout.num_devices, "data.eval_batch_size"
    )

    sources, info = load_dataset(config.data.name, **config.data.options)
    train_source = _split(sources, config.data.train_split, "data.train_split")
    eval_splits = [config.data.eval_split] + (
        [config.data.test_split] if config.data.test_split else []
    )
    for split in eval_splits:
        _split(sources, split, "data.eval_split/test_split")

    if config.loss.use_pixel_weights and "weight" not in train_source[0]:
        raise ValueError(
            f"loss.use_pixel_weights is set but dataset {config.data.name!r} gives no per-pixel"
            " weights (folder datasets do with data.options.instances_dir)"
        )
    model = build_model(config, info.num_classes)
    num_steps = config.train.num_steps
    tx = make_optimizer(config.optim, num_steps)
    augment = augment_config(config, info.ignore_label)
    finalize = model_input_padding(model, info.ignore_label)
    train_hw = augment.crop_size or train_source[0]["mask"].shape[:2]
    image_shape = (*train_hw, 3)
    if finalize:
        blank = {"image": np.zeros(image_shape, np.uint8), "mask": np.zeros(train_hw, np.int32)}
        image_shape = finalize(blank)["image"].shape

    # Init draws one random tensor per layer: with threefry keys XLA on CPU spends
    # seconds compiling that, with RBG keys a fraction. Dropout keeps threefry,
    # whose bits do not depend on how the batch is sharded.
    init_rng = jax.random.key(config.seed, impl="rbg")
    step_rng = jax.random.key(config.seed)

    def init_fn(key):
        return create_train_state(key, model, tx, image_shape)

    abstract_state = jax.eval_shape(init_fn, init_rng)

    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), config.train.keep_checkpoints)
    start_step, data_state = checkpointer.latest_step() or 0, None
    if start_step:
        state, data_state = checkpointer.restore(
            start_step, layout.restore_target(abstract_state), _model_changes(workdir, config)
        )
        state = layout.place_restored(state)
        print(f"Resuming from the checkpoint at step {start_step} in {checkpointer.directory}")
    else:
        state = layout.init_state(init_fn, init_rng)
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))
    print(
        f"Model {config.model.name}: {count_params(abstract_state.params):,} parameters;"
        f" {layout.num_devices} device(s), {jax.process_count()} process(es),"
        f" {config.train.parallelism} parallelism"
    )

    train_fn, eval_fn = bind_steps(
        config.loss,
        info.num_classes,
        info.ignore_label,
        class_weights(config, info),
        layout.axis_name,
    )
    train_fn = layout.compile_train(train_fn)
    eval_fn = layout.compile_eval(eval_fn)
    loader = LoaderConfig(
        config.data.batch_size,
        config.data.num_threads,
        config.data.num_workers,
        config.data.prefetch,
    )
    eval_loader = dataclasses.replace(loader, global_batch_size=config.data.eval_batch_size)
    shard = dict(process_index=jax.process_index(), process_count=jax.process_count())

    def make_eval_dataset(split):
        return eval_dataset(
            sources[split],
            eval_loader,
            info.ignore_label,
            config.data.eval_pad_multiple,
            finalize=finalize,
            limit=config.data.eval_examples,
            pad_to=tuple(config.data.eval_pad_to) or None,
            **shard,
        )

    train_data = train_dataset(
        train_source, augment, loader, config.seed, finalize=finalize, **shard
    )
    train_iter = batches(train_data, data_state)
    logger = MetricsLogger(os.path.join(workdir, "metrics.jsonl"), enabled=is_main)
    logger.resume_at(start_step)
    accumulator = MetricSums()
    progress = tqdm(
        total=num_steps, initial=start_step, desc="train", disable=not is_main, dynamic_ncols=True
    )
    interval_start, interval_steps = time.perf_counter(), 0
    for step in range(start_step + 1, num_steps + 1):
        batch = next(train_iter)
        state, metrics = train_fn(state, layout.put_batch(batch), step_rng)
        pixels = int(np.prod(batch["mask"].shape)) * jax.process_count()
        accumulator.add(layout.global_metrics(metrics), pixels)
        interval_steps += 1
        if step % config.train.log_every == 0 or step == num_steps:
            record = summarize(accumulator.result())  # waits for the device: once per interval
            seconds = time.perf_counter() - interval_start
            images_per_second = interval_steps * config.data.batch_size / seconds
            logger.write(
                {"step": step, "split": "train", **record, "images_per_second": images_per_second}
            )
            # The bar moves when the device has finished the steps, not when they are queued.
            progress.set_postfix(loss=f"{record['loss']:.4f}", img_s=f"{images_per_second:.1f}")
            progress.update(interval_steps)
            interval_start, interval_steps = time.perf_counter(), 0
        if config.train.eval_every and step % config.train.eval_every == 0 and step != num_steps:
            record = evaluate(eval_fn, state, make_eval_dataset(config.data.eval_split), layout)
            logger.write({"step": step, "split": config.data.eval_split, **record})
            progress.write(f"step {step}: {config.data.eval_split} mIoU {record['miou']:.4f}")
            interval_start = time.perf_counter()
        if (
            config.train.checkpoint_every and step % config.train.checkpoint_every == 0
        ) or step == num_steps:
            checkpointer.save(step, layout.saveable(state), train_iter.get_state())
    progress.close()
    checkpointer.wait()

    final_step = int(jax.device_get(layout.saveable(state).step))
    results = {}
    for split in eval_splits:
        results[split] = evaluate(eval_fn, state, make_eval_dataset(split), layout)
        logger.write({"step": final_step, "split": split, **results[split]})
    checkpointer.close()
    if is_main:
        print(f"\nFinal metrics at step {final_step} ({workdir}):")
        print(format_table(results, info.class_names))
        with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
            json.dump({"step": final_step, **results}, f, indent=2, allow_nan=True)
    logging.flush()
    return results
