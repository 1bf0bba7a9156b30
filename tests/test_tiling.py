"""Tiled prediction: equal to whole-image prediction, one compilation, TTA, errors, memory;
auto tiles: small images whole, one compilation per size bucket."""

import contextlib
import tracemalloc

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import ConfigError, ModelInputError
from jaxseg.inference import Predictor, probability_network
from jaxseg.inference.blend import window
from jaxseg.inference.resample import TileSampler, reflect
from jaxseg.inference.tiling import bucket_side, tile_starts
from jaxseg.models import get_model
from jaxseg.models.base import SegmentationModel

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def _info(num_classes):
    return SegmentationInfo(class_names=tuple(f"class{i}" for i in range(num_classes)))


def _image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _init(model, size=64, seed=0):
    """Random variables of the model's shapes: He-normal kernels, perturbed biases, scales
    and batch statistics. (XLA compiles `model.init`'s truncated normals slowly on CPU.)"""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:
            return rng.normal(0, np.sqrt(2 / np.prod(leaf.shape[:-1])), leaf.shape)
        if "scale" in name or "var" in name:
            return rng.uniform(0.5, 1.5, leaf.shape)
        return rng.normal(0, 0.1, leaf.shape)  # biases, means

    return jax.tree_util.tree_map_with_path(lambda p, x: draw(p, x).astype(x.dtype), shapes)


def _probabilities(predictor, image):
    out = np.zeros((*image.shape[:2], predictor.num_classes), np.float32)
    mask = predictor.predict(image, out)
    return mask, out


@contextlib.contextmanager
def count_compilations():
    """Counts XLA compilations (any jitted or eager computation) inside the block."""
    count = [0]

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            count[0] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield count
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def tiny_unet():
    """A U-Net with 4 channels at depth 2: period 4, receptive field radius ~24 pixels."""
    model = get_model("unet", num_classes=3, base_features=4, depth=2)
    return model, _init(model), _info(3)


def test_whole_image_prediction_is_the_model_on_the_mirror_padded_image(tiny_unet):
    model, variables, info = tiny_unet
    image = _image(50, 37)
    mask, probabilities = _probabilities(Predictor(model, variables, info, tile=None), image)
    padded = np.pad(image, ((0, 2), (0, 3), (0, 0)), mode="reflect")  # to multiples of 4
    logits = model.apply(variables, info.normalize(padded[None]), train=False)[0, :50, :37]
    np.testing.assert_allclose(probabilities, jax.nn.softmax(logits), atol=1e-6)
    np.testing.assert_array_equal(mask, np.argmax(logits, -1))
    assert mask.dtype == np.uint8


def test_tiled_equals_whole_image_when_the_overlap_exceeds_the_border_effect(tiny_unet):
    """To float tolerance, not bitwise: XLA sums the convolutions of a tile and of the whole
    image in different orders, and blending divides weighted sums by summed weights.

    Linear blending gives no weight to a tile's prediction within overlap/4 of its inner
    edges; with tile 128 and overlap 0.8 (step 24, 104 pixels shared) that is 26 pixels,
    more than the zero-padding border effect of this net (receptive field radius ~24), so
    every pixel is predicted from tiles that saw all its context. The tiles are on the
    whole image's pooling grid (step a multiple of 4) and the last one ends where the whole
    image's padding does, so this holds up to the image border too.
    """
    model, variables, info = tiny_unet
    image = _image(150, 201)
    whole_mask, whole = _probabilities(Predictor(model, variables, info, tile=None), image)
    tiled = Predictor(model, variables, info, tile=(128, 128), overlap=0.8, batch_size=4)
    assert tiled.step == (24, 24)
    tiled_mask, probabilities = _probabilities(tiled, image)
    np.testing.assert_allclose(probabilities, whole, atol=2e-6)
    assert (tiled_mask == whole_mask).mean() > 0.999  # argmax may flip only at float ties

    # A small overlap blends predictions that did see the tile edge: close, not equal.
    small = Predictor(model, variables, info, tile=(64, 64), overlap=0.25, batch_size=4)
    difference = np.abs(_probabilities(small, image)[1] - whole).max()
    assert 1e-4 < difference < 0.2
    gaussian = Predictor(model, variables, info, tile=(128, 128), overlap=0.5, blend="gaussian")
    assert np.abs(_probabilities(gaussian, image)[1] - whole).max() < 0.05


