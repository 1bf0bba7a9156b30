import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models.upsample import (
    ResizeUpsample,
    TransposedConvUpsample,
    bilinear_filter,
    nearest_indices,
    resize,
)


def _torch_bilinear(x, out_h, out_w, align_corners):
    """PyTorch's F.interpolate(mode="bilinear") in numpy, for an (H, W) map."""
    in_h, in_w = x.shape

    def source(n_out, n_in):
        j = np.arange(n_out, dtype=np.float64)
        if align_corners:
            return j * (n_in - 1) / (n_out - 1) if n_out > 1 else np.zeros(n_out)
        return np.maximum((j + 0.5) * n_in / n_out - 0.5, 0)

    def weights(n_out, n_in):
        src = source(n_out, n_in)
        low = np.minimum(np.floor(src).astype(int), n_in - 1)
        high = np.minimum(low + 1, n_in - 1)
        frac = src - low
        matrix = np.zeros((n_out, n_in))
        np.add.at(matrix, (np.arange(n_out), low), 1 - frac)
        np.add.at(matrix, (np.arange(n_out), high), frac)
        return matrix

    return weights(out_h, in_h) @ x @ weights(out_w, in_w).T


def test_bilinear_filter_is_fcns():
    np.testing.assert_allclose(
        bilinear_filter(4), np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
    )
    np.testing.assert_allclose(bilinear_filter(3), np.outer([0.5, 1, 0.5], [0.5, 1, 0.5]))


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_matches_pytorch_convention(align_corners):
    x = np.random.default_rng(0).normal(size=(5, 7)).astype(np.float32)
    for out_h, out_w in ((10, 14), (13, 9), (3, 4)):
        got = resize(jnp.asarray(x)[None, ..., None], out_h, out_w, align_corners=align_corners)
        np.testing.assert_allclose(
            got[0, ..., 0], _torch_bilinear(x, out_h, out_w, align_corners), atol=1e-5
        )


def test_nearest_copies_the_pixel_whose_cell_holds_each_centre():
    for size_in in range(1, 13):
        for size_out in range(1, 29):
            centres = [(j + 0.5) * size_in / size_out for j in range(size_out)]
            cells = [int(np.floor(c + 1e-9)) for c in centres]  # exact ties go up
            np.testing.assert_array_equal(nearest_indices(size_in, size_out), cells)
    # Gathered in both axes; jax.image.resize's float32 rule agrees wherever no centre lies
    # exactly on a cell border that its rounding misses (sizes 2 -> 41 do: output 20).
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 10, 3)), jnp.float32)
    for out_h, out_w in ((12, 20), (3, 5), (24, 7), (6, 4)):
        np.testing.assert_array_equal(
            resize(x, out_h, out_w, "nearest"),
            jax.image.resize(x, (2, out_h, out_w, 3), "nearest", antialias=False),
        )
    assert nearest_indices(2, 41)[20] == 1
    assert jax.image.resize(jnp.arange(2.0), (41,), "nearest")[20] == 0


def test_nearest_align_corners_is_rejected():
    with pytest.raises(ValueError, match="align_corners=True is defined for bilinear"):
        resize(jnp.zeros((1, 2, 2, 1)), 4, 4, "nearest", align_corners=True)


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_bilinear_transposed_conv_equals_resize_in_the_interior(factor):
    x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
    module = TransposedConvUpsample(factor)
    variables = module.init(jax.random.key(1), x)
    upsampled = module.apply(variables, x)
    resized = resize(x, 5 * factor, 6 * factor)
    assert upsampled.shape == resized.shape == (2, 5 * factor, 6 * factor, 3)
    border = factor // 2
    np.testing.assert_allclose(
        upsampled[:, border:-border, border:-border],
        resized[:, border:-border, border:-border],
        atol=1e-5,
    )
    # Borders: the transposed conv sees zeros beyond the edge, so on a constant
    # map it darkens towards the edge, while resize stays exact.
    ones = jnp.ones((1, 5, 6, 1))
    constant = TransposedConvUpsample(factor, trainable=False).apply({}, ones)
    np.testing.assert_allclose(resize(ones, 5 * factor, 6 * factor), 1.0, atol=1e-6)
    np.testing.assert_allclose(constant[:, border:-border, border:-border], 1.0, atol=1e-5)
    assert float(constant[0, 0, 0, 0]) < 0.6


def test_frozen_upsampler_has_no_parameters_learnable_one_gets_gradients():
    x = jax.random.normal(jax.random.key(0), (1, 4, 4, 2))
    assert TransposedConvUpsample(2, trainable=False).init(jax.random.key(0), x) == {}
    module = TransposedConvUpsample(2)
    params = module.init(jax.random.key(0), x)
    assert params["params"]["kernel"].shape == (4, 4, 2, 2)
    grads = jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2))(params)
    assert float(jnp.abs(grads["params"]["kernel"]).sum()) > 0


def test_caffe_padding_gives_the_uncropped_size():
    x = jnp.ones((1, 16, 16, 21))
    assert TransposedConvUpsample(2, padding=0, trainable=False).apply({}, x).shape == (
        1,
        34,
        34,
        21,
    )
    assert TransposedConvUpsample(8, padding=0, trainable=False).apply(
        {}, jnp.ones((1, 70, 70, 1))
    ).shape == (
        1,
        568,
        568,
        1,
    )


def test_resize_conv_changes_channels():
    x = jnp.ones((1, 4, 4, 8))
    module = ResizeUpsample(2, features=3, conv_size=3)
    variables = module.init(jax.random.key(0), x)
    assert module.apply(variables, x).shape == (1, 8, 8, 3)
    assert variables["params"]["Conv_0"]["kernel"].shape == (3, 3, 8, 3)


def test_resize_without_conv_has_no_parameters_and_a_channel_change_adds_a_1x1_conv():
    x = jnp.ones((1, 4, 4, 8))
    assert ResizeUpsample(2).init(jax.random.key(0), x) == {}
    variables = ResizeUpsample(2, features=4).init(jax.random.key(0), x)
    assert variables["params"]["Conv_0"]["kernel"].shape == (1, 1, 8, 4)
