import numpy as np
import pytest

from jaxseg.data.transforms import AugmentConfig, augment

PALETTE = np.array([[20, 40, 60], [200, 30, 90], [40, 220, 120], [250, 250, 10]], np.uint8)


def _blocky_example(height=64, width=96, block=16):
    """A mask of square blocks of random classes; the image paints each class its palette colour."""
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, len(PALETTE), (height // block, width // block))
    mask = np.kron(blocks, np.ones((block, block), int))
    return {"image": PALETTE[mask], "mask": mask}


def _interior(mask, radius=1, ignore_label=255):
    """Pixels whose (2r+1)^2 neighbourhood has a single label (interpolation cannot blend them)."""
    padded = np.pad(mask, radius, constant_values=-1)  # border pixels are never interior
    same = np.ones_like(mask, bool)
    for dr in range(2 * radius + 1):
        for dc in range(2 * radius + 1):
            same &= padded[dr : dr + mask.shape[0], dc : dc + mask.shape[1]] == mask
    return same & (mask != ignore_label)


@pytest.mark.parametrize(
    "config",
    [
        AugmentConfig(flip=True),
        AugmentConfig(scale_range=(0.5, 2.0), crop_size=(40, 40)),
        AugmentConfig(scale_range=(0.7, 1.5), flip=True, rotation_degrees=30, crop_size=(56, 72)),
        AugmentConfig(elastic_sigma=10),
        AugmentConfig(elastic_sigma=10, image_order=3),
    ],
    ids=["flip", "scale_crop", "scale_rotate_flip_crop", "elastic", "elastic_bicubic"],
)
def test_image_and_mask_stay_aligned(config):
    # Elastic warps locally magnify > 2x, so that a pixel's interpolation
    # footprint reaches beyond its 3x3 output neighbourhood: look further.
    radius = 3 if config.elastic_sigma else 1
    example = _blocky_example()
    for seed in range(5):
        out = augment(example, np.random.default_rng(seed), config)
        interior = _interior(out["mask"], radius)
        assert interior.mean() > 0.1
        pixels = out["image"][interior].astype(int)
        # The colour nearest each image pixel is the colour of its mask label ...
        distances = np.linalg.norm(pixels[:, None, :] - PALETTE[None].astype(int), axis=-1)
        np.testing.assert_array_equal(distances.argmin(-1), out["mask"][interior])
        if config.image_order == 1:  # ... and exactly it (bicubic B-splines ring near edges)
            np.testing.assert_allclose(pixels, PALETTE[out["mask"][interior]], atol=2)
        labels = set(np.unique(out["mask"])) - {255}
        assert labels <= set(range(len(PALETTE))), "nearest neighbour: no blended labels"


def test_output_has_crop_size_and_dtypes():
    out = augment(
        _blocky_example(),
        np.random.default_rng(0),
        AugmentConfig(scale_range=(0.5, 0.5), crop_size=(40, 50)),
    )
    assert out["image"].shape == (40, 50, 3) and out["image"].dtype == np.uint8
    assert out["mask"].shape == (40, 50)


def test_flip_mirrors_exactly():
    example = _blocky_example()
    flipped = None
    for seed in range(10):  # some seed flips, some does not
        out = augment(example, np.random.default_rng(seed), AugmentConfig(flip=True))
        if not np.array_equal(out["mask"], example["mask"]):
            flipped = out
    assert flipped is not None
    np.testing.assert_array_equal(flipped["mask"], example["mask"][:, ::-1])
    np.testing.assert_array_equal(flipped["image"], example["image"][:, ::-1])


def test_shrinking_pads_mask_with_ignore_label():
    out = augment(
        _blocky_example(),
        np.random.default_rng(0),
        AugmentConfig(scale_range=(0.5, 0.5), crop_size=(64, 96), ignore_label=77),
    )
    assert (out["mask"] == 77).mean() == pytest.approx(0.75, abs=0.05)
    assert (out["image"][out["mask"] == 77] == 0).all()


def test_deterministic_given_generator_seed():
    config = AugmentConfig(
        scale_range=(0.7, 1.4),
        flip=True,
        rotation_degrees=20,
        elastic_sigma=5,
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
    )
    example = _blocky_example()
    a = augment(example, np.random.default_rng(42), config)
    b = augment(example, np.random.default_rng(42), config)
    c = augment(example, np.random.default_rng(43), config)
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["mask"], b["mask"])
    assert not np.array_equal(a["image"], c["image"])


def test_colour_jitter_leaves_mask_untouched():
    example = _blocky_example()
    out = augment(example, np.random.default_rng(0), AugmentConfig(brightness=0.5, saturation=0.5))
    np.testing.assert_array_equal(out["mask"], example["mask"])
    assert not np.array_equal(out["image"], example["image"])


def test_weight_map_follows_the_geometry():
    example = _blocky_example()
    example["weight"] = (example["mask"] == 1).astype(np.float32) * 3 + 1
    out = augment(
        example,
        np.random.default_rng(3),
        AugmentConfig(scale_range=(0.8, 1.3), flip=True, rotation_degrees=15),
    )
    interior = _interior(out["mask"])
    np.testing.assert_allclose(
        out["weight"][interior], np.where(out["mask"][interior] == 1, 4, 1), atol=1e-4
    )