def test_compiles_once_across_image_sizes_and_pads_the_last_batch(tiny_unet):
    model, variables, info = tiny_unet
    predictor = Predictor(model, variables, info, tile=(64, 64), overlap=0.25, batch_size=4)
    sizes = [(50, 70), (64, 64), (130, 90), (97, 200), (33, 257)]
    with count_compilations() as compilations:
        for height, width in sizes:
            predictor.predict(_image(height, width))
    assert compilations[0] == 1
    # One row of 5 tiles (starts 0, 48, 96, 144, 192) in batches of 4: the second batch
    # holds one tile, padded to 4, and compiles nothing.
    image = _image(64, 256)
    with count_compilations() as compilations:
        padded_mask, padded = _probabilities(predictor, image)
    assert compilations[0] == 0
    one_batch = Predictor(model, variables, info, tile=(64, 64), overlap=0.25, batch_size=5)
    mask, probabilities = _probabilities(one_batch, image)
    np.testing.assert_allclose(padded, probabilities, atol=1e-6)


class SymmetricConvNet(SegmentationModel):
    """Two 3x3 convolutions with left-right symmetric kernels: commutes with a horizontal flip."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        for index, features in enumerate((8, self.num_classes)):
            kernel = self.param(
                f"kernel{index}", nn.initializers.normal(0.5), (3, 3, x.shape[-1], features)
            )
            kernel = (kernel + kernel[:, ::-1]) / 2
            x = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            x = nn.relu(x) if index == 0 else x
        return x


def test_flip_is_a_no_op_for_a_flip_equivariant_model():
    model = SymmetricConvNet(num_classes=4)
    variables, info = _init(model), _info(4)
    image = _image(45, 70)
    # Check the construction itself: the model commutes with the flip.
    x = info.normalize(image[None])
    np.testing.assert_allclose(
        model.apply(variables, x[:, :, ::-1])[:, :, ::-1], model.apply(variables, x), atol=1e-5
    )
    for tile in (None, (32, 32)):
        plain = Predictor(model, variables, info, tile=tile)
        flipped = Predictor(model, variables, info, tile=tile, flip=True)
        np.testing.assert_allclose(
            _probabilities(flipped, image)[1], _probabilities(plain, image)[1], atol=1e-6
        )


def test_flip_averages_the_mirrored_prediction(tiny_unet):
    model, variables, info = tiny_unet
    image = _image(40, 52)
    flipped = _probabilities(Predictor(model, variables, info, tile=None, flip=True), image)[1]
    logits = model.apply(variables, info.normalize(image[None]), train=False)[0]
    mirrored = model.apply(variables, info.normalize(image[None, :, ::-1]), train=False)[0]
    expected = (jax.nn.softmax(logits) + jax.nn.softmax(mirrored)[:, ::-1]) / 2
    np.testing.assert_allclose(flipped, expected, atol=1e-6)
    assert np.abs(flipped - jax.nn.softmax(logits)).max() > 1e-3  # not a no-op here


def test_scales_average_predictions_of_the_resized_image(tiny_unet):
    model, variables, info = tiny_unet
    image = _image(176, 184)  # larger than the tile at every scale
    scales = (0.75, 1.25)
    predictor = Predictor(model, variables, info, tile=None, scales=scales)
    _, probabilities = _probabilities(predictor, image)
    expected = 0
    for scale in scales:
        size = (round(176 * scale), round(184 * scale))
        resized = TileSampler(image, *size)(np.arange(size[0]), np.arange(size[1]))
        # The image is resized as jax.image.resize does, but for uint8 rounding where the
        # interpolated value is x.5 (float32 sums in another order).
        reference = jax.image.resize(
            image.astype(np.float32), (*size, 3), "bilinear", antialias=False
        )
        reference = np.clip(np.rint(reference), 0, 255)
        assert np.abs(resized - reference).max() <= 1 and np.mean(resized != reference) < 0.05
        _, at_scale = _probabilities(Predictor(model, variables, info, tile=None), resized)
        expected += jax.image.resize(at_scale, (176, 184, 3), "bilinear", antialias=False) / 2
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    tiled = Predictor(model, variables, info, tile=(128, 128), overlap=0.8, scales=scales)
    np.testing.assert_allclose(_probabilities(tiled, image)[1], probabilities, atol=1e-5)


def test_original_unet_overlap_tile_equals_its_whole_image_prediction():
    model = get_model("unet_original", num_classes=3, base_features=4, depth=2)
    variables, info = _init(model, 60), _info(3)
    image = _image(150, 201)
    whole = Predictor(model, variables, info, tile=None)
    _, expected = _probabilities(whole, image)
    # The whole-image prediction is the net on the image mirrored as `input_padding` asks.
    image_pads, label_pads = model.input_padding(150, 201)
    padded = np.pad(image, (*image_pads, (0, 0)), mode="reflect")
    logits = model.apply(variables, info.normalize(padded[None]), train=False)[0]
    (top, _), (left, _) = label_pads
    np.testing.assert_allclose(
        expected, jax.nn.softmax(logits)[top : top + 150, left : left + 201], atol=1e-6
    )
    for tile, overlap in (((60, 60), None), ((64, 80), 0.3), ((100, 100), None)):
        tiled = Predictor(model, variables, info, tile=tile, overlap=overlap, batch_size=3)
        np.testing.assert_allclose(_probabilities(tiled, image)[1], expected, atol=2e-6)
    assert Predictor(model, variables, info, tile=(60, 60)).step == (20, 20)  # abutting


def test_bad_tiles_name_the_nearest_valid_sizes(tiny_unet):
    model, variables, info = tiny_unet
    with pytest.raises(ModelInputError, match=r"tile width 66.*multiples of .* 4.*\[64, 68\]"):
        Predictor(model, variables, info, tile=(64, 66))
    with pytest.raises(ConfigError, match=r"tile='512': \(height, width\), None or 'auto'"):
        Predictor(model, variables, info, tile="512")
    # 4 is a multiple, but a 0.25 overlap leaves no step that is a multiple of 4.
    with pytest.raises(ValueError, match=r"tile height 4.*nearest valid tile sides: \[8\]"):
        Predictor(model, variables, info, tile=(4, 64))
    original = get_model("unet_original", num_classes=3, base_features=4, depth=2)
    original_variables = _init(original, 60)
    with pytest.raises(ModelInputError, match=r"tile height 50.*inputs 44, 48.*\[48, 52\]"):
        Predictor(original, original_variables, info, tile=(50, 60))
    with pytest.raises(
        ModelInputError, match=r"tile height 20: .*nearest valid tile sides: \[44\]"
    ):
        Predictor(original, original_variables, info, tile=(20, 60))
    hypercolumn = get_model("hypercolumn", num_classes=3, location_grid=2)
    with pytest.raises(ModelInputError, match="position dependent.*tile=None"):
        Predictor(hypercolumn, {}, info, tile=(64, 64))


def test_memory_is_bounded_by_the_band_not_the_image():
    """Host memory (numpy, traced) beyond the output mask stays far below the image's logits
    and does not grow with the image height."""
    model = get_model("unet", num_classes=8, base_features=4, depth=2)
    variables, info = _init(model), _info(8)
    predictor = Predictor(model, variables, info, tile=(32, 32), overlap=0.25, batch_size=4)
    predictor.predict(_image(40, 40))  # compiles

    def extra_memory(height, width):
        image = _image(height, width)
        tracemalloc.start()
        predictor.predict(image)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak - height * width  # the uint8 mask

    logits_size = 1024 * 1024 * 8 * 4  # full-resolution float32 logits: 32 MiB
    square = extra_memory(1024, 1024)  # ~3.7 MiB: a 56-row band, a finished chunk, one batch
    assert square < logits_size / 6, (square, logits_size)
    assert extra_memory(2048, 256) < 1.25 * extra_memory(512, 256)  # 4x the rows


def test_probabilities_stream_into_a_float16_memmap(tiny_unet, tmp_path):
    model, variables, info = tiny_unet
    image = _image(70, 90)
    predictor = Predictor(model, variables, info, tile=(32, 32), batch_size=2)
    path = str(tmp_path / "probabilities.npy")
    stored = np.lib.format.open_memmap(path, "w+", np.float16, (70, 90, 3))
    mask = predictor.predict(image, stored)
    stored.flush()
    reloaded = np.load(path)
    np.testing.assert_allclose(reloaded.astype(np.float32).sum(-1), 1, atol=3e-3)
    _, exact = _probabilities(predictor, image)
    np.testing.assert_allclose(reloaded, exact, atol=1e-3)
    np.testing.assert_array_equal(mask, exact.argmax(-1))


def test_tile_layout_reflection_and_windows():
    # The last tile moves back onto the grid (origin mod period) and ends past the image.
    assert tile_starts(150, 64, 48, 0, 16) == (0, 48, 96)
    assert tile_starts(100, 64, 48, 0, 16) == (0, 48)
    assert tile_starts(30, 64, 48, 0, 16) == (0,)
    assert tile_starts(150, 20, 20, -3, 4) == (*range(-3, 130, 20), 133)
    for size in (1, 2, 5):
        indices = np.arange(-13, size + 13)
        expected = np.pad(np.arange(size), 13, mode="reflect")
        np.testing.assert_array_equal(reflect(indices, size), expected)
    # Linear windows of neighbours that overlap by 32 sum to one, and are zero within 8
    # pixels of an inner edge; border edges are not tapered.
    first, second = window("linear", 64, 32, False, True), window("linear", 64, 32, True, True)
    np.testing.assert_allclose(first[32:] + second[:32], 1)
    assert (second[:8] == 0).all() and (second[-8:] == 0).all() and (first[:32] == 1).all()
    gaussian = window("gaussian", 64, 16, True, True)
    assert gaussian.argmax() in (31, 32)
    assert gaussian[0] == pytest.approx(np.exp(-0.5 * (31.5 / 8) ** 2))  # sigma = 64 / 8
    assert (window("gaussian", 64, 16, False, False) == 1).all()


def recording_network(model, info):
    """The model's network, recording the input shape each time it is traced: one trace per
    compilation of a Predictor's jitted function, whatever a persistent cache holds."""
    network, shapes = probability_network(model, info), []

    def traced(variables, images):
        shapes.append(images.shape)
        return network(variables, images)

    return traced, shapes


