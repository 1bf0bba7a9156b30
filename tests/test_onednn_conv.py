"""onednn_conv: oneDNN's convolutions (onednn_calls), opt-in, equal to lax's convolution in
values and both gradients, kept out of what cannot take it (exports, meshes, other dtypes),
and cached by JAX like any other program."""

import importlib.metadata
import logging
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export, lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxseg.errors import ConfigError
from jaxseg.models import onednn_calls, onednn_conv
from jaxseg.models.onednn_conv import onednn_convolutions
from jaxseg.models.platforms import plain_lax_forms, portable_forms, xla_options
from jaxseg.models.remat import _save_conv_outputs
from jaxseg.models.small_conv import conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")
CALL = re.compile(r'custom_call_target="jaxseg_onednn_convolution"')

try:
    importlib.metadata.version(onednn_calls.DISTRIBUTION)
except importlib.metadata.PackageNotFoundError:
    pytest.skip(f"{onednn_calls.DISTRIBUTION} is not installed", allow_module_level=True)

# (input (H, W, C), kernel (kh, kw, O), stride, padding, dilation, oneDNN calls in forward +
# backward): the convolutions jaxseg's models run on maps larger than 4x4.
CASES = [
    pytest.param((9, 11, 5), (3, 3, 7), 1, "SAME", 1, 3, id="3x3-same"),
    pytest.param((12, 10, 4), (3, 3, 6), 1, "VALID", 1, 3, id="3x3-valid-paper-unet"),
    pytest.param((11, 9, 5), (3, 3, 8), 2, ((1, 1), (1, 1)), 1, 3, id="3x3-stride2"),
    pytest.param((16, 14, 5), (3, 3, 6), 1, ((2, 2), (2, 2)), 2, 3, id="3x3-dilated2"),
    pytest.param((15, 13, 3), (7, 7, 8), 2, ((3, 3), (3, 3)), 1, 3, id="7x7-stride2-stem"),
    pytest.param((10, 10, 4), (1, 1, 40), 1, "VALID", 1, 3, id="1x1"),
    pytest.param((9, 8, 5), (3, 3, 7), 1, ((0, 1), (2, 0)), 1, 3, id="uneven-padding"),
    # FCN's first layer: padded beyond the kernel, which oneDNN would run only by its GEMM
    # form (onednn_calls): all three are XLA's.
    pytest.param((12, 12, 3), (3, 3, 40), 1, ((5, 5), (5, 5)), 1, 0, id="padded-beyond"),
]


def _inputs(input_shape, kernel_shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, *input_shape)).astype(np.float32)
    kh, kw, outputs = kernel_shape
    kernel = rng.normal(size=(kh, kw, input_shape[-1], outputs)).astype(np.float32)
    return jnp.asarray(x), jnp.asarray(kernel)


def _conv(conv, stride, padding, dilation):
    def apply(x, kernel):
        numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC)
        return conv(
            x, kernel, (stride, stride), padding, rhs_dilation=(dilation, dilation),
            dimension_numbers=numbers,
        )  # fmt: skip

    return apply


def _loss(conv):
    return jax.value_and_grad(lambda x, kernel: jnp.sum(jnp.sin(conv(x, kernel))), (0, 1))


def _calls(function, *args) -> int:
    """oneDNN convolutions in `function`'s program compiled now (within the context if open)."""
    text = jax.jit(function, compiler_options=xla_options()).lower(*args).compile().as_text()
    return len(CALL.findall(text))


def test_the_library_runs_here():
    assert onednn_calls.available()


@pytest.mark.parametrize("input_shape, kernel_shape, stride, padding, dilation, calls", CASES)
def test_values_and_gradients_equal_lax(
    input_shape, kernel_shape, stride, padding, dilation, calls
):
    x, kernel = _inputs(input_shape, kernel_shape)
    ours = _loss(_conv(conv_general_dilated, stride, padding, dilation))
    reference = _loss(_conv(lax.conv_general_dilated, stride, padding, dilation))
    with onednn_convolutions():
        got = jax.jit(ours, compiler_options=xla_options())(x, kernel)
        assert _calls(ours, x, kernel) == calls
    want = jax.jit(reference)(x, kernel)
    # The same products summed in another order: float32 rounding apart; a wrong tap,
    # offset or axis is off by the values' own size.
    for got_part, want_part in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        want_part = np.asarray(want_part)
        np.testing.assert_allclose(got_part, want_part, atol=2e-5 * np.abs(want_part).max())


def test_only_within_the_context_and_never_where_it_cannot_go():
    x, kernel = _inputs((9, 11, 8), (3, 3, 8))
    conv = _conv(conv_general_dilated, 1, "SAME", 1)
    assert _calls(_loss(conv), x, kernel) == 0  # opt-in: XLA's convolutions by default
    with onednn_convolutions():
        assert _calls(_loss(conv), x, kernel) == 3
        with plain_lax_forms():  # what the ONNX converter traces
            assert _calls(_loss(conv), x, kernel) == 0
        with portable_forms():  # what export.py traces
            assert _calls(_loss(conv), x, kernel) == 0
        # Other dtypes (XLA:CPU converts bfloat16 around its convolutions anyway), grouped
        # convolutions (depthwise: shifted multiply-adds) and tiny maps (im2col) keep theirs.
        assert _calls(conv, x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)) == 0
        depthwise = jnp.zeros((3, 3, 1, 8), jnp.float32)

        def grouped(x, kernel):
            numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC)
            return conv_general_dilated(
                x, kernel, (1, 1), "SAME", dimension_numbers=numbers, feature_group_count=8
            )

        assert _calls(grouped, x, depthwise) == 0
        assert _calls(conv, x[:, :3, :3], kernel) == 0
        # A kernel with at least as many outputs as the map has positions (VGG's fc6 and fc7
        # in FCN, the U-Net's bottom level): oneDNN reorders the kernel at every call.
        wide = jnp.zeros((3, 3, 8, 198), jnp.float32)  # 2 x 9 x 11 = 198 positions
        assert _calls(conv, x, wide) == 0
        assert _calls(conv, x, wide[..., :197]) == 1
    # export.py traces within portable_forms (another XLA need not have the call).
    with onednn_convolutions(), portable_forms():
        exported = export.export(jax.jit(conv), platforms=("cpu",))(x, kernel)
    assert onednn_calls.TARGET not in exported.mlir_module()


