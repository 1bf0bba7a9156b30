"""Trains every model config on the built-in shapes dataset and prints the README's model table.

    python benchmarks/model_zoo.py                      # all configs, workdirs runs/zoo/<config>
    python benchmarks/model_zoo.py unet fcn_vgg16:8s    # some of them

Each config is run as `python train.py --config configs/<file>.py[:<arg>] --workdir
runs/zoo/<file>[_<arg>]` (resuming if the workdir exists). Reported: steps, images seen,
the median training throughput over the logged intervals (images/s), the training wall
time, and the final validation metrics from <workdir>/final_metrics.json.
"""

import json
import os
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


def run(name: str) -> dict:
    """Trains config `name` ("<file>" or "<file>:<arg>") and summarizes its run."""
    file, _, argument = name.partition(":")
    workdir = os.path.join(REPO, "runs", "zoo", name.replace(":", "_"))
    config_arg = os.path.join(REPO, "configs", f"{file}.py") + (f":{argument}" if argument else "")
    command = [
        sys.executable,
        os.path.join(REPO, "train.py"),
        "--config",
        config_arg,
        "--workdir",
        workdir,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    seconds = time.perf_counter() - start
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    train = [r for r in records if r["split"] == "train"]
    with open(os.path.join(workdir, "final_metrics.json")) as f:
        final = json.load(f)
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    steps = final["step"]
    return {
        "config": name,
        "steps": steps,
        "images": steps * config["data"]["batch_size"],
        # the first interval includes compilation
        "images_per_second": statistics.median(r["images_per_second"] for r in train[1:] or train),
        "wall_seconds": seconds,
        **{k: final["validation"][k] for k in ("pixel_acc", "mean_acc", "miou", "fwiou")},
    }


def main(names):
    rows = []
    for name in names or shapes_recipes():
        rows.append(run(name))
        print(json.dumps(rows[-1]), flush=True)
    columns = (
        "config",
        "steps",
        "images",
        "median img/s",
        "wall time",
        "pixel acc",
        "mean acc",
        "mIoU",
        "f.w. IoU",
    )
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        file, _, argument = r["config"].partition(":")
        name = f"configs/{file}.py" + (f":{argument}" if argument else "")
        print(
            f"| `{name}` | {r['steps']} | {r['images']} |"
            f" {r['images_per_second']:.1f} | {r['wall_seconds'] / 60:.1f} min |"
            f" {r['pixel_acc']:.3f} | {r['mean_acc']:.3f} | {r['miou']:.3f} | {r['fwiou']:.3f} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