def test_bucket_sides_are_four_per_octave_and_multiples_of_the_model_multiple():
    assert [bucket_side(s, 4) for s in (5, 33, 64, 65, 81, 97, 100, 129, 257, 500)] == [
        8, 40, 64, 80, 96, 112, 112, 160, 320, 512
    ]  # fmt: skip
    assert {bucket_side(s, 16) for s in range(257, 513)} == {320, 384, 448, 512}
    for multiple in (1, 4, 16, 24):
        for size in range(1, 1100):
            side = bucket_side(size, multiple)
            assert side % multiple == 0 and size <= side < size * 1.25 + multiple


def test_auto_predicts_images_that_fit_whole_compiling_once_per_bucket(tiny_unet):
    model, variables, info = tiny_unet
    network, shapes = recording_network(model, info)
    auto = Predictor(model, variables, info, network=network, batch_size=4)
    assert auto.tile == (512, 512) and auto.whole_pixels == 512 * 512
    shapes.clear()  # the tile's shape check at construction
    sizes = [(112, 96), (100, 90), (97, 81), (105, 95), (60, 50), (64, 49)]
    for height, width in sizes:
        assert auto.predict(_image(height, width)).shape == (height, width)
    assert shapes == [(1, 112, 96, 3), (1, 64, 56, 3)]  # two buckets, each compiled once


