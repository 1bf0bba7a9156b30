"""platforms.per_platform: both forms in a traced function, or, inside plain_lax_forms(),
the plain lax form alone (what the ONNX converter traces)."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.models import get_model
from jaxseg.models.conv_transpose import conv_transpose, lax_conv_transpose
from jaxseg.models.encoders.mit import attention
from jaxseg.models.platforms import (
    CPU_OPTIONS,
    per_platform,
    plain_lax_forms,
    tracing_plain_lax,
    xla_options,
)
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


def _library_convolutions(compiled) -> int:
    """YNNPACK's convolution fusions in a compiled CPU program: a ynn fusion that computes a
    convolution and no dot (a dot's fusion may also take in the convolutions before it)."""
    text = compiled.as_text()
    bodies = dict(re.findall(r"^(%\S+) [^\n]*\{\n(.*?)\n\}", text, flags=re.M | re.S))
    called = [
        bodies.get(name, "")
        for name in re.findall(r"ynn_fusion[.\d]* = .*?calls=(%[\w.\-]+)", text)
    ]
    return sum(" convolution(" in body and " dot(" not in body for body in called)


def _conv(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC)


def test_xla_options_are_cpus_and_off_inside_the_switch():
    assert xla_options() == CPU_OPTIONS  # these tests run on CPU
    assert xla_options("cpu") == CPU_OPTIONS and xla_options("gpu") is None
    xla_options()["xla_cpu_experimental_ynn_fusion_type"] = "changed"  # a copy each time
    assert xla_options() == CPU_OPTIONS
    with plain_lax_forms():
        assert xla_options() is None


def test_convolutions_are_xlas_own_under_the_options_with_the_same_values():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 16, 16, 64)), jnp.float32)
    k = jnp.asarray(0.1 * rng.normal(size=(3, 3, 64, 64)), jnp.float32)
    plain = jax.jit(_conv).lower(x, k).compile()
    ours = jax.jit(_conv, compiler_options=xla_options()).lower(x, k).compile()
    assert _library_convolutions(plain) == 1  # XLA's default: YNNPACK's convolution
    assert _library_convolutions(ours) == 0
    np.testing.assert_allclose(ours(x, k), plain(x, k), rtol=1e-5, atol=1e-5)


def test_jaxseg_compiles_steps_and_predictions_with_the_options(data_dir):
    from helpers import tiny_config

    from jaxseg.evaluation.evaluate import _predictor
    from jaxseg.inference import Predictor
    from jaxseg.run import build_run
    from jaxseg.run.step import variables_of

    config = tiny_config(data_dir)
    config.train.cpu_convolutions = "xla"  # XLA's convolutions, under the options (the
    # default's oneDNN calls: test_onednn_conv)
    run = build_run(config, parallelism="mesh")
    state = run.init_state()
    batch = run.layout.put_batch(
        {"image": np.zeros((8, 32, 32, 3), np.uint8), "mask": np.zeros((8, 32, 32), np.int32)}
    )
    variables = variables_of(state)
    compiled = {
        "eval step": run.eval_step.lower(variables, batch).compile(),
        "train step": run.train_step.lower(state, batch, run.step_rng).compile(),
    }
    images = np.zeros((2, 32, 32, 3), np.uint8)
    compiled["evaluation grids"] = (
        _predictor(run.model, run.info).lower(variables, images).compile()
    )
    predictor = Predictor(run.model, variables, run.info, tile=(32, 32), batch_size=2)
    weights = np.ones((2, 32), np.float32)
    compiled["tiles"] = predictor._network.lower(variables, images, weights, weights).compile()
    for what, program in compiled.items():
        assert " convolution(" in program.as_text(), what
        assert _library_convolutions(program) == 0, what
