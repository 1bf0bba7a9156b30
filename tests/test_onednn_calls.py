"""onednn_calls: oneDNN's convolution (forward, input gradient, kernel gradient) called from
XLA:CPU by a custom call; equal to XLA's, kept out of programs it cannot go in, stored in
JAX's persistent cache, and loud (NaN and a logged error) when it fails at run time."""

import importlib.metadata
import logging
import platform
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxseg.models import onednn_calls
from jaxseg.models.onednn_calls import OPERATIONS

CALL = re.compile(r'custom_call_target="jaxseg_onednn_convolution"')

try:
    importlib.metadata.version(onednn_calls.DISTRIBUTION)
    INSTALLED = True
except importlib.metadata.PackageNotFoundError:
    INSTALLED = False
needs_library = pytest.mark.skipif(
    not INSTALLED, reason=f"{onednn_calls.DISTRIBUTION} is not installed (x86-64 Linux only)"
)

# (input (H, W, C), kernel (kh, kw, O), strides, pads, dilation): the windows of jaxseg's
# models (3x3 same / valid / strided / dilated, ResNet's 7x7 stem, 1x1, uneven padding).
WINDOWS = [
    pytest.param((9, 11, 5), (3, 3, 7), (1, 1), ((1, 1), (1, 1)), (1, 1), id="3x3-same"),
    pytest.param((12, 10, 4), (3, 3, 6), (1, 1), ((0, 0), (0, 0)), (1, 1), id="3x3-valid"),
    pytest.param((11, 9, 5), (3, 3, 8), (2, 2), ((1, 1), (1, 1)), (1, 1), id="3x3-stride2"),
    pytest.param((16, 14, 5), (3, 3, 6), (1, 1), ((2, 2), (2, 2)), (2, 2), id="3x3-dilated2"),
    pytest.param((15, 13, 3), (7, 7, 8), (2, 2), ((3, 3), (3, 3)), (1, 1), id="7x7-stem"),
    pytest.param((10, 10, 4), (1, 1, 40), (1, 1), ((0, 0), (0, 0)), (1, 1), id="1x1"),
    pytest.param((9, 8, 5), (3, 3, 7), (1, 1), ((0, 1), (2, 0)), (1, 1), id="uneven-pads"),
]
SAME = ((1, 1), ((1, 1), (1, 1)), (1, 1))  # strides, pads, dilation


def _operands(input_shape, kernel_shape, strides, pads, dilation, seed=0):
    """{operation: (its two operands, its output's shape)} for a convolution of this window."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, *input_shape)).astype(np.float32)
    kh, kw, outputs = kernel_shape
    kernel = rng.normal(size=(kh, kw, input_shape[-1], outputs)).astype(np.float32)
    out = jax.eval_shape(
        lambda x, k: lax.conv_general_dilated(
            x, k, strides, pads, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC")
        ),
        x,
        kernel,
    )
    dy = rng.normal(size=out.shape).astype(np.float32)
    x, kernel, dy = map(jnp.asarray, (x, kernel, dy))
    return {
        "forward": ((x, kernel), dy.shape),
        "input_gradient": ((dy, kernel), x.shape),
        "kernel_gradient": ((x, dy), kernel.shape),
    }


def _functions(operation, out_shape, strides, pads, dilation):
    """(oneDNN's, XLA's) function of the operation's two operands."""
    params = dict(
        operation=operation, out_shape=tuple(out_shape), strides=strides, pads=pads,
        dilation=dilation,
    )  # fmt: skip

    def ours(a, b):
        return onednn_calls.convolution_p.bind(a, b, **params)

    def xla(a, b):
        return onednn_calls._xla(a, b, **params)

    return ours, xla


def _calls(function, *args) -> int:
    return len(CALL.findall(jax.jit(function).lower(*args).compile().as_text()))


@needs_library
def test_the_library_loads_and_its_convolutions_are_available():
    if platform.machine() != "x86_64" or sys.platform != "linux":
        pytest.skip("the wheel is for x86-64 Linux")
    assert onednn_calls.library() is not None
    assert onednn_calls.available()