def test_a_mesh_and_pmap_over_several_devices_get_xlas_convolution():
    devices = jax.devices()
    assert len(devices) == 4  # conftest's fake CPU devices
    x, kernel = _inputs((9, 11, 5), (3, 3, 6))
    x = jnp.concatenate([x, x + 1])  # batch 4
    conv = _conv(conv_general_dilated, 1, "SAME", 1)
    want = np.asarray(_conv(lax.conv_general_dilated, 1, "SAME", 1)(x, kernel))
    sharded = jax.device_put(
        x, NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))
    )
    with onednn_convolutions():
        # XLA's partitioner cannot split a custom call it does not know: XLA's convolution.
        assert _calls(conv, sharded, kernel) == 0
        np.testing.assert_allclose(jax.jit(conv)(sharded, kernel), want, rtol=1e-5, atol=1e-4)
        # pmap over several devices too: a callback waiting for Python's lock deadlocked
        # against another device's all-reduce (onednn_calls); over one device, oneDNN's.
        mapped = jax.pmap(conv, in_axes=(0, None))
        assert len(CALL.findall(mapped.lower(x[:, None], kernel).compile().as_text())) == 0
        one = jax.pmap(conv, in_axes=(0, None), devices=devices[:1])
        assert len(CALL.findall(one.lower(x[:1, None], kernel).compile().as_text())) == 1
        got = mapped(x[:, None], kernel)[:, 0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_remat_keeps_its_outputs_as_it_keeps_xlas_convolutions():
    assert _save_conv_outputs(onednn_calls.convolution_p)
    assert _save_conv_outputs(lax.conv_general_dilated_p)


def test_the_trainer_uses_it_by_default_and_when_the_config_asks(data_dir):
    from helpers import tiny_config

    from jaxseg.run import build_run

    losses, calls, operations = {}, {}, {}
    for choice in ("xla", "onednn", "auto"):
        config = tiny_config(data_dir)
        config.train.num_devices = 1  # one device: a mesh of several keeps XLA's convolutions
        config.train.cpu_convolutions = choice
        run = build_run(config, parallelism="mesh")
        state, batches = run.init_state(), run.train_batches()
        batch = run.layout.put_batch(next(batches))
        # auto: oneDNN, which works here (test_the_library_runs_here). The step's own `lower`
        # (AOT) traces within the context too.
        text = run.train_step.lower(state, batch, run.step_rng).compile().as_text()
        calls[choice] = len(CALL.findall(text))
        operations[choice] = set(re.findall(r'"operation":"(\w+)"', text))
        _, metrics = run.train_step(state, batch, run.step_rng)
        losses[choice] = float(metrics["loss_sum"])
    assert calls["xla"] == 0 and calls["onednn"] == calls["auto"] > 0
    assert operations["onednn"] == set(onednn_calls.OPERATIONS)  # both gradients too
    assert losses["onednn"] == pytest.approx(losses["xla"], rel=1e-4)
    assert losses["auto"] == losses["onednn"]
    config.train.cpu_convolutions = "mkldnn"
    with pytest.raises(ConfigError, match="train.cpu_convolutions"):
        build_run(config)


def test_under_vmap_it_is_xlas_convolution_vmapped():
    x, kernel = _inputs((9, 11, 5), (3, 3, 6))
    conv = _conv(conv_general_dilated, 1, "SAME", 1)
    want = _conv(lax.conv_general_dilated, 1, "SAME", 1)(x, kernel)
    with onednn_convolutions():
        got = jax.jit(jax.vmap(conv, in_axes=(0, None)))(x[:, None], kernel)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-4)


def test_auto_is_onednn_on_a_cpu_backend_where_it_works(monkeypatch):
    assert onednn_conv.chosen("auto") and onednn_conv.chosen("onednn")
    assert not onednn_conv.chosen("xla")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not onednn_conv.chosen("auto") and onednn_conv.chosen("onednn")
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    monkeypatch.setattr(onednn_calls, "available", lambda: False)
    assert not onednn_conv.chosen("auto")


def test_asking_for_it_where_it_is_not_available_warns(monkeypatch, caplog):
    monkeypatch.setattr(onednn_calls, "available", lambda: False)
    with caplog.at_level(logging.WARNING):
        step = onednn_conv.with_onednn_convolutions(lambda x: x + 1)
    assert "train.cpu_convolutions='onednn'" in caplog.text
    assert onednn_calls.DISTRIBUTION in caplog.text
    assert step(1) == 2
    x, kernel = _inputs((9, 11, 8), (3, 3, 8))
    with onednn_convolutions():  # and XLA's convolutions are what it gets
        assert _calls(_conv(conv_general_dilated, 1, "SAME", 1), x, kernel) == 0
