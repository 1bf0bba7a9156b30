"""A convolution's kernel gradient by oneDNN's `backward_weights`, called from XLA:CPU.

Why: XLA:CPU computes a convolution's kernel gradient as another convolution, whose window is
the whole image, and with oneDNN's forward convolutions (`onednn_conv`) that was the one part
of jaxseg's convolutions still slower than PyTorch's, which calls oneDNN's
`backward_weights`. XLA's own oneDNN runtime offers only forward convolutions, so this module
calls the library itself: the `onednn-cpu-gomp` wheel (oneDNN 3.2, GNU OpenMP; `pip install
"jaxseg[onednn]"`, x86-64 Linux), through its C API by `ctypes`. Measured on this project's
2-core machine, the default config's U-Net, its 18 3x3 convs' kernel gradients summed, each
compiled alone: XLA's 68.6 ms, this 45.5 ms (oneDNN itself, called from NumPy, 37.6 ms;
PyTorch's 39-44 ms).

How: `kernel_gradient` binds a primitive that lowers on CPU to a custom call of XLA's
classic API (`void f(out, ins, opaque, opaque_len, status)`), whose target is a `ctypes`
callback: XLA hands it the buffers as they lie, so nothing is copied (a `jax.pure_callback`
copied both operands and cost 1.5 ms a call). Its opaque string names the shapes and window;
each one's oneDNN primitives (the gradient in the layout oneDNN picks, and a reorder into
HWIO) are made when the program is lowered, so a shape oneDNN refuses, or would run only by
its im2col GEMM form (which crashed on XLA's threads), is found then, and its gradient falls
back to XLA's. Unlike XLA's oneDNN thunk, the call can be written to JAX's persistent cache
and read back: lowering registers its target, before the program can run or be loaded.
Elsewhere (other platforms, programs on several devices: a mesh, pmap; under vmap) it is
XLA's kernel gradient.

Errors at run time cannot be reported to XLA (jaxlib exports no custom-call status setter),
so a failing call logs the error and fills the gradient with NaN, which the trainer's
divergence guard stops on.
"""

import ctypes
import functools
import importlib.metadata
import json
import logging
import threading

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.extend.core import Primitive
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo
from jax.interpreters import batching, mlir

from jaxseg.models.platforms import one_device, run_on_cpu

DISTRIBUTION = "onednn-cpu-gomp"
LIBRARY = "libdnnl.so.3"
TARGET = "jaxseg_onednn_kernel_gradient"
NHWC = ("NHWC", "HWIO", "NHWC")
_STATUS_RETURNING_UNIFIED = 3  # XLA's classic custom-call API with an opaque string
# Values of oneDNN 3's C API (dnnl_types.h, dnnl_common_types.h).
_CPU_ENGINE, _IN_ORDER_STREAM, _F32, _FORMAT_ANY = 1, 1, 3, 1
_FORWARD_TRAINING, _CONVOLUTION_DIRECT, _QUERY_DIFF_WEIGHTS_MD = 64, 1, 132
_QUERY_IMPLEMENTATION = 8  # dnnl_query_impl_info_str
_ARG_SRC, _ARG_DST, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 1, 17, 145, 161
_Dims = ctypes.c_int64 * 12  # dnnl_dims_t


class _Arg(ctypes.Structure):  # dnnl_exec_arg_t
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class OneDnnError(RuntimeError):
    """A oneDNN call returned an error status."""


@functools.cache
def library():
    """The loaded oneDNN library, or None where the `onednn-cpu-gomp` wheel is absent or its
    library does not load here (another OS or architecture, no libgomp)."""
    try:
        path = next(f for f in importlib.metadata.files(DISTRIBUTION) or () if f.name == LIBRARY)
        lib = ctypes.CDLL(str(path.locate()))
    except (importlib.metadata.PackageNotFoundError, StopIteration, OSError) as error:
        logging.info("oneDNN's kernel gradient is not used: %r", error)
        return None
    lib.dnnl_primitive_desc_query_md.restype = ctypes.c_void_p
    lib.dnnl_primitive_desc_query_md.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
    lib.dnnl_memory_desc_get_size.argtypes = [ctypes.c_void_p]
    return lib


def _check(status: int, what: str) -> None:
    if status != 0:
        raise OneDnnError(f"oneDNN's {what} returned status {status}")