@needs_library
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("input_shape, kernel_shape, strides, pads, dilation", WINDOWS)
def test_values_equal_xlas(input_shape, kernel_shape, strides, pads, dilation, operation):
    window = (strides, pads, dilation)
    operands, out_shape = _operands(input_shape, kernel_shape, *window)[operation]
    assert onednn_calls.usable(*operands)
    ours, xla = _functions(operation, out_shape, *window)
    assert _calls(ours, *operands) == 1
    got = jax.jit(ours)(*operands)
    want = np.asarray(jax.jit(xla)(*operands))
    assert got.shape == want.shape == out_shape
    # The same products summed in another order: float32 rounding apart; a wrong tap, offset
    # or axis is off by the values' own size.
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


@needs_library
def test_the_public_functions_bind_each_operation():
    window = ((2, 2), ((1, 1), (1, 1)), (1, 1))
    operands = _operands((11, 9, 5), (3, 3, 8), *window)
    (x, kernel), y_shape = operands["forward"]
    dy = operands["input_gradient"][0][0]
    got = (
        onednn_calls.forward(x, kernel, *window),
        onednn_calls.input_gradient(dy, kernel, x.shape, *window),
        onednn_calls.kernel_gradient(x, dy, kernel.shape, *window),
    )
    for operation, value in zip(OPERATIONS, got, strict=True):
        arguments, out_shape = operands[operation]
        want = _functions(operation, out_shape, *window)[1](*arguments)
        np.testing.assert_allclose(value, want, atol=2e-5 * np.abs(np.asarray(want)).max())


@needs_library
def test_several_devices_vmap_and_other_dtypes_get_xlas_convolution():
    devices = jax.devices()
    assert len(devices) == 4  # conftest's fake CPU devices
    (x, dy), kernel_shape = _operands((9, 11, 5), (3, 3, 6), *SAME)["kernel_gradient"]
    x, dy = jnp.concatenate([x, x + 1]), jnp.concatenate([dy, -dy])  # batch 4
    ours, xla = _functions("kernel_gradient", kernel_shape, *SAME)
    want = np.asarray(xla(x, dy))
    # XLA's partitioner cannot split a custom call it does not know.
    mesh = NamedSharding(Mesh(np.array(devices), ("data",)), PartitionSpec("data"))
    sharded_x, sharded_dy = jax.device_put(x, mesh), jax.device_put(dy, mesh)
    assert _calls(ours, sharded_x, sharded_dy) == 0
    np.testing.assert_allclose(jax.jit(ours)(sharded_x, sharded_dy), want, rtol=1e-4, atol=1e-3)
    # pmap's per-device programs over several devices too: a callback waiting for Python's
    # lock while another device waits in a collective deadlocked the pmap trainer.
    mapped = jax.pmap(ours)
    assert len(CALL.findall(mapped.lower(x[:, None], dy[:, None]).compile().as_text())) == 0
    one = jax.pmap(ours, devices=devices[:1])
    assert len(CALL.findall(one.lower(x[:1, None], dy[:1, None]).compile().as_text())) == 1
    per_image = mapped(x[:, None], dy[:, None])
    np.testing.assert_allclose(per_image.sum(0), want, rtol=1e-4, atol=1e-3)
    # vmap: XLA's, vmapped.
    got = jax.jit(jax.vmap(ours))(x[:, None], dy[:, None])
    np.testing.assert_allclose(got.sum(0), want, rtol=1e-4, atol=1e-3)
    assert not onednn_calls.usable(x.astype(jnp.bfloat16), dy.astype(jnp.bfloat16))
    assert not onednn_calls.usable(x[0], dy)  # not NHWC


