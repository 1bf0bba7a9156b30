"""A convolution's forward pass, input gradient and kernel gradient by oneDNN, called from
XLA:CPU by a custom call that JAX's persistent compilation cache can store.

Why: XLA:CPU runs a convolution as Eigen's spatial convolution (im2col packing, a GEMM) and
its kernel gradient as another convolution whose window is the whole image; PyTorch runs the
same layers as oneDNN's direct convolutions and `backward_weights`, and that was most of the
gap between the two on the U-Nets (README, "Where the default step's time goes"). jaxlib's
XLA:CPU carries a oneDNN forward convolution (`__onednn$convolution`), but an executable
holding it cannot be written to JAX's cache (jaxlib 0.10.2's serializer fails on its thunk)
and it has no gradients, so jaxseg calls the library itself: the `onednn-cpu-gomp` wheel
(oneDNN 3.2, GNU OpenMP; a dependency of jaxseg on x86-64 Linux), through its C API by
`ctypes`.

How: `forward`, `input_gradient` and `kernel_gradient` bind one primitive that lowers on CPU
to a custom call of XLA's classic API (`void f(out, ins, opaque, opaque_len, status)`),
whose target is a `ctypes` callback: XLA hands it the buffers as they lie, so nothing is
copied (a `jax.pure_callback` copied the operands and cost 1.5 ms a call). Its opaque string
names the operation, shapes and window; each one's oneDNN primitives (the convolution with
its kernel in the layout oneDNN picks, and the reorder between that and HWIO) are made when
the program is lowered, so a shape oneDNN refuses, or would run only by its im2col GEMM form
(which crashed on XLA's threads) or its reference code, is found then and gets XLA's form
instead. Lowering registers the target, before the program can run or be read from the
cache. Elsewhere (other platforms; programs on several devices: a mesh, pmap over more than
one, where a callback waiting for Python's lock deadlocked against another device's
all-reduce; under vmap) it is XLA's.

Errors at run time cannot be reported to XLA (jaxlib exports no custom-call status setter),
so a failing call logs the error and fills its output with NaN, which the trainer's
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
TARGET = "jaxseg_onednn_convolution"
NHWC = ("NHWC", "HWIO", "NHWC")
OPERATIONS = ("forward", "input_gradient", "kernel_gradient")
_STATUS_RETURNING_UNIFIED = 3  # XLA's classic custom-call API with an opaque string
# Values of oneDNN 3's C API (dnnl_types.h, dnnl_common_types.h).
_CPU_ENGINE, _IN_ORDER_STREAM, _F32, _FORMAT_ANY = 1, 1, 3, 1
_FORWARD_TRAINING, _CONVOLUTION_DIRECT = 64, 1
_QUERY_IMPLEMENTATION, _QUERY_WEIGHTS_MD, _QUERY_DIFF_WEIGHTS_MD = 8, 131, 132
_ARG_SRC, _ARG_DST, _ARG_WEIGHTS = 1, 17, 33
_ARG_DIFF_SRC, _ARG_DIFF_DST, _ARG_DIFF_WEIGHTS = 129, 145, 161
_Dims = ctypes.c_int64 * 12  # dnnl_dims_t


class _Arg(ctypes.Structure):  # dnnl_exec_arg_t
    _fields_ = [("arg", ctypes.c_int), ("memory", ctypes.c_void_p)]


class OneDnnError(RuntimeError):
    """A oneDNN call returned an error status, or would run a form jaxseg does not take."""


@functools.cache
def library():
    """The loaded oneDNN library, or None where the `onednn-cpu-gomp` wheel is absent or its
    library does not load here (another OS or architecture, no libgomp)."""
    try:
        path = next(f for f in importlib.metadata.files(DISTRIBUTION) or () if f.name == LIBRARY)
        lib = ctypes.CDLL(str(path.locate()))
    except (importlib.metadata.PackageNotFoundError, StopIteration, OSError) as error:
        logging.info("oneDNN's convolutions are not used: %r", error)
        return None
    lib.dnnl_primitive_desc_query_md.restype = ctypes.c_void_p
    lib.dnnl_primitive_desc_query_md.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    lib.dnnl_memory_desc_get_size.restype = ctypes.c_size_t
    lib.dnnl_memory_desc_get_size.argtypes = [ctypes.c_void_p]
    lib.dnnl_memory_desc_equal.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
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


def _implementation(descriptor) -> str:
    name = ctypes.c_char_p()
    library().dnnl_primitive_desc_query(descriptor, _QUERY_IMPLEMENTATION, 0, ctypes.byref(name))
    return (name.value or b"?").decode()


class _Convolution:
    """oneDNN's primitives for one operation (`OPERATIONS`) of one NHWC/HWIO convolution: the
    convolution, its kernel in the layout oneDNN chose, and the reorder between that and
    HWIO. `spec`: {"operation", "x", "y", "kernel", "strides", "pads", "dilation"}, the
    shapes those of the input, output and kernel."""

    def __init__(self, spec: dict):
        lib, engine = library(), _engine()
        self.operation = spec["operation"]
        self.x = _memory_desc(*_nhwc(*spec["x"]))
        self.y = _memory_desc(*_nhwc(*spec["y"]))
        hwio_dims, hwio_strides = _hwio(*spec["kernel"])
        self.hwio = _memory_desc(hwio_dims, hwio_strides)
        any_layout = _memory_desc(hwio_dims)
        window = (
            _Dims(*spec["strides"]),
            _Dims(*(d - 1 for d in spec["dilation"])),  # oneDNN counts gaps: 0 is none
            _Dims(*(low for low, _ in spec["pads"])),
            _Dims(*(high for _, high in spec["pads"])),
        )
        forward = _made(  # also the hint oneDNN's backward descriptors require
            lib.dnnl_convolution_forward_primitive_desc_create, "forward descriptor",
            engine, _FORWARD_TRAINING, _CONVOLUTION_DIRECT,
            self.x, any_layout, None, self.y, *window, None,
        )  # fmt: skip
        if self.operation == "forward":
            descriptor, kernel_query = forward, _QUERY_WEIGHTS_MD
        elif self.operation == "input_gradient":
            descriptor = _made(
                lib.dnnl_convolution_backward_data_primitive_desc_create, "backward data",
                engine, _CONVOLUTION_DIRECT,
                self.x, any_layout, self.y, *window, forward, None,
            )  # fmt: skip
            kernel_query = _QUERY_WEIGHTS_MD
        else:
            descriptor = _made(
                lib.dnnl_convolution_backward_weights_primitive_desc_create, "backward weights",
                engine, _CONVOLUTION_DIRECT,
                self.x, any_layout, None, self.y, *window, forward, None,
            )  # fmt: skip
            kernel_query = _QUERY_DIFF_WEIGHTS_MD
        self._descriptors = (forward, descriptor, any_layout)  # kept: `blocked` is theirs
        self.implementation = _implementation(descriptor)
        if "gemm:" in self.implementation or "ref" in self.implementation:
            # Only its direct kernels ("jit:avx512_core", "brg:...", "jit_1x1:..."): its im2col
            # GEMM form ("x64:gemm:jit", which it picks for padding beyond the kernel's reach,
            # FCN's first layer) crashed when called on XLA's threads, and its reference code
            # is slow.
            raise OneDnnError(f"oneDNN would run it as {self.implementation!r}")
        blocked = lib.dnnl_primitive_desc_query_md(descriptor, kernel_query, 0)
        self.blocked = ctypes.c_void_p(blocked)
        self.blocked_floats = lib.dnnl_memory_desc_get_size(self.blocked) // 4
        self.convolution = _made(lib.dnnl_primitive_create, "primitive_create", descriptor)
        self.reorder = None  # where oneDNN takes the kernel as HWIO, none is needed
        if not lib.dnnl_memory_desc_equal(self.blocked, self.hwio):
            source, target = (
                (self.blocked, self.hwio) if self.operation == "kernel_gradient"
                else (self.hwio, self.blocked)
            )  # fmt: skip
            reorder = _made(
                lib.dnnl_reorder_primitive_desc_create, "reorder descriptor",
                source, engine, target, engine, None,
            )  # fmt: skip
            self._descriptors += (reorder,)
            self.reorder = _made(lib.dnnl_primitive_create, "primitive_create", reorder)

    def __call__(self, first: int, second: int, out: int) -> None:
        """Runs the operation on the arrays at these addresses: (x, kernel) -> y, (dy, kernel)
        -> dx, or (x, dy) -> dkernel."""
        gradient = self.operation == "kernel_gradient"
        kernel = out if gradient else second
        scratch = None if self.reorder is None else np.empty(self.blocked_floats, np.float32)
        blocked = kernel if scratch is None else scratch.ctypes.data
        # the reorder's source and target: HWIO into oneDNN's layout, or back for a gradient
        hwio, chosen = (self.hwio, kernel), (self.blocked, blocked)
        reorder = {_ARG_SRC: chosen if gradient else hwio, _ARG_DST: hwio if gradient else chosen}
        if self.operation == "forward":
            arrays = {_ARG_SRC: (self.x, first), _ARG_WEIGHTS: (self.blocked, blocked),
                      _ARG_DST: (self.y, out)}  # fmt: skip
        elif self.operation == "input_gradient":
            arrays = {_ARG_DIFF_DST: (self.y, first), _ARG_WEIGHTS: (self.blocked, blocked),
                      _ARG_DIFF_SRC: (self.x, out)}  # fmt: skip
        else:
            arrays = {_ARG_SRC: (self.x, first), _ARG_DIFF_DST: (self.y, second),
                      _ARG_DIFF_WEIGHTS: (self.blocked, blocked)}  # fmt: skip
        if self.reorder is not None and not gradient:
            _execute(self.reorder, reorder, "reorder")
        _execute(self.convolution, arrays, self.operation)
        if self.reorder is not None and gradient:
            _execute(self.reorder, reorder, "reorder")


def _execute(primitive, arrays: dict, what: str) -> None:
    """Runs a oneDNN primitive on `arrays`: its argument -> (memory descriptor, address)."""
    lib, engine, stream = library(), _engine(), _stream()
    memories = []
    try:
        for desc, address in arrays.values():
            memory = _made(
                lib.dnnl_memory_create, "memory_create", desc, engine, ctypes.c_void_p(address)
            )
            memories.append(memory)
        args = (_Arg * len(arrays))(*map(_Arg, arrays, memories))
        _check(lib.dnnl_primitive_execute(primitive, stream, len(arrays), args), what)
        _check(lib.dnnl_stream_wait(stream), "stream_wait")
    finally:
        for memory in memories:
            lib.dnnl_memory_destroy(memory)


_primitives: dict = {}  # opaque spec (bytes) -> _Convolution
_primitives_lock = threading.Lock()


def _primitive(opaque: bytes) -> _Convolution:
    with _primitives_lock:
        if opaque not in _primitives:
            _primitives[opaque] = _Convolution(json.loads(opaque))
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
        logging.exception("oneDNN's convolution failed for %s", spec.decode())
        shape = _out_shape(json.loads(spec))
        np.ctypeslib.as_array(ctypes.cast(out, ctypes.POINTER(ctypes.c_float)), shape).fill(np.nan)


_OUTPUT = {"forward": "y", "input_gradient": "x", "kernel_gradient": "kernel"}


def _out_shape(spec: dict) -> list:
    return spec[_OUTPUT[spec["operation"]]]


_callback = _CALLBACK_TYPE(_run)  # kept alive: XLA holds only its address


@functools.cache
def _registered() -> None:
    capsule_new = ctypes.pythonapi.PyCapsule_New
    capsule_new.restype = ctypes.py_object
    capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    address = ctypes.cast(_callback, ctypes.c_void_p).value
    capsule = capsule_new(address, b"xla._CUSTOM_CALL_TARGET", None)
    jax.ffi.register_ffi_target(TARGET, capsule, platform="cpu", api_version=0)


def _xla(first, second, *, operation, out_shape, strides, pads, dilation):
    """The operation as XLA computes it (`convolution_p`'s operands and parameters)."""

    def convolution(x, kernel):
        return lax.conv_general_dilated(
            x, kernel, strides, pads, rhs_dilation=dilation, dimension_numbers=NHWC
        )

    if operation == "forward":
        return convolution(first, second)
    zeros = jnp.zeros(out_shape, first.dtype)
    if operation == "input_gradient":
        return jax.vjp(lambda x: convolution(x, second), zeros)[1](first)[0]
    return jax.vjp(lambda kernel: convolution(first, kernel), zeros)[1](second)[0]


convolution_p = Primitive("jaxseg_onednn_convolution")
convolution_p.def_impl(
    lambda a, b, **params: jax.jit(functools.partial(convolution_p.bind, **params))(a, b)
)
convolution_p.def_abstract_eval(
    lambda a, b, *, out_shape, **_: jax.core.ShapedArray(out_shape, a.dtype)
)
# Under vmap: XLA's, vmapped (jaxseg's models never vmap their convolutions).
batching.primitive_batchers[convolution_p] = lambda arguments, axes, **params: (
    jax.vmap(functools.partial(_xla, **params), in_axes=axes)(*arguments),
    0,
)
_lower_xla = mlir.lower_fun(_xla, multiple_results=False)
mlir.register_lowering(convolution_p, _lower_xla)  # other platforms


def _spec(first_shape, second_shape, *, operation, out_shape, strides, pads, dilation) -> bytes:
    x, y, kernel = {
        "forward": (first_shape, out_shape, second_shape),
        "input_gradient": (out_shape, first_shape, second_shape),
        "kernel_gradient": (first_shape, second_shape, out_shape),
    }[operation]
    spec = {
        "operation": operation,
        "x": list(x),
        "y": list(y),
        "kernel": list(kernel),
        "strides": list(strides),
        "pads": [list(p) for p in pads],
        "dilation": list(dilation),
    }
    return json.dumps(spec).encode()


def _lower_cpu(ctx, first, second, **params):
    spec = _spec(*(aval.shape for aval in ctx.avals_in), **params)
    # One device only: with pmap's several, one device's program waited in its all-reduce
    # while the other's callback waited for Python's lock, held by the main thread waiting
    # for the step (a deadlock, XLA's 40 s rendezvous timeout, abort).
    if not one_device(ctx) or library() is None or not _made_for(spec):
        return _lower_xla(ctx, first, second, **params)
    _registered()  # before any program holding the call runs, or is read from the cache
    (out,) = ctx.avals_out
    result = ir.RankedTensorType.get(out.shape, mlir.dtype_to_ir_type(out.dtype))
    call = stablehlo.CustomCallOp(
        [result],
        [first, second],
        TARGET,
        backend_config=ir.StringAttr.get(spec.decode()),
        api_version=mlir.i32_attr(_STATUS_RETURNING_UNIFIED),
    )
    return call.results


mlir.register_lowering(convolution_p, _lower_cpu, platform="cpu")


def _made_for(spec: bytes) -> bool:
    """Whether oneDNN makes its primitives for this operation (else XLA's form)."""
    try:
        _primitive(spec)
    except OneDnnError as error:
        logging.info("XLA's convolution for %s: %s", spec.decode(), error)
        return False
    return True


@functools.cache
def available() -> bool:
    """Whether oneDNN's convolutions run here, and run right: the library loads, its custom
    call is registered, and one small convolution's three operations compiled and run equal
    XLA's (once per process)."""
    if library() is None:
        return False
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 5)).astype(np.float32)
    dy = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    window = dict(strides=(2, 2), pads=((1, 1), (1, 0)), dilation=(1, 1))
    cases = {
        "forward": (x, kernel, dy.shape),
        "input_gradient": (dy, kernel, x.shape),
        "kernel_gradient": (x, dy, kernel.shape),
    }
    try:
        _registered()
        for operation, (first, second, out_shape) in cases.items():
            params = dict(operation=operation, out_shape=out_shape, **window)
            onednn_probe, xla_probe = _probes(params)
            got = run_on_cpu(onednn_probe, first, second)
            want = run_on_cpu(xla_probe, first, second)
            if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                difference = np.abs(got - want).max()
                raise ValueError(f"its {operation} differs from XLA's by {difference}")
    except Exception as error:
        logging.warning("oneDNN's convolutions are not used: %s", error)
        return False
    return True