def test_auto_equals_whole_image_prediction_of_images_that_fit(tiny_unet):
    model, variables, info = tiny_unet
    auto = Predictor(model, variables, info)
    whole = Predictor(model, variables, info, tile=None)
    image = _image(112, 96)  # a bucket size: nothing beyond the whole image's padding
    np.testing.assert_allclose(_probabilities(auto, image)[1], _probabilities(whole, image)[1])

    # In bucket (112, 96): the whole-image prediction of the image mirrored up to it, which
    # differs from the image's own only within the receptive field (~24 pixels) of the
    # bottom/right border, as the whole image's own padding (to 100 x 92) does.
    image = _image(100, 90)
    _, probabilities = _probabilities(auto, image)
    mirrored = np.pad(image, ((0, 12), (0, 6), (0, 0)), mode="reflect")
    _, expected = _probabilities(whole, mirrored)
    np.testing.assert_allclose(probabilities, expected[:100, :90], atol=1e-6)
    _, own = _probabilities(whole, image)
    np.testing.assert_allclose(probabilities[:76, :66], own[:76, :66], atol=1e-6)
    assert np.abs(probabilities - own).max() > 1e-3  # near the border: not a no-op


def test_auto_whole_images_of_the_original_unet_are_exact():
    """A model with input padding sees mirrored context beyond the image border however far
    the padding extends, so its bucketed prediction equals its whole-image prediction."""
    model = get_model("unet_original", num_classes=3, base_features=4, depth=2)
    variables, info = _init(model, 60), _info(3)
    network, shapes = recording_network(model, info)
    auto = Predictor(model, variables, info, network=network)
    whole = Predictor(model, variables, info, tile=None)
    shapes.clear()
    for height, width in ((150, 201), (145, 197)):
        image = _image(height, width)
        np.testing.assert_allclose(
            _probabilities(auto, image)[1], _probabilities(whole, image)[1], atol=1e-6
        )
    assert len(shapes) == 1  # one bucket (160, 224)


