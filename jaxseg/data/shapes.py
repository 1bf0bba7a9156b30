"""The built-in dataset: coloured shapes over textured backgrounds, no download needed.

Classes: background, disc, square, triangle, ring. Every shape and every
background gets a random colour drawn independently of its class, so colour
alone does not give the class away: a per-pixel (1x1-conv) classifier can at
best tell "some shape" from background, and must not tell a disc from a
square. Shapes vary in scale and rotation, overlap (later ones occlude earlier
ones), and sit on a smooth random colour field with stripes and pixel noise.

Each example is a pure function of (seed, split, index), so the dataset is
reproducible and order-independent. It is written once as a real TFDS dataset
(ArrayRecord files) and read back with random access, without TensorFlow. Writing
it says so in one line, instead of TFDS's "Downloading and preparing dataset
Unknown size" and its progress bars (nothing is downloaded).
"""

import contextlib
import dataclasses
import inspect

import numpy as np
import tensorflow_datasets as tfds

from jaxseg.data.info import SegmentationInfo, class_statistics

CLASS_NAMES = ("background", "disc", "square", "triangle", "ring")
PALETTE = ((0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200))
SPLITS = ("train", "validation", "test")
# Colours of a shape and of what it is drawn over differ at least this much
# (Euclidean, 0-255 RGB), so every shape is visible.
_MIN_CONTRAST = 80.0


