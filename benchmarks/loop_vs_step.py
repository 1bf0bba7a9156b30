"""Does the training loop keep up with its step? In-loop images/s against the bare compiled
step, and how long a checkpoint save stalls training, in one process.

    python benchmarks/loop_vs_step.py                        # default and CamVid configs
    python benchmarks/loop_vs_step.py configs/default.py --steps 200 --log-every 20

For each config:
1. `train_and_evaluate` (what train.py runs) trains it in a temporary workdir for `--steps`
   steps, logging every `--log-every` steps, with one checkpoint halfway (on a log step)
   besides the final one, no evaluation before the end and a final evaluation on a few
   examples only;
2. the bare step: the run's compiled train step on one batch already on the device, timed
   for `--bare-steps` steps before and after the training (median of both);
3. reported: the in-loop images/s, the median over the log intervals (the first, which
   includes compilation, and the two after the checkpoint left out), its ratio to the bare
   step's, and the checkpoint stall: the time by which the two intervals after the save
   exceed two median intervals (orbax copies the state to the host in the save call and
   writes it in a background thread, which shares the CPU with the steps).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax

from jaxseg import host_memory
from jaxseg.config import REPO, load_config_file
from jaxseg.run import build_run
from jaxseg.train.loop import train_and_evaluate

# config: (steps, log_every) that give ~10 log intervals in a few minutes on 2 CPU cores.
DEFAULTS = {"configs/default.py": (120, 10), "configs/camvid_unet.py": (30, 3)}


def bare_step_seconds(run, state, batch, steps: int) -> tuple[list[float], object]:
    """Seconds of each of `steps` compiled train steps on `batch` (on the device), after one
    untimed; returns them and the state (the step donates it)."""
    state, metrics = run.train_step(state, batch, run.step_rng)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        state, metrics = run.train_step(state, batch, run.step_rng)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - start)
    return times, state


def loop_intervals(workdir: str) -> list[dict]:
    """The training records of a run's metrics.jsonl, with each interval's steps and seconds."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r.get("split") == "train"]
    previous = 0
    for record in train:
        record["steps"] = record["step"] - previous
        previous = record["step"]
    return train


def measure(spec: str, steps: int, log_every: int, bare_steps: int) -> dict:
    """The in-loop and bare-step images/s of config `spec` and its checkpoint stall."""
    config = load_config_file(spec)
    config.train.num_steps = steps
    config.train.log_every = log_every
    config.train.checkpoint_every = steps // 2 // log_every * log_every
    config.train.eval_every = 0
    config.data.test_split = ""
    config.data.eval_examples = config.data.eval_batch_size
    config.train.grid_examples = 0
    batch_size = config.data.batch_size

    run = build_run(config)
    batch = run.layout.put_batch(next(run.train_batches()))
    before, state = bare_step_seconds(run, run.init_state(), batch, bare_steps)
    del state
    with tempfile.TemporaryDirectory() as workdir:
        train_and_evaluate(config, workdir)
        intervals = loop_intervals(workdir)
    after, _ = bare_step_seconds(run, run.init_state(), batch, bare_steps)

    save = config.train.checkpoint_every
    seconds = {r["step"]: r["steps"] * batch_size / r["images_per_second"] for r in intervals}
    steady = [
        r for r in intervals[1:] if not save < r["step"] - r["steps"] + 1 <= save + 2 * log_every
    ]
    median_interval = statistics.median(seconds[r["step"]] for r in steady)
    after_save = [seconds[s] for s in (save + log_every, save + 2 * log_every) if s in seconds]
    loop_rate = statistics.median(r["images_per_second"] for r in steady)
    bare_rate = batch_size / statistics.median(before + after)
    return {
        "config": spec,
        "batch": batch_size,
        "steps": steps,
        "log_every": log_every,
        "loop_images_per_s": loop_rate,
        "bare_step_images_per_s": bare_rate,
        "loop_over_bare": loop_rate / bare_rate,
        "intervals_used": len(steady),
        "checkpoint_step": save,
        "checkpoint_stall_s": sum(after_save) - len(after_save) * median_interval,
        "median_step_s": median_interval / log_every,
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("configs", nargs="*", default=list(DEFAULTS), help="config[:argument]")
    parser.add_argument("--steps", type=int, help="training steps (default: per config)")
    parser.add_argument("--log-every", type=int, help="steps per log interval")
    parser.add_argument("--bare-steps", type=int, default=5, help="bare steps before and after")
    parser.add_argument(
        "--host-memory",
        choices=("reuse", "system"),
        default="reuse",
        help="reuse (as the jaxseg tools do, jaxseg/host_memory.py) or glibc's malloc defaults",
    )
    args = parser.parse_args(argv)
    for spec in args.configs:
        steps, log_every = DEFAULTS.get(spec, (None, None))
        steps, log_every = args.steps or steps, args.log_every or log_every
        if not steps or not log_every:
            parser.error(f"{spec}: give --steps and --log-every (no defaults for it)")
        if steps < 6 * log_every:
            parser.error(f"{spec}: --steps {steps} must be >= 6 x --log-every ({log_every})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.host_memory == "reuse":  # before JAX starts its CPU client
        print(f"host memory reuse: {host_memory.reuse_freed_memory()}", flush=True)
    results = []
    for spec in args.configs:
        steps, log_every = DEFAULTS.get(spec, (None, None))
        path = spec if os.path.exists(spec.partition(":")[0]) else os.path.join(REPO, spec)
        result = measure(path, args.steps or steps, args.log_every or log_every, args.bare_steps)
        result["config"] = spec
        results.append(result)
        print(json.dumps(result), flush=True)
    print("\n| config | in-loop img/s | bare step img/s | loop / step | checkpoint stall |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| `{r['config']}` | {r['loop_images_per_s']:.2f} | {r['bare_step_images_per_s']:.2f}"
            f" | {100 * r['loop_over_bare']:.0f}% | {r['checkpoint_stall_s']:.2f} s"
            f" ({r['checkpoint_stall_s'] / r['median_step_s']:.1f} steps) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