def _probes(params):
    """oneDNN's and XLA's function of one operation, named for JAX's compile log."""

    def onednn_convolution_probe(first, second):
        return convolution_p.bind(first, second, **params)

    def xla_convolution_probe(first, second):
        return _xla(first, second, **params)

    return onednn_convolution_probe, xla_convolution_probe


def usable(*arrays) -> bool:
    """Whether oneDNN may compute a convolution of these operands: float32 NHWC/HWIO arrays of
    static shapes, and the library `available`."""
    static = all(isinstance(d, int) for a in arrays for d in a.shape)
    float32 = all(a.ndim == 4 and a.dtype == jnp.float32 for a in arrays)
    return static and float32 and available()


def _bound(operation, first, second, out_shape, strides, pads, dilation):
    return convolution_p.bind(
        first,
        second,
        operation=operation,
        out_shape=tuple(out_shape),
        strides=tuple(strides),
        pads=tuple(tuple(p) for p in pads),
        dilation=tuple(dilation),
    )


def forward(x, kernel, strides, pads, dilation):
    """`lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation)` of an
    NHWC/HWIO convolution: oneDNN's on CPU, XLA's elsewhere. Call where `usable(x, kernel)`.

    strides, dilation: (h, w) each, as XLA's (dilation 1: none); pads: ((top, bottom),
    (left, right)), each >= 0.
    """
    out = jax.eval_shape(
        lambda x, k: _xla(
            x, k, operation="forward", out_shape=None, strides=strides, pads=pads,
            dilation=dilation,
        ),
        x,
        kernel,
    )  # fmt: skip
    return _bound("forward", x, kernel, out.shape, strides, pads, dilation)


def input_gradient(dy, kernel, x_shape, strides, pads, dilation):
    """d(sum(conv(x, kernel) * dy)) / dx, (N, H, W, C) `x_shape`; as `forward`."""
    return _bound("input_gradient", dy, kernel, x_shape, strides, pads, dilation)


def kernel_gradient(x, dy, kernel_shape, strides, pads, dilation):
    """d(sum(conv(x, W) * dy)) / dW, (kh, kw, C, O) `kernel_shape`; as `forward`."""
    return _bound("kernel_gradient", x, dy, kernel_shape, strides, pads, dilation)