def render_example(rng: np.random.Generator, size: int, max_shapes: int = 4):
    """Draws one (image, mask) pair: uint8 (size, size, 3) and uint8 (size, size)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    image = _background(rng, size, xx, yy)
    mask = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, max_shapes + 1)):
        label = int(rng.integers(1, len(CLASS_NAMES)))
        radius = rng.uniform(0.09, 0.24) * size
        center = rng.uniform(radius * 0.6, size - radius * 0.6, size=2)
        inside = _shape_mask(label, rng, xx - center[0], yy - center[1], radius)
        colour = _contrasting_colour(rng, image[inside].mean(axis=0) if inside.any() else None)
        shading = 1.0 + 0.15 * (xx - center[0]) / size  # mild gradient: no flat colour cue
        image[inside] = colour * shading[inside, None]
        mask[inside] = label
    image += rng.normal(0, rng.uniform(4, 12), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def _background(rng, size, xx, yy):
    base = rng.uniform(0, 255, 3)
    field = np.broadcast_to(base, (size, size, 3)).astype(np.float32).copy()
    for _ in range(2):  # smooth colour waves
        freq = rng.uniform(0.5, 2.0) * 2 * np.pi / size
        angle = rng.uniform(0, np.pi)
        phase = rng.uniform(0, 2 * np.pi)
        wave = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        field += wave[..., None] * rng.uniform(-40, 40, 3)
    if rng.random() < 0.5:  # stripes: straight edges that are not shapes
        period = rng.uniform(4, 12)
        angle = rng.uniform(0, np.pi)
        stripes = (np.cos(angle) * xx + np.sin(angle) * yy) % period < period / 2
        field += stripes[..., None] * rng.uniform(-30, 30, 3)
    return np.clip(field, 0, 255)


def _contrasting_colour(rng, against):
    for _ in range(100):
        colour = rng.uniform(0, 255, 3)
        if against is None or np.linalg.norm(colour - against) >= _MIN_CONTRAST:
            return colour
    return 255.0 - against


def _shape_mask(label, rng, dx, dy, radius):
    angle = rng.uniform(0, 2 * np.pi)
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    name = CLASS_NAMES[label]
    if name == "disc":
        return u**2 + v**2 <= radius**2
    if name == "square":  # same area as the disc of this radius
        half = radius * np.sqrt(np.pi) / 2
        return np.maximum(np.abs(u), np.abs(v)) <= half
    if name == "triangle":  # equilateral, circumradius a bit larger than the disc's
        circumradius = 1.3 * radius
        inside = np.ones_like(u, bool)
        for k in range(3):
            normal_angle = angle + np.pi / 2 + 2 * np.pi * k / 3
            inside &= np.cos(normal_angle) * dx + np.sin(normal_angle) * dy <= circumradius / 2
        return inside
    if name == "ring":
        inner = radius * rng.uniform(0.45, 0.65)
        return (inner**2 <= u**2 + v**2) & (u**2 + v**2 <= radius**2)
    raise ValueError(f"no shape for label {label}")


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
    """Size and seed of a generated shapes dataset (values: `shapes_config`)."""

    image_size: int = 0
    num_train: int = 0
    num_validation: int = 0
    num_test: int = 0
    seed: int = 0


def shapes_config(image_size, num_train, num_validation, num_test, seed):
    """A ShapesConfig named after its parameters, so different ones never share files."""
    name = f"s{image_size}_n{num_train}-{num_validation}-{num_test}_seed{seed}"
    return ShapesConfig(
        name=name,
        image_size=image_size,
        num_train=num_train,
        num_validation=num_validation,
        num_test=num_test,
        seed=seed,
    )


class JaxsegShapes(tfds.core.GeneratorBasedBuilder):
    """TFDS builder for the built-in shapes dataset (ArrayRecord, readable without TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = []  # set below from load_shapes' defaults

    def _info(self):
        size = self.builder_config.image_size
        # Tensor features with zlib: Image features would need TensorFlow to encode PNG.
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(size, size, 3), dtype=np.uint8, encoding="zlib"
                    ),
                    "mask": tfds.features.Tensor(
                        shape=(size, size), dtype=np.uint8, encoding="zlib"
                    ),
                }
            ),
            supervised_keys=("image", "mask"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        config = self.builder_config
        counts = (config.num_train, config.num_validation, config.num_test)
        return {split: self._generate_examples(split, n) for split, n in zip(SPLITS, counts)}

    def _log_download_bytes(self):
        """Said when TFDS starts writing: TFDS would say it downloads a dataset of unknown size."""
        config = self.builder_config
        total = config.num_train + config.num_validation + config.num_test
        print(
            f"jaxseg: generating its built-in shapes dataset ({total} images of"
            f" {config.image_size}x{config.image_size}; nothing is downloaded) in"
            f" {self.data_dir}, once",
            flush=True,
        )

    def _log_download_done(self):
        pass  # TFDS: "Dataset ... downloaded and prepared": the line above said it

    def _generate_examples(self, split, num_examples):
        config = self.builder_config
        for index in range(num_examples):
            rng = np.random.default_rng([config.seed, SPLITS.index(split), index])
            image, mask = render_example(rng, config.image_size)
            yield index, {"image": image, "mask": mask}


def load_shapes(
    data_dir: str = "",
    image_size: int = 64,
    num_train: int = 4000,
    num_validation: int = 500,
    num_test: int = 500,
    seed: int = 0,
):
    """Builds the dataset on first use, then returns ({split: data source}, info).

    Args:
      data_dir: TFDS data directory ("" = the TFDS default, ~/tensorflow_datasets).
      image_size: side of the square images.
      num_train, num_validation, num_test: examples per split.
      seed: the dataset's seed (each example is a function of seed, split, index).
    """
    config = shapes_config(image_size, num_train, num_validation, num_test, seed)
    registered = {c.name for c in JaxsegShapes.BUILDER_CONFIGS}
    builder = JaxsegShapes(
        config=config.name if config.name in registered else config,
        data_dir=data_dir or None,  # None: the TFDS default, ~/tensorflow_datasets
        file_format="array_record",
    )
    with _without_tfds_progress_bars():  # its shuffling bars, with long temporary paths
        builder.download_and_prepare()
    sources = {split: builder.as_data_source(split=split) for split in SPLITS}
    train = sources["train"]
    masks = (train[i]["mask"] for i in range(min(len(train), 500)))  # a sample suffices
    frequencies, presence = class_statistics(masks, len(CLASS_NAMES), 255)
    info = SegmentationInfo(
        class_names=CLASS_NAMES,
        ignore_label=255,
        palette=PALETTE,
        class_frequencies=frequencies,
        presence_frequencies=presence,
    )
    return sources, info


@contextlib.contextmanager
def _without_tfds_progress_bars():
    from tensorflow_datasets.core.utils import tqdm_utils

    shown = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        tfds.display_progress_bar(shown)


JaxsegShapes.BUILDER_CONFIGS = [
    shapes_config(
        **{
            name: p.default
            for name, p in inspect.signature(load_shapes).parameters.items()
            if name != "data_dir"
        }
    )
]
