"""Peak host memory and speed of tiled prediction on large images (jaxseg.inference.Predictor).

    python benchmarks/predict_memory.py                         # 2048^2, 4096^2, 8192^2
    python benchmarks/predict_memory.py --sizes 2048 --tile 256 --batch_size 8

The default model (get_model("unet", num_classes=5, base_features=16, depth=4)),
random weights (memory and speed do not depend on them). Each size runs in its own
process: it compiles on a tile-sized image, makes the input image, then resets the
kernel's peak-RSS counter (/proc/self/clear_refs) and predicts. Reported per size:
the peak resident memory above that post-compile baseline (it includes the uint8
output mask, H*W bytes, and the model's own working memory for one batch, shown
separately as measured on a tile-sized image), the size of full-resolution float32
logits for comparison, tiles, seconds, tiles/s and seconds per megapixel.
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np

NUM_CLASSES = 5
MIB = 2**20


def _memory(field: str) -> int:
    """VmRSS or VmHWM (peak RSS since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> int:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM to the current RSS
    return _memory("VmRSS")


def _random_variables(model, size: int):
    """He-normal kernels, unit batch-norm statistics: the model's shapes without compiling
    its initialisers (slow on CPU)."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            values = rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        elif "scale" in name or "var" in name:
            values = np.ones(leaf.shape)
        else:
            values = np.zeros(leaf.shape)
        return values.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def measure(size: int, tile: int, batch_size: int) -> dict:
    """Predicts one size x size image in this process; returns its numbers."""
    from jaxseg.data.info import SegmentationInfo
    from jaxseg.inference import Predictor
    from jaxseg.models import get_model

    model = get_model("unet", num_classes=NUM_CLASSES, base_features=16, depth=4)
    info = SegmentationInfo(class_names=tuple(f"class{i}" for i in range(NUM_CLASSES)))
    predictor = Predictor(
        model, _random_variables(model, 64), info, tile=(tile, tile), batch_size=batch_size
    )
    small = np.zeros((tile, tile, 3), np.uint8)
    predictor.predict(small)  # compiles
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)

    baseline = _reset_peak()
    predictor.predict(small)
    one_batch = _memory("VmHWM") - baseline

    tiles = predictor._layout(size, size).count
    baseline = _reset_peak()
    start = time.perf_counter()
    predictor.predict(image)
    seconds = time.perf_counter() - start
    peak = _memory("VmHWM") - baseline
    return {
        "size": size,
        "tiles": tiles,
        "seconds": round(seconds, 2),
        "tiles_per_s": round(tiles / seconds, 2),
        "s_per_megapixel": round(seconds / (size * size / 1e6), 3),
        "peak_above_baseline_mib": round(peak / MIB, 1),
        "mask_mib": round(size * size / MIB, 1),
        "one_batch_mib": round(one_batch / MIB, 1),
        "float32_logits_mib": round(size * size * NUM_CLASSES * 4 / MIB, 1),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.sizes[0], args.tile, args.batch_size)))
        return
    print(f"tile {args.tile}, batch {args.batch_size}, unet base 16 depth 4, {NUM_CLASSES} classes")
    header = (
        "size", "tiles", "seconds", "tiles/s", "s/MP", "peak MiB", "mask MiB", "1 batch MiB",
        "logits MiB",
    )  # fmt: skip
    print(" | ".join(header))
    for size in args.sizes:
        command = [sys.executable, __file__, "--child", "--sizes", str(size)]
        command += ["--tile", str(args.tile), "--batch_size", str(args.batch_size)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True).stdout)
        print(" | ".join(str(v) for v in result.values()))


if __name__ == "__main__":
    main()
