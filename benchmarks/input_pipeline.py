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
import statistics
import sys
import time

import jax
import numpy as np
from absl import logging
from loop_vs_step import bare_step_seconds

from jaxseg.config import load_config_file
from jaxseg.data.pipeline import batches, train_dataset
from jaxseg.run import build_run

WINDOW = 5


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


def step_rate(run, batch, num_steps):
    """Median images/s of the run's compiled train step (batch already on device)."""
    seconds, _ = bare_step_seconds(run, run.init_state(), run.layout.put_batch(batch), num_steps)
    return batch["image"].shape[0] / statistics.median(seconds)


def main(config_path="configs/camvid_unet.py", num_batches="40"):
    logging.set_verbosity(logging.WARNING)
    num_batches = int(num_batches)
    config = load_config_file(config_path)
    config.train.num_devices = 1
    run = build_run(config)
    source = run.source(config.data.train_split)
    augment = run.augment_config()
    batch_size = config.data.batch_size
    native = source[0]["mask"].shape
    print(
        f"{config_path}: {len(source)} training images of {native[0]}x{native[1]},"
        f" crops {augment.crop_size}, batch {batch_size}, {jax.device_count()} device(s)"
    )
    threads = dataclasses.replace(run.loader(batch_size), num_threads=2, num_workers=0)
    workers = dataclasses.replace(threads, num_workers=2)
    results = {
        "pipeline, 2 threads": pipeline_rate(source, augment, threads, num_batches),
        "pipeline, 2 worker processes": pipeline_rate(source, augment, workers, num_batches),
    }
    full = dataclasses.replace(augment, crop_size=native)
    results["pipeline, 2 threads, full-size crops"] = pipeline_rate(
        source, full, threads, num_batches
    )
    batch = {k: np.asarray(v) for k, v in next(run.train_batches()).items()}
    step = step_rate(run, batch, max(num_batches // 4, 5))
    results["train step"] = step
    width = max(len(k) for k in results)
    for name, rate in results.items():
        ratio = "" if name == "train step" else f"   {rate / step:6.1f}x the step"
        print(f"{name:<{width}}  {rate:8.1f} images/s{ratio}")


if __name__ == "__main__":
    from absl import flags

    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags
    main(*sys.argv[1:])