def _made(function, what, *args):
    """The handle that oneDNN's `function(&handle, *args)` makes."""
    handle = ctypes.c_void_p()
    _check(function(ctypes.byref(handle), *args), what)
    return handle


@functools.cache
def _engine():
    return _made(library().dnnl_engine_create, "engine_create", _CPU_ENGINE, 0)


_per_thread = threading.local()  # a oneDNN stream is not thread-safe: one per calling thread


def _stream():
    if not hasattr(_per_thread, "stream"):
        _per_thread.stream = _made(
            library().dnnl_stream_create, "stream_create", _engine(), _IN_ORDER_STREAM
        )
    return _per_thread.stream


def _memory_desc(dims, strides=None):
    """A float32 memory descriptor of logical `dims` laid out by `strides` (in elements), or
    left to the primitive (`any`)."""
    lib = library()
    if strides is None:
        return _made(
            lib.dnnl_memory_desc_create_with_tag, "memory_desc_create",
            len(dims), _Dims(*dims), _F32, _FORMAT_ANY,
        )  # fmt: skip
    return _made(
        lib.dnnl_memory_desc_create_with_strides, "memory_desc_create",
        len(dims), _Dims(*dims), _F32, _Dims(*strides),
    )  # fmt: skip


def _nhwc(n, h, w, c):
    """oneDNN's (N, C, H, W) dims of an NHWC array, and its strides."""
    return (n, c, h, w), (h * w * c, 1, w * c, c)


def _hwio(kh, kw, i, o):
    """oneDNN's (O, I, H, W) dims of an HWIO kernel, and its strides."""
    return (o, i, kh, kw), (1, o, kw * i * o, i * o)


class _KernelGradient:
    """oneDNN's `backward_weights` primitive for one convolution, and the reorder of its
    result into HWIO. `spec`: {"x", "dy", "kernel", "strides", "pads", "dilation"}."""

    def __init__(self, spec: dict):
        lib, engine = library(), _engine()
        self.src = _memory_desc(*_nhwc(*spec["x"]))
        self.diff_dst = _memory_desc(*_nhwc(*spec["dy"]))
        hwio_dims, hwio_strides = _hwio(*spec["kernel"])
        self.hwio = _memory_desc(hwio_dims, hwio_strides)
        any_layout = _memory_desc(hwio_dims)
        window = (
            _Dims(*spec["strides"]),
            _Dims(*(d - 1 for d in spec["dilation"])),  # oneDNN counts gaps: 0 is none
            _Dims(*(low for low, _ in spec["pads"])),
            _Dims(*(high for _, high in spec["pads"])),
        )
        forward = _made(  # the hint oneDNN's backward descriptors require
            lib.dnnl_convolution_forward_primitive_desc_create, "forward descriptor",
            engine, _FORWARD_TRAINING, _CONVOLUTION_DIRECT,
            self.src, any_layout, None, self.diff_dst, *window, None,
        )  # fmt: skip
        backward = _made(
            lib.dnnl_convolution_backward_weights_primitive_desc_create, "backward descriptor",
            engine, _CONVOLUTION_DIRECT,
            self.src, any_layout, None, self.diff_dst, *window, forward, None,
        )  # fmt: skip
        self._descriptors = (forward, backward, any_layout)  # kept: `blocked` is backward's
        name = ctypes.c_char_p()
        lib.dnnl_primitive_desc_query(backward, _QUERY_IMPLEMENTATION, 0, ctypes.byref(name))
        self.implementation = (name.value or b"?").decode()
        if "gemm:" in self.implementation or "ref" in self.implementation:
            # Only its direct kernels ("jit:avx512_core", "jit_1x1:..."): its im2col GEMM form
            # ("x64:gemm:jit", which it picks for padding beyond the kernel's reach, FCN's
            # first layer) crashed when called on XLA's threads, and its reference code is slow.
            raise OneDnnError(f"oneDNN would run it as {self.implementation!r}")
        # The gradient's layout as oneDNN chose it.
        self.blocked = ctypes.c_void_p(
            lib.dnnl_primitive_desc_query_md(backward, _QUERY_DIFF_WEIGHTS_MD, 0)
        )
        self.blocked_floats = lib.dnnl_memory_desc_get_size(self.blocked) // 4
        reorder = _made(
            lib.dnnl_reorder_primitive_desc_create, "reorder descriptor",
            self.blocked, engine, self.hwio, engine, None,
        )  # fmt: skip
        self.gradient = _made(lib.dnnl_primitive_create, "primitive_create", backward)
        self.reorder = _made(lib.dnnl_primitive_create, "primitive_create", reorder)

    def __call__(self, x_address: int, dy_address: int, out_address: int) -> None:
        """Writes the kernel gradient of the arrays at these addresses into `out_address`."""
        lib, engine, stream = library(), _engine(), _stream()
        blocked = np.empty(self.blocked_floats, np.float32)
        arrays = (
            (self.src, x_address),
            (self.diff_dst, dy_address),
            (self.blocked, blocked.ctypes.data),
            (self.hwio, out_address),
        )
        memories = []
        try:
            for desc, address in arrays:
                memories.append(
                    _made(
                        lib.dnnl_memory_create,
                        "memory_create",
                        desc,
                        engine,
                        ctypes.c_void_p(address),
                    )  # fmt: skip
                )
            src, diff_dst, gradient, hwio = memories
            args = (_Arg * 3)(
                _Arg(_ARG_SRC, src), _Arg(_ARG_DIFF_DST, diff_dst),
                _Arg(_ARG_DIFF_WEIGHTS, gradient),
            )  # fmt: skip
            _check(lib.dnnl_primitive_execute(self.gradient, stream, 3, args), "execute")
            args = (_Arg * 2)(_Arg(_ARG_SRC, gradient), _Arg(_ARG_DST, hwio))
            _check(lib.dnnl_primitive_execute(self.reorder, stream, 2, args), "reorder")
            _check(lib.dnnl_stream_wait(stream), "stream_wait")
        finally:
            for memory in memories:
                lib.dnnl_memory_destroy(memory)


