"""Trains every model config on the built-in shapes dataset and prints the README's model table.

    python benchmarks/model_zoo.py                      # all configs, workdirs runs/zoo/<config>
    python benchmarks/model_zoo.py unet fcn_vgg16:8s    # some of them
    python benchmarks/model_zoo.py --minutes 6 default deeplabv3plus_resnet18   # same budget

Each config is run as `python train.py --config configs/<file>.py[:<arg>] --workdir
runs/zoo/<file>[_<arg>]` (resuming if the workdir exists). Reported: parameters, steps,
images seen, the median training throughput over the logged intervals (images/s) and the
step time it gives, the training time (`train_seconds`: compilation in, evaluation out),
and the final validation metrics from <workdir>/final_metrics.json.

With `--minutes M` every config gets the same training time instead of its own number of
steps: a short calibration run (runs/zoo/calibrate/<config>, 12 steps) measures its
images/s, and the run trains round(M * 60 * images/s / batch size) steps, the rest of the
config unchanged (its schedule follows num_steps).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

from jaxseg.config import REPO, load_config_file, recipes


def shapes_recipes() -> list[str]:
    """The recipes ("file[:argument]") that train on the built-in shapes dataset."""
    found = []
    for spec in recipes():
        if load_config_file(os.path.join(REPO, "configs", spec)).data.name == "shapes":
            file, _, argument = spec.partition(":")
            found.append(file.removesuffix(".py") + (f":{argument}" if argument else ""))
    return found


CALIBRATION_STEPS = 12
PARAMETERS = re.compile(r"^Model \S+: ([\d,]+) parameters;", re.MULTILINE)


def train(name: str, workdir: str, *overrides: str) -> dict:
    """Runs train.py on config `name` ("<file>" or "<file>:<arg>") and summarizes the run."""
    file, _, argument = name.partition(":")
    config_arg = os.path.join(REPO, "configs", f"{file}.py") + (f":{argument}" if argument else "")
    command = [sys.executable, os.path.join(REPO, "train.py"), "--config", config_arg]
    command += ["--workdir", workdir, *overrides]
    start = time.perf_counter()
    done = subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    print(done.stdout, end="", flush=True)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train_records = [r for r in records if r["split"] == "train"]
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        final = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    steps, batch_size = final["step"], config["data"]["batch_size"]
    # the first interval includes compilation
    rate = statistics.median(r["images_per_second"] for r in train_records[1:] or train_records)
    return {
        "config": name,
        "parameters": int(PARAMETERS.search(done.stdout).group(1).replace(",", "")),
        "steps": steps,
        "batch_size": batch_size,
        "images": steps * batch_size,
        "images_per_second": rate,
        "step_seconds": batch_size / rate,
        "train_seconds": train_records[-1]["train_seconds"],
        "wall_seconds": seconds,
        **{k: final["validation"][k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou")},
    }


def run(name: str, minutes: float | None = None) -> dict:
    """Trains config `name` with its own steps, or for `minutes` of training."""
    workdir = os.path.join(REPO, "runs", "zoo", name.replace(":", "_"))
    if minutes is None:
        return train(name, workdir)
    calibration = train(
        name,
        os.path.join(REPO, "runs", "zoo", "calibrate", name.replace(":", "_")),
        f"--config.train.num_steps={CALIBRATION_STEPS}",
        f"--config.train.log_every={CALIBRATION_STEPS // 3}",
        "--config.train.eval_every=0",
        "--config.train.grid_examples=0",
    )
    rate, batch_size = calibration["images_per_second"], calibration["batch_size"]
    steps = max(1, round(minutes * 60 * rate / batch_size))
    log_every = max(1, steps // 20)
    row = train(
        name,
        workdir,
        f"--config.train.num_steps={steps}",
        f"--config.train.log_every={log_every}",
        f"--config.train.eval_every={max(1, steps // 3)}",
    )
    return {**row, "calibrated_images_per_second": rate}


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="configs (default: every shapes config)")
    parser.add_argument("--minutes", type=float, help="the same training time for every config")
    args = parser.parse_args(argv)
    rows = []
    for name in args.names or shapes_recipes():
        rows.append(run(name, args.minutes))
        print(json.dumps(rows[-1]), flush=True)
    print(table(rows))


def table(rows: list[dict]) -> str:
    """The README's table: one row per run."""
    lines = [
        "| config | parameters | steps x batch | median img/s | step time | training time"
        " | pixel acc | mean acc | mIoU | f.w. IoU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        file, _, argument = r["config"].partition(":")
        name = f"configs/{file}.py" + (f":{argument}" if argument else "")
        lines.append(
            f"| `{name}` | {r['parameters'] / 1e6:.2f} M | {r['steps']} x {r['batch_size']} |"
            f" {r['images_per_second']:.1f} | {r['step_seconds'] * 1000:.0f} ms |"
            f" {r['train_seconds'] / 60:.1f} min |"
            f" {r['pixel_acc']:.3f} | {r['mean_acc']:.3f} | {r['miou']:.3f} | {r['fwiou']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
