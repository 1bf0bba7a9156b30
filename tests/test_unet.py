import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import get_model, model_names, model_options
from jaxseg.models.unet import unet_input_size, unet_output_size, unet_tile_padding
from jaxseg.run.state import count_params


def _param_count(model, size):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))
    return count_params(variables["params"])


def test_modern_unet_parameter_count_matches_reference():
    # milesial/Pytorch-UNet UNet(3, 2, bilinear=False): 31,037,698 trainable parameters.
    assert _param_count(get_model("unet", num_classes=2), 64) == 31_037_698


def test_original_unet_parameter_count():
    # Paper's net with biases, no normalisation: the BN scale/shift pairs become biases.
    model = get_model("unet_original", num_classes=2)
    assert _param_count(model, 572) == 31_031_810


@pytest.mark.parametrize("upsample", ["transposed", "resize"])
def test_modern_unet_output_shape_and_finite_gradients(upsample):
    model = get_model("unet", num_classes=3, base_features=4, depth=3, upsample=upsample)
    x = jax.random.normal(jax.random.key(0), (2, 32, 48, 3))
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            train=True,
            mutable=["batch_stats"],
        )
        return jnp.mean(logits**2), logits

    (value, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    assert logits.shape == (2, 32, 48, 3)
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_original_unet_572_gives_388():
    model = get_model("unet_original", num_classes=2)
    x = jax.ShapeDtypeStruct((1, 572, 572, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.shape == (1, 388, 388, 2)


def test_original_unet_small_input_runs():
    model = get_model("unet_original", num_classes=2, base_features=2, depth=2)
    size = unet_input_size(8, depth=2)
    x = jnp.zeros((1, size, size, 1))
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    assert jax.jit(model.apply)(variables, x).shape == (1, 8, 8, 2)


def test_size_helpers_are_inverse():
    assert unet_output_size(572) == 388
    assert unet_input_size(388) == 572
    for depth in (2, 3, 4):
        for output in (4, 12, 100, 388):
            try:
                size = unet_input_size(output, depth)
            except ValueError:
                continue
            assert unet_output_size(size, depth) == output


def test_invalid_sizes_name_the_nearest_valid_ones():
    with pytest.raises(ValueError, match=r"nearest valid input sizes: \[556, 572\]"):
        unet_output_size(570)
    with pytest.raises(ValueError, match=r"nearest valid sizes: \[96, 112\]"):
        unet_output_size(100, padding="SAME")
    with pytest.raises(ValueError, match=r"nearest valid output sizes: \[388, 404\]"):
        unet_input_size(390)
    model = get_model("unet", num_classes=2, base_features=2)
    with pytest.raises(
        ValueError,
        match=r"input height 40 is not divisible by the output stride 16;"
        r" nearest valid sizes: \[32, 48\]",
    ):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 40, 40, 3)))


def test_registry_errors_list_what_is_allowed():
    assert {"unet", "unet_original"} <= set(model_names())
    with pytest.raises(ValueError, match=r"unknown model .unetz.; available: \["):
        get_model("unetz", num_classes=2)
    with pytest.raises(ValueError, match=r"no option\(s\) \['widht'\]; its options are"):
        get_model("unet", num_classes=2, widht=3)
    assert "base_features" in model_options("unet")


@pytest.mark.parametrize("encoder", ["resnet18", "vgg16"])
def test_unet_on_other_encoders_gives_input_size(encoder):
    model = get_model("unet", num_classes=3, encoder=encoder)
    x = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    assert out.shape == (1, 64, 96, 3)
    assert "encoder" in variables["params"] and "decoder0" in variables["params"]


def test_tile_padding_makes_the_output_cover_the_labels():
    image_pads, label_pads = unet_tile_padding(64, 70, depth=4)
    for side, (image_pad, label_pad) in zip((64, 70), zip(image_pads, label_pads)):
        tile, output = side + sum(image_pad), side + sum(label_pad)
        assert unet_output_size(tile) == output >= side
        # the output is the tile's centre: image and label offsets agree
        assert image_pad[0] - label_pad[0] == (tile - output) // 2
    assert unet_tile_padding(388, 388) == (((92, 92), (92, 92)), ((0, 0), (0, 0)))
