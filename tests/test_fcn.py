import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.errors import ConfigError
from jaxseg.models import get_model
from jaxseg.run.state import count_params


def _abstract(model, height, width):
    x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)
    return variables, out


@pytest.mark.parametrize(
    "name, expected", [("fcn32s", 136_152_917), ("fcn16s", 134_815_994), ("fcn8s", 134_489_759)]
)
@pytest.mark.parametrize("alignment", ["same", "caffe"])
def test_vgg16_fcn_parameter_counts(name, expected, alignment):
    variables, _ = _abstract(get_model(name, num_classes=21, alignment=alignment), 64, 64)
    assert count_params(variables["params"]) == expected


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_output_size_equals_input_size(name):
    _, out = _abstract(get_model(name, num_classes=3), 64, 96)
    assert out.shape == (1, 64, 96, 3)
    # Caffe alignment takes any size: 100-pixel padding, then crops.
    for size in ((500, 500), (37, 61), (224, 227)):
        _, out = _abstract(get_model(name, num_classes=21, alignment="caffe"), *size)
        assert out.shape == (1, *size, 21)


def test_fcn_on_resnet_uses_layer_strides():
    model = get_model("fcn8s", num_classes=4, encoder="resnet18")
    variables, out = _abstract(model, 64, 64)
    assert out.shape == (1, 64, 64, 4)
    params = variables["params"]
    assert params["score_stride16"]["conv"]["kernel"].shape == (1, 1, 256, 4)
    assert params["score_stride8"]["conv"]["kernel"].shape == (1, 1, 128, 4)
    assert params["upscore8"]["kernel"].shape == (16, 16, 4, 4)


def test_sizes_not_divisible_by_the_stride_name_the_nearest():
    with pytest.raises(
        ValueError,
        match=r"input height 70 is not divisible by the output stride"
        r" 32; nearest valid sizes: \[64, 96\]",
    ):
        _abstract(get_model("fcn8s", num_classes=2), 70, 64)


def test_caffe_alignment_needs_an_encoder_with_a_caffe_form_and_transposed_convs():
    """Refused when the model is built (get_model), not at init."""
    with pytest.raises(ConfigError, match="encoder 'resnet18' has no Caffe form \\(vgg16 has\\)"):
        get_model("fcn8s", num_classes=2, encoder="resnet18", alignment="caffe")
    with pytest.raises(ConfigError, match="reproduces the reference nets' transposed-conv"):
        get_model("fcn8s", num_classes=2, upsample="resize", alignment="caffe")


def test_score_layers_start_at_zero_and_upsamplers_bilinear():
    model = get_model("fcn16s", num_classes=3, encoder="resnet18")
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)
    np.testing.assert_array_equal(jax.jit(model.apply)(variables, x), 0)
    kernel = variables["params"]["upscore_stride16"]["kernel"]
    np.testing.assert_allclose(
        kernel[:, :, 0, 0], np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
    )
    assert float(jnp.abs(kernel[:, :, 0, 1]).sum()) == 0


def test_skip_scales_scale_the_skip_path():
    """At-once FCN: scaling pool4 by s scales its (linear) score contribution by s."""
    model = get_model("fcn16s", num_classes=2, encoder="resnet18", upsample="resize")
    scaled = get_model(
        "fcn16s", num_classes=2, encoder="resnet18", upsample="resize", skip_scales=(0.01,)
    )
    x = jax.random.normal(jax.random.key(0), (1, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)
    params = jax.tree.map(lambda a: a, variables["params"])
    params["score_stride16"]["conv"]["kernel"] = jax.random.normal(
        jax.random.key(2), (1, 1, 256, 2)
    )
    variables = {**variables, "params": params}  # score_fr stays 0: only the skip path speaks
    full = jax.jit(model.apply)(variables, x)
    small = jax.jit(scaled.apply)(variables, x)
    assert float(jnp.abs(full).max()) > 0
    np.testing.assert_allclose(small, 0.01 * full, rtol=1e-4, atol=1e-6)
