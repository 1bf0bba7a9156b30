"""predict.py on a folder of small images: its default (auto tiles) against --tile=0.

    python benchmarks/predict_small_images.py --workdir runs/default
    python benchmarks/predict_small_images.py --workdir RUN --count 4 --size 80,96 --rounds 4

Writes `count` random RGB PNGs of `size` (H,W) to a temporary folder and runs predict.py
on them with each setting, a fresh process per run, the setting that goes first
alternating between rounds (a machine whose load drifts favours neither). Prints the
seconds predict.py reports for its images (reading, compiling, predicting, writing: not
its start-up), their medians and the ratio. The compilation cache is off unless
--compilation_cache=DIR is given, so every run compiles.
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"default": [], "--tile=0": ["--tile=0"]}
SUMMARY = re.compile(r"image\(s\) predicted into .* in ([\d.]+) s\)")


def write_images(folder: Path, count: int, height: int, width: int) -> None:
    rng = np.random.default_rng(0)
    for index in range(count):
        pixels = rng.integers(0, 256, (height, width, 3), np.uint8)
        Image.fromarray(pixels).save(folder / f"image{index}.png")


def predict_seconds(workdir: str, images: Path, output: Path, flags: list[str]) -> float:
    """The seconds one predict.py process reports for the images."""
    command = [sys.executable, str(REPO / "predict.py"), "--workdir", workdir]
    command += ["--input", str(images), "--output", str(output), "--overwrite", *flags]
    done = subprocess.run(command, capture_output=True, text=True)
    found = SUMMARY.search(done.stdout)
    if done.returncode != 0 or not found:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return float(found.group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, help="a trained run")
    parser.add_argument("--count", type=int, default=4)
    parser.add_argument("--size", default="80,96", help="H,W of the images")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--compilation_cache", default="", help="empty: off")
    args = parser.parse_args()
    height, width = (int(side) for side in args.size.split(","))
    seconds = {name: [] for name in SETTINGS}
    with tempfile.TemporaryDirectory() as scratch:
        images = Path(scratch) / "images"
        images.mkdir()
        write_images(images, args.count, height, width)
        names = list(SETTINGS)
        for round_index in range(args.rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                flags = [*SETTINGS[name], f"--compilation_cache={args.compilation_cache}"]
                output = Path(scratch) / "out"
                seconds[name].append(predict_seconds(args.workdir, images, output, flags))
                print(f"round {round_index + 1} {name:9} {seconds[name][-1]:6.2f} s", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    print(f"{args.count} images of {height}x{width}, medians of {args.rounds} runs:")
    for name, median in medians.items():
        print(f"  {name:9} {median:6.2f} s")
    print(f"  default / --tile=0: {medians['default'] / medians['--tile=0']:.2f}x")


if __name__ == "__main__":
    main()