_primitives: dict = {}  # opaque spec (bytes) -> _KernelGradient
_primitives_lock = threading.Lock()


def _primitive(opaque: bytes) -> _KernelGradient:
    with _primitives_lock:
        if opaque not in _primitives:
            _primitives[opaque] = _KernelGradient(json.loads(opaque))
        return _primitives[opaque]


_CALLBACK_TYPE = ctypes.CFUNCTYPE(
    None,
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_void_p),
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_void_p,
)


def _run(out, operands, opaque, opaque_length, status):
    """The custom call's target: XLA's output buffer, its operand buffers, the spec."""
    spec = ctypes.string_at(opaque, opaque_length)
    try:
        _primitive(spec)(operands[0], operands[1], out)
    except Exception:  # XLA cannot be told (module docstring): NaN, and the error logged
        logging.exception("oneDNN's kernel gradient failed for %s", spec.decode())
        shape = json.loads(spec)["kernel"]
        np.ctypeslib.as_array(ctypes.cast(out, ctypes.POINTER(ctypes.c_float)), shape).fill(np.nan)


_callback = _CALLBACK_TYPE(_run)  # kept alive: XLA holds only its address


@functools.cache
def _registered() -> None:
    capsule_new = ctypes.pythonapi.PyCapsule_New
    capsule_new.restype = ctypes.py_object
    capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    address = ctypes.cast(_callback, ctypes.c_void_p).value
    capsule = capsule_new(address, b"xla._CUSTOM_CALL_TARGET", None)
    jax.ffi.register_ffi_target(TARGET, capsule, platform="cpu", api_version=0)


def _xla_kernel_gradient(x, dy, *, kernel_shape, strides, pads, dilation):
    def convolution(kernel):
        return lax.conv_general_dilated(
            x, kernel, strides, pads, rhs_dilation=dilation, dimension_numbers=NHWC
        )

    zeros = jnp.zeros(kernel_shape, x.dtype)
    return jax.vjp(convolution, zeros)[1](dy)[0]


kernel_gradient_p = Primitive("jaxseg_onednn_kernel_gradient")
kernel_gradient_p.def_impl(
    lambda x, dy, **params: jax.jit(functools.partial(kernel_gradient_p.bind, **params))(x, dy)
)
kernel_gradient_p.def_abstract_eval(
    lambda x, dy, *, kernel_shape, **_: jax.core.ShapedArray(kernel_shape, x.dtype)
)
# Under vmap: XLA's, vmapped (jaxseg's models never vmap their convolutions).
batching.primitive_batchers[kernel_gradient_p] = lambda arguments, axes, **params: (
    jax.vmap(functools.partial(_xla_kernel_gradient, **params), in_axes=axes)(*arguments),
    0,
)
_lower_xla = mlir.lower_fun(_xla_kernel_gradient, multiple_results=False)
mlir.register_lowering(kernel_gradient_p, _lower_xla)  # other platforms