class GlobalMeanNet(SegmentationModel):
    """A 3x3 convolution plus the image mean of its features: image-level context."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.relu(x + x.mean(axis=(1, 2), keepdims=True))
        return nn.Conv(self.num_classes, (1, 1))(x)

    def global_context(self) -> bool:
        return True


def test_auto_pads_models_with_global_context_only_as_whole_images_do():
    model, info = GlobalMeanNet(num_classes=3), _info(3)
    variables = _init(model)
    network, shapes = recording_network(model, info)
    auto = Predictor(model, variables, info, network=network)
    whole = Predictor(model, variables, info, tile=None)
    shapes.clear()
    image = _image(45, 70)  # its bucket would be (48, 80)
    _, probabilities = _probabilities(auto, image)
    assert shapes == [(1, 45, 70, 3)]
    np.testing.assert_allclose(probabilities, _probabilities(whole, image)[1], atol=1e-6)
    # Mirroring it up to the bucket would have changed the mean, so every pixel.
    mirrored = np.pad(image, ((0, 3), (0, 10), (0, 0)), mode="reflect")
    _, bucketed = _probabilities(whole, mirrored)
    assert np.abs(bucketed[:10, :10] - probabilities[:10, :10]).max() > 1e-4


def test_auto_tiles_images_larger_than_a_tile_as_that_tile_does(tiny_unet):
    model, variables, info = tiny_unet
    network, shapes = recording_network(model, info)
    auto = Predictor(model, variables, info, network=network, batch_size=4)
    image = _image(600, 520)  # bucket (640, 576): more pixels than the 512 x 512 tile
    assert auto._layout(600, 520).count == 4
    shapes.clear()
    mask, probabilities = _probabilities(auto, image)
    assert shapes == [(4, 512, 512, 3)]
    tiled = Predictor(model, variables, info, tile=(512, 512), batch_size=4)
    expected_mask, expected = _probabilities(tiled, image)
    np.testing.assert_array_equal(probabilities, expected)
    np.testing.assert_array_equal(mask, expected_mask)
