"""Tiled prediction of a large image: jaxseg's Predictor against MONAI's sliding_window_inference.

    pip install -e ".[bench]"
    python benchmarks/vs_monai.py                       # 1024^2, tiles 128 and 96, 3 rounds
    python benchmarks/vs_monai.py --size 512 --tiles 128 --rounds 2 --check

The network is the paper-width U-Net of vs_pytorch.py ("unet": 64 base features, depth 4,
padded convolutions, 2 classes) on both sides, with the same weights (jaxseg's initial
variables copied into the PyTorch twin, in eval mode). Both sides predict one uint8 RGB
image of --size x --size with square tiles of each --tiles side, overlap 0.25, a Gaussian
blend window (sigma = 1/8 of the tile on both sides), --batch_size tiles per network
call, and end with the (H, W) argmax mask:

- jaxseg: `Predictor(..., tile=(t, t), overlap=0.25, blend="gaussian").predict(image)`,
  the compiled network including normalisation and softmax; tile steps are rounded down
  to the model's period (16), so tile 96 steps by 64 (256 tiles on 1024^2) while MONAI
  steps by 72 (196 tiles). Tile 128 steps by 96 on both sides: the same tiles.
- MONAI: normalisation of the whole image, then
  `sliding_window_inference(x, (t, t), batch_size, softmax(net(.)), overlap=0.25,
  mode="gaussian")` under torch.inference_mode, then argmax.

Rounds alternate the two sides, each after a short pause; the first call of each side
(jaxseg's compilation) is untimed. `--sides jaxseg` (or monai) runs one side alone, in a
process of its own. Reported per tile: the tiles each side ran, median megapixels per
second, their ratio, and how many pixels the two masks agree on. On the same tiles the
two differ only in their blend weights near the image border (jaxseg's window is flat
towards a border, MONAI's is not); MONAI's 72-pixel steps put its tiles off the model's
16-pixel pooling grid, which changes their predictions (jaxseg steps by a multiple of it).
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import monai
import numpy as np
import torch
from machine import cpu_name, software, usable_cpus
from monai.inferers import sliding_window_inference
from vs_pytorch import BENCHMARKS, load_jax_variables, torch_model

import jaxseg
from jaxseg.data.info import SegmentationInfo
from jaxseg.inference import Predictor

OVERLAP = 0.25
SIDES = ("jaxseg", "monai")
SETTLE_SECONDS = 0.2
NAME = "unet"


def make_models():
    """jaxseg's paper-width U-Net, its variables, and the PyTorch twin holding them."""
    model_name, options, _, _ = BENCHMARKS[NAME]
    model = jaxseg.get_model(model_name, **options)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    # Perturb the parameters so that zero biases and unit scales do not hide a mismatch.
    leaves, treedef = jax.tree.flatten(variables["params"])
    keys = jax.random.split(jax.random.key(3), len(leaves))
    leaves = [p + 0.02 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    variables = {**variables, "params": jax.tree.unflatten(treedef, leaves)}
    net = torch_model(NAME).eval()
    load_jax_variables(NAME, net, variables)
    return model, variables, net


class JaxSide:
    def __init__(self, model, variables, info, tile, batch_size):
        self.predictor = Predictor(
            model,
            variables,
            info,
            tile=(tile, tile),
            overlap=OVERLAP,
            batch_size=batch_size,
            blend="gaussian",
        )

    def tiles(self, image):
        self(image)  # compiles
        return self.predictor._layout(*image.shape[:2]).count

    def __call__(self, image):
        return self.predictor.predict(image)


class MonaiSide:
    def __init__(self, net, info, tile, batch_size):
        self.net, self.tile, self.batch_size = net, tile, batch_size
        self.mean = torch.tensor(info.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(info.image_std).view(1, 3, 1, 1)
        self.count = 0

    def _probabilities(self, x):
        self.count += x.shape[0]
        return torch.softmax(self.net(x), dim=1)

    def tiles(self, image):
        self.count = 0
        self(image)
        return self.count

    def __call__(self, image):
        with torch.inference_mode():
            x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
            x = (x - self.mean) / self.std
            probabilities = sliding_window_inference(
                x,
                (self.tile, self.tile),
                self.batch_size,
                self._probabilities,
                overlap=OVERLAP,
                mode="gaussian",
                sigma_scale=0.125,
            )
            return probabilities[0].argmax(dim=0).numpy().astype(np.uint8)


def check_whole_image(model, variables, net, info, side=64):
    """Raises unless both sides give the same probabilities on an image that is one tile."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    probabilities = np.zeros((side, side, 2), np.float32)
    Predictor(model, variables, info, tile=None).predict(image, probabilities)
    monai_side = MonaiSide(net, info, side, 1)
    with torch.inference_mode():
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
        want = monai_side._probabilities((x - monai_side.mean) / monai_side.std)
    error = np.abs(probabilities - want[0].permute(1, 2, 0).numpy()).max()
    print(f"whole {side}x{side} image: max |jaxseg - PyTorch| probability {error:.1e}")
    if not error < 1e-4:
        raise AssertionError("jaxseg and the PyTorch twin predict different probabilities")


def compare(model, variables, net, info, image, tile, batch_size, rounds, names=SIDES):
    makers = {
        "jaxseg": lambda: JaxSide(model, variables, info, tile, batch_size),
        "monai": lambda: MonaiSide(net, info, tile, batch_size),
    }
    sides = {name: makers[name]() for name in names}
    tiles = {name: side.tiles(image) for name, side in sides.items()}  # also the warm-up
    masks, times = {}, {name: [] for name in sides}
    for _ in range(rounds):
        for name, side in sides.items():
            time.sleep(SETTLE_SECONDS)
            start = time.perf_counter()
            masks[name] = side(image)
            times[name].append(time.perf_counter() - start)
    megapixels = image.shape[0] * image.shape[1] / 1e6
    rates = {name: megapixels / statistics.median(t) for name, t in times.items()}
    print(f"\ntile {tile}x{tile}, overlap {OVERLAP}, gaussian, batch {batch_size}:")
    for name in sides:
        spread = ", ".join(f"{t:.1f}" for t in times[name])
        print(f"  {name:6s} {tiles[name]:4d} tiles  {rates[name]:.4f} MP/s  (seconds: {spread})")
    if len(sides) == 2:
        agree = np.mean(masks["jaxseg"] == masks["monai"])
        print(f"  jaxseg / MONAI throughput {rates['jaxseg'] / rates['monai']:.2f}x;")
        print(f"  masks agree on {100 * agree:.3f}% of pixels")
    return rates


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=1024, help="image side")
    parser.add_argument("--tiles", type=int, nargs="+", default=[128, 96], help="tile sides")
    parser.add_argument("--batch_size", type=int, default=4, help="tiles per network call")
    parser.add_argument("--rounds", type=int, default=3, help="timed predictions per side")
    parser.add_argument(
        "--sides",
        nargs="+",
        default=list(SIDES),
        choices=SIDES,
        help="one side alone: its own process, untouched by the other's allocations",
    )
    parser.add_argument(
        "--check", action="store_true", help="first check both sides predict the same"
    )
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # as many as JAX's CPU client uses
    print(
        f"{usable_cpus()} CPUs usable (nproc), {cpu_name()}; {software()}, torch"
        f" {torch.__version__} (threads {torch.get_num_threads()}), monai {monai.__version__}"
    )
    info = SegmentationInfo(class_names=("background", "foreground"))
    model, variables, net = make_models()
    if args.check:
        check_whole_image(model, variables, net, info)
    # A smooth image (blurred noise) so the masks have regions, not salt and pepper.
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (args.size // 32 + 1, args.size // 32 + 1, 3))
    image = np.repeat(np.repeat(coarse, 32, axis=0), 32, axis=1)[: args.size, : args.size]
    image = image.astype(np.uint8)
    for tile in args.tiles:
        compare(model, variables, net, info, image, tile, args.batch_size, args.rounds, args.sides)


if __name__ == "__main__":
    main()