@needs_library
def test_a_convolution_onednn_refuses_gets_xlas(monkeypatch, caplog):
    (x, kernel), y_shape = _operands((9, 7, 3), (3, 3, 5), *SAME)["forward"]

    def refuse(self, spec):
        raise onednn_calls.OneDnnError("oneDNN's forward descriptor returned status 3")

    monkeypatch.setattr(onednn_calls._Convolution, "__init__", refuse)
    monkeypatch.setattr(onednn_calls, "_primitives", {})
    ours, xla = _functions("forward", y_shape, *SAME)
    with caplog.at_level(logging.INFO):
        assert _calls(ours, x, kernel) == 0
    assert "XLA's convolution for" in caplog.text and "status 3" in caplog.text
    np.testing.assert_allclose(jax.jit(ours)(x, kernel), xla(x, kernel), rtol=1e-5)


@needs_library
@pytest.mark.parametrize("operation", OPERATIONS)
def test_only_onednns_direct_kernels_are_taken(operation):
    # Padded beyond the kernel's reach (FCN's first layer), oneDNN picks its im2col GEMM form,
    # which crashed on XLA's threads: XLA's form instead.
    beyond = ((1, 1), ((5, 5), (5, 5)), (1, 1))
    operands, out_shape = _operands((12, 12, 3), (3, 3, 16), *beyond)[operation]
    ours, xla = _functions(operation, out_shape, *beyond)
    assert _calls(ours, *operands) == 0
    np.testing.assert_allclose(jax.jit(ours)(*operands), xla(*operands), rtol=1e-5, atol=1e-4)
    operands, out_shape = _operands((12, 12, 3), (3, 3, 16), *SAME)[operation]
    shapes = [a.shape for a in operands]
    spec = onednn_calls._spec(*shapes, operation=operation, out_shape=out_shape,
                              strides=SAME[0], pads=SAME[1], dilation=SAME[2])  # fmt: skip
    implementation = onednn_calls._primitive(spec).implementation
    assert implementation.startswith(("jit", "brg")), implementation


@needs_library
@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_call_that_fails_at_run_time_gives_nan_and_logs_why(monkeypatch, caplog, operation):
    operands, out_shape = _operands((9, 7, 3), (3, 3, 5), *SAME)[operation]
    ours, _ = _functions(operation, out_shape, *SAME)
    compiled = jax.jit(ours).lower(*operands).compile()  # its primitives are made here

    def fail(self, *addresses):
        raise onednn_calls.OneDnnError("oneDNN's execute returned status 5")

    monkeypatch.setattr(onednn_calls._Convolution, "__call__", fail)
    with caplog.at_level(logging.ERROR):
        got = np.asarray(compiled(*operands))
    assert got.shape == out_shape and np.isnan(got).all()
    assert "oneDNN's convolution failed" in caplog.text and "status 5" in caplog.text


@needs_library
def test_a_program_holding_it_is_cached_and_read_back(tmp_path):
    # XLA's own oneDNN thunk cannot be serialized; this custom call can: a second process
    # reads the program from JAX's persistent cache and it computes the same.
    script = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp, numpy as np
        jax.config.update("jax_compilation_cache_dir", {str(tmp_path)!r})
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
        hits = []
        jax.monitoring.register_event_listener(
            lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None
        )
        from jaxseg.models.onednn_calls import forward, kernel_gradient, usable
        rng = np.random.default_rng(0)
        x = jnp.asarray(rng.normal(size=(2, 9, 7, 3)).astype(np.float32))
        k = jnp.asarray(rng.normal(size=(3, 3, 3, 5)).astype(np.float32))
        window = ((1, 1), ((1, 1), (1, 1)), (1, 1))

        def f(x, k):
            y = forward(x, k, *window)
            return kernel_gradient(x, y, k.shape, *window)

        f = jax.jit(f)
        # Lowering registers the call's target: nothing before it (not `usable`) has to.
        assert "jaxseg_onednn_convolution" in f.lower(x, k).as_text()
        print(len(hits), float(jnp.sum(f(x, k) ** 2)))
        assert usable(x, k)
        """
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Error writing persistent compilation cache entry" not in run.stderr
    first, second = (run.stdout.split() for run in runs)
    assert int(second[0]) > int(first[0])  # the program was a cache hit
    assert float(second[1]) == pytest.approx(float(first[1]), rel=1e-6)
