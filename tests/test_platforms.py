"""platforms.per_platform: both forms in a traced function, or, inside plain_lax_forms(),
the plain lax form alone (what the ONNX converter traces)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.models import get_model
from jaxseg.models.conv_transpose import conv_transpose, lax_conv_transpose
from jaxseg.models.encoders.mit import attention
from jaxseg.models.platforms import per_platform, plain_lax_forms, tracing_plain_lax
from jaxseg.models.small_conv import conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")


def _jaxpr(f, *args) -> str:
    """The jaxpr of a fresh function calling `f` (make_jaxpr caches by function)."""
    return str(jax.make_jaxpr(lambda *args: f(*args))(*args))


def test_the_switch_applies_inside_only_and_is_restored():
    def choose(x):
        return per_platform(x, cpu=lambda x: x + 1, default=lambda x: x * 2)

    assert "platform_index" in _jaxpr(choose, 3.0)
    assert float(choose(3.0)) == 4.0  # the CPU form runs here
    with plain_lax_forms():
        assert tracing_plain_lax()
        assert "platform_index" not in _jaxpr(choose, 3.0)
        assert float(choose(3.0)) == 6.0  # the default form, even on CPU
    assert not tracing_plain_lax()
    assert float(choose(3.0)) == 4.0


def test_every_rewrite_traces_its_plain_form_alone():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 2, 2, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32)
    up_kernel = jnp.asarray(rng.normal(size=(4, 4, 4, 5)), jnp.float32)
    q = jnp.asarray(rng.normal(size=(1, 4, 2, 8)), jnp.bfloat16)

    def small_conv(x, kernel):
        return conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)

    def upsample(x, kernel):
        return conv_transpose(x, kernel, 2, 1)

    cases = [(small_conv, (x, kernel)), (upsample, (x, up_kernel))]
    for f, args in cases:
        assert "platform_index" in _jaxpr(f, *args)
        with plain_lax_forms():
            assert "platform_index" not in _jaxpr(f, *args)
    with plain_lax_forms():  # cuDNN attention, where it is installed, is never traced
        assert "platform_index" not in _jaxpr(attention, q, q, q)
    with plain_lax_forms():
        np.testing.assert_array_equal(
            upsample(x, up_kernel), lax_conv_transpose(x, up_kernel, 2, 1)
        )


def test_no_model_leaves_a_platform_choice_in_plain_form():
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    models = [("fcn8s", {"encoder": "resnet18", "remat": "blocks"}), ("unet", {"base_features": 4})]
    for name, options in models:
        model = get_model(name, num_classes=2, **options)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        assert "platform_index" in _jaxpr(model.apply, variables, x)
        with plain_lax_forms():
            assert "platform_index" not in _jaxpr(model.apply, variables, x)