def _spec(x_shape, dy_shape, kernel_shape, strides, pads, dilation) -> bytes:
    return json.dumps(
        {
            "x": list(x_shape),
            "dy": list(dy_shape),
            "kernel": list(kernel_shape),
            "strides": list(strides),
            "pads": [list(p) for p in pads],
            "dilation": list(dilation),
        }
    ).encode()


def _lower_cpu(ctx, x, dy, *, kernel_shape, strides, pads, dilation):
    params = dict(kernel_shape=kernel_shape, strides=strides, pads=pads, dilation=dilation)
    x_aval, dy_aval = ctx.avals_in
    spec = _spec(x_aval.shape, dy_aval.shape, **params)
    # One device only: with pmap's several, one device's program waited in its all-reduce
    # while the other's callback waited for Python's lock, held by the main thread waiting
    # for the step (a deadlock, XLA's 40 s rendezvous timeout, abort).
    if not one_device(ctx) or library() is None or not _made_for(spec):
        return _lower_xla(ctx, x, dy, **params)
    _registered()  # before any program holding the call runs, or is read from the cache
    (out,) = ctx.avals_out
    result = ir.RankedTensorType.get(out.shape, mlir.dtype_to_ir_type(out.dtype))
    call = stablehlo.CustomCallOp(
        [result],
        [x, dy],
        TARGET,
        backend_config=ir.StringAttr.get(spec.decode()),
        api_version=mlir.i32_attr(_STATUS_RETURNING_UNIFIED),
    )
    return call.results


mlir.register_lowering(kernel_gradient_p, _lower_cpu, platform="cpu")


def _made_for(spec: bytes) -> bool:
    """Whether oneDNN makes its primitives for this convolution (else XLA's gradient)."""
    try:
        _primitive(spec)
    except OneDnnError as error:
        logging.info("XLA's kernel gradient for %s: %s", spec.decode(), error)
        return False
    return True


@functools.cache
def available() -> bool:
    """Whether oneDNN's kernel gradient runs here, and runs right: the library loads, its
    custom call is registered, and one small gradient compiled and run equals XLA's (once
    per process)."""
    if library() is None:
        return False
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    dy = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    params = dict(kernel_shape=(3, 3, 3, 5), strides=(2, 2), pads=((1, 1), (1, 0)), dilation=(1, 1))

    def onednn_kernel_gradient_probe(x, dy):
        return kernel_gradient_p.bind(x, dy, **params)

    def xla_kernel_gradient_probe(x, dy):
        return _xla_kernel_gradient(x, dy, **params)

    try:
        _registered()
        got = run_on_cpu(onednn_kernel_gradient_probe, x, dy)
        want = run_on_cpu(xla_kernel_gradient_probe, x, dy)
        if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
            raise ValueError(f"its result differs from XLA's by {np.abs(got - want).max()}")
    except Exception as error:
        logging.warning("oneDNN's kernel gradient is not used: %s", error)
        return False
    return True


def usable(x, dy) -> bool:
    """Whether `kernel_gradient` may be oneDNN's for these operands: float32 NHWC arrays of
    static shapes, and the library `available`."""
    static = all(isinstance(d, int) for d in (*x.shape, *dy.shape))
    return x.ndim == 4 and x.dtype == dy.dtype == jnp.float32 and static and available()


def kernel_gradient(x, dy, kernel_shape, strides, pads, dilation):
    """d(sum(conv(x, W) * dy)) / dW of an NHWC/HWIO convolution: oneDNN's on CPU, XLA's
    elsewhere. Call where `usable(x, dy)`.

    Args:
      x: the input (N, H, W, C).
      dy: the output's cotangent (N, H_out, W_out, O).
      kernel_shape: (kh, kw, C, O).
      strides, dilation: (h, w) each, as XLA's (dilation 1: none).
      pads: ((top, bottom), (left, right)), each >= 0.

    Returns:
      (kh, kw, C, O).
    """
    return kernel_gradient_p.bind(
        x,
        dy,
        kernel_shape=tuple(kernel_shape),
        strides=tuple(strides),
        pads=tuple(tuple(p) for p in pads),
        dilation=tuple(dilation),
    )
