"""Does the input pipeline keep up? Pipeline images/s vs train-step images/s, in one run.

    python benchmarks/input_pipeline.py                          # configs/camvid_unet.py
    python benchmarks/input_pipeline.py configs/isbi_unet.py 30  # another config, 30 batches

For the config's dataset, augmentation and batch size, measures (medians over
windows of batches, after a warm-up):
  - the images/s the pipeline delivers with reader threads only (num_workers=0)
    and with 2 worker processes;
  - the images/s the jitted train step consumes, on a batch already on device;
and prints the ratios. Also repeats the pipeline measurement with crops of the
full native image size.
"""

import dataclasses
import importlib.util
import statistics
import sys
import time

import jax
import numpy as np
from absl import logging

from jaxseg.data import load_dataset
from jaxseg.data.pipeline import LoaderConfig, batches, train_dataset
from jaxseg.train import parallel
from jaxseg.train.loop import augment_config, build_model, class_weights
from jaxseg.train.state import create_train_state, make_optimizer
from jaxseg.train.step import bind_steps

WINDOW = 5


def load_config(path):
    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def pipeline_rate(source, augment, loader, num_batches):
    """Median images/s over windows of WINDOW batches (after 2 warm-up batches)."""
    iterator = batches(train_dataset(source, augment, loader, seed=0))
    for _ in range(2):
        next(iterator)
    rates = []
    for _ in range(num_batches // WINDOW):
        start = time.perf_counter()
        for _ in range(WINDOW):
            next(iterator)
        rates.append(WINDOW * loader.global_batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def step_rate(config, info, batch, num_steps):
    """Median images/s of the jitted train step (batch already on device)."""
    layout = parallel.MeshParallel(num_devices=1)
    model = build_model(config, info.num_classes)
    tx = make_optimizer(config.optim, config.train.num_steps)
    state = layout.init_state(
        lambda k: create_train_state(k, model, tx, batch["image"].shape[1:]),
        jax.random.key(0, impl="rbg"),
    )
    train_fn, _ = bind_steps(
        config.loss, info.num_classes, info.ignore_label, class_weights(config, info)
    )
    train_fn = layout.compile_train(train_fn)
    device_batch = layout.put_batch(batch)
    rng = jax.random.key(0)
    for _ in range(2):  # compile, warm up
        state, metrics = train_fn(state, device_batch, rng)
    jax.block_until_ready(metrics)
    seconds = []
    for _ in range(num_steps):
        start = time.perf_counter()
        state, metrics = train_fn(state, device_batch, rng)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    return batch["image"].shape[0] / statistics.median(seconds)


def main(config_path="configs/camvid_unet.py", num_batches="40"):
    logging.set_verbosity(logging.WARNING)
    num_batches = int(num_batches)
    config = load_config(config_path)
    sources, info = load_dataset(config.data.name, **config.data.options)
    source = sources[config.data.train_split]
    augment = augment_config(config, info.ignore_label)
    batch_size = config.data.batch_size
    native = source[0]["mask"].shape
    print(
        f"{config_path}: {len(source)} training images of {native[0]}x{native[1]},"
        f" crops {augment.crop_size}, batch {batch_size}, {jax.device_count()} device(s)"
    )

    threads = LoaderConfig(batch_size, num_threads=2, num_workers=0, prefetch=4)
    workers = dataclasses.replace(threads, num_workers=2)
    results = {
        "pipeline, 2 threads": pipeline_rate(source, augment, threads, num_batches),
        "pipeline, 2 worker processes": pipeline_rate(source, augment, workers, num_batches),
    }
    full = dataclasses.replace(augment, crop_size=native)
    results["pipeline, 2 threads, full-size crops"] = pipeline_rate(
        source, full, threads, num_batches
    )
    batch = next(batches(train_dataset(source, augment, threads, seed=0)))
    batch = {k: np.asarray(v) for k, v in batch.items()}
    step = step_rate(config, info, batch, max(num_batches // 4, 5))
    results["train step"] = step
    width = max(len(k) for k in results)
    for name, rate in results.items():
        ratio = "" if name == "train step" else f"   {rate / step:6.1f}x the step"
        print(f"{name:<{width}}  {rate:8.1f} images/s{ratio}")


if __name__ == "__main__":
    main(*sys.argv[1:])
