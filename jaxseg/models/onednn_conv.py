"""Convolutions computed by oneDNN inside XLA:CPU, with XLA's own kernel gradient.

Why: XLA:CPU runs a convolution as Eigen's spatial convolution, which packs the image's
patches (im2col on the fly) for a GEMM; PyTorch runs the same layers as oneDNN's direct
convolutions, with no packing, and that was most of the gap between the two on the U-Nets
(README, "Where the default step's time goes"). jaxlib's XLA:CPU carries oneDNN and runs a
custom call `__onednn$convolution` (its config a JSON `BackendConfig`) as oneDNN's direct
convolution on XLA's own thread pool; XLA's optional rewriter that would emit it is not in
jaxlib's build, so jaxseg emits it itself. Measured on this project's 2-core machine, 3x3
"same" convolutions, the default config's U-Net (batch 16, 64x64, widths 16-256), its 18
convs summed, XLA's (with jaxseg's options) -> oneDNN: forward 46.8 -> 31.1 ms, input
gradient 45.6 -> 32.2 ms; the paper U-Net (batch 4, 128x128): 531 -> 448 and 544 -> 499 ms.

Only forward convolutions are offered (`forward_inference`), so:
- the input gradient of a stride-1 convolution is the forward convolution of the output
  gradient with the kernel turned by 180 degrees, its input and output channels swapped by
  the dimension numbers (no copy);
- the kernel gradient is oneDNN's `backward_weights`, which jaxseg calls itself
  (`onednn_kernel_grad`, with the `onednn` extra); without it, XLA's (as a forward
  convolution oneDNN took 1.4 s where XLA takes 5 ms: its window is the whole image), or the
  GEMM of `conv_kernel_grad`.
oneDNN reorders the kernel into its blocked layout at every call, which costs most where the
kernel outweighs the map (the paper U-Net's 8x8x1024 -> 1024: input gradient 29 -> 54 ms;
FCN's fc6, 411 MB): `small_conv` gives it only convolutions whose output has more positions
than the kernel has outputs.

It is opt-in: only functions traced within `onednn_convolutions()` use it (the trainer's and
evaluator's steps with `train.cpu_convolutions="onednn"`), because XLA cannot store an
executable that holds the call in JAX's persistent compilation cache: jaxlib 0.10.2 files
its thunk under the custom-call kind and its serializer, reading it as one, fails
(`std::bad_alloc`). What is compiled within the context is not written to the cache, so
such a step is compiled afresh in every process (no warm start for it). Within, it is used
where `usable`: float32, 2-D, no groups, no input dilation, padding >= 0, static shapes, on
a jaxlib whose XLA runs the call (`available`, checked once by compiling and running one).
A computation partitioned over several devices (a `jax.sharding` mesh) gets XLA's
convolution, since XLA's partitioner cannot split a custom call it does not know; `pmap`'s
per-device programs keep oneDNN. Exported functions never contain it
(`platforms.portable_forms`): the call exists only in XLA builds with oneDNN.
"""

import contextlib
import contextvars
import functools
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax._src import config as jax_config  # a config value as a context (no public form)
from jax.extend.core import Primitive
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo
from jax.interpreters import batching, mlir

from jaxseg.models import onednn_kernel_grad
from jaxseg.models.conv_kernel_grad import kernel_gradient
from jaxseg.models.platforms import partitioned, run_on_cpu, switched_on, tracing_portable

TARGET = "__onednn$convolution"
NHWC = ("NHWC", "HWIO", "NHWC")
NEVER_CACHED = 1e12  # seconds: a compile time no executable reaches
_ON = contextvars.ContextVar("jaxseg_onednn_convolutions", default=False)


@contextlib.contextmanager
def onednn_convolutions():
    """Within: convolutions traced here use oneDNN where `usable`, and what is compiled here
    is not written to JAX's persistent compilation cache (module docstring: XLA cannot
    serialize the call)."""
    with switched_on(_ON), _not_cached():
        yield


def _not_cached():
    """A context in which nothing compiled is written to JAX's persistent cache: JAX decides
    once per process whether its cache is on, but reads this bound at each write."""
    return jax_config.persistent_cache_min_compile_time_secs(NEVER_CACHED)


def with_onednn_convolutions(function):
    """`function` called within `onednn_convolutions()`: for a jitted step, its trace and
    compilation happen there."""

    @functools.wraps(function)
    def call(*args, **kwargs):
        with onednn_convolutions():
            return function(*args, **kwargs)

    return call


def _lax_convolution(x, kernel, *, dimension_numbers, strides, pads, dilation):
    return lax.conv_general_dilated(
        x, kernel, strides, pads, rhs_dilation=dilation, dimension_numbers=dimension_numbers
    )


convolution_p = Primitive("jaxseg_onednn_convolution")
convolution_p.def_impl(
    lambda x, kernel, **params: jax.jit(functools.partial(convolution_p.bind, **params))(x, kernel)
)


@convolution_p.def_abstract_eval
def _abstract(x, kernel, **params):
    shape = jax.eval_shape(functools.partial(_lax_convolution, **params), x, kernel).shape
    return jax.core.ShapedArray(shape, x.dtype)


def _batched(arguments, axes, **params):
    # Under vmap: XLA's convolution, vmapped (jaxseg's models never vmap their convolutions).
    out = jax.vmap(functools.partial(_lax_convolution, **params), in_axes=axes)(*arguments)
    return out, 0


batching.primitive_batchers[convolution_p] = _batched
mlir.register_lowering(
    convolution_p, mlir.lower_fun(_lax_convolution, multiple_results=False)
)  # every platform but CPU, and CPU programs split over several devices


def _config(dimension_numbers, strides, pads, dilation) -> str:
    """The custom call's `BackendConfig`: which axis of each array is which, and the window."""
    lhs, rhs, out = (
        dimension_numbers.lhs_spec,
        dimension_numbers.rhs_spec,
        dimension_numbers.out_spec,
    )

    def numbers(values):
        return [str(int(v)) for v in values]

    def data(spec):
        return {
            "batch_dim": str(spec[0]),
            "feature_dim": str(spec[1]),
            "spatial_dims": numbers(spec[2:]),
        }

    config = {
        "dims": str(len(lhs)),
        "input": {"dims": str(len(lhs)), "data": data(lhs)},
        "kernel": {
            "dims": str(len(rhs)),
            "filter": {
                "output_feature_dim": str(rhs[0]),
                "input_feature_dim": str(rhs[1]),
                "spatial_dims": numbers(rhs[2:]),
            },
        },
        "output": {"dims": str(len(out)), "data": data(out)},
        "window": {
            "pad_left": numbers(low for low, _ in pads),
            "pad_right": numbers(high for _, high in pads),
            "strides": numbers(strides),
            "window_dilations": numbers(dilation),
        },
        "feature_groups": "1",
    }
    return json.dumps({"onednn_conv_config": config})


def _lower_cpu(ctx, x, kernel, *, dimension_numbers, strides, pads, dilation):
    if partitioned(ctx):
        return mlir.lower_fun(_lax_convolution, multiple_results=False)(
            ctx,
            x,
            kernel,
            dimension_numbers=dimension_numbers,
            strides=strides,
            pads=pads,
            dilation=dilation,
        )
    (out,) = ctx.avals_out
    result = ir.RankedTensorType.get(out.shape, mlir.dtype_to_ir_type(out.dtype))
    config = _config(dimension_numbers, strides, pads, dilation)
    call = stablehlo.CustomCallOp(
        [result], [x, kernel], TARGET, backend_config=ir.StringAttr.get(config)
    )
    return call.results


mlir.register_lowering(convolution_p, _lower_cpu, platform="cpu")


def convolution(x, kernel, strides, pads, dilation, dimension_numbers=NHWC):
    """`lax.conv_general_dilated(x, kernel, strides, pads, rhs_dilation=dilation)` for these
    dimension numbers (layout names), computed by oneDNN on CPU and by XLA elsewhere."""
    numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, dimension_numbers)
    return convolution_p.bind(
        x,
        kernel,
        dimension_numbers=numbers,
        strides=tuple(strides),
        pads=tuple(tuple(p) for p in pads),
        dilation=tuple(dilation),
    )


@functools.cache
def available() -> bool:
    """Whether this jaxlib's XLA:CPU runs the oneDNN convolution, and runs it right: one small
    convolution compiled, run and compared with XLA's (once per process)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 5, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    window = dict(strides=(1, 1), pads=((1, 1), (0, 2)), dilation=(1, 1))

    def onednn_probe(x, kernel):
        return convolution(x, kernel, **window)

    def xla_probe(x, kernel):
        return _lax_convolution(x, kernel, dimension_numbers=_numbers(x, kernel), **window)

    try:
        with _not_cached():
            got = run_on_cpu(onednn_probe, x, kernel)
            want = run_on_cpu(xla_probe, x, kernel)
        if not np.allclose(got, want, rtol=1e-5, atol=1e-5):
            raise ValueError(f"its result differs from XLA's by {np.abs(got - want).max()}")
    except Exception as error:  # a jaxlib without oneDNN (e.g. ARM builds), or a changed config
        logging.info("XLA:CPU's oneDNN convolution is not used: %s", error)
        return False
    return True


def _numbers(x, kernel):
    return lax.conv_dimension_numbers(x.shape, kernel.shape, NHWC)


def usable(x, kernel, pads) -> bool:
    """Whether `conv_with_onednn` may compute this NHWC/HWIO convolution (module docstring)."""
    shapes_static = all(isinstance(d, int) for d in (*x.shape, *kernel.shape))
    return (
        _ON.get()
        and not tracing_portable()
        and x.ndim == 4
        and x.dtype == jnp.float32
        and kernel.dtype == jnp.float32
        and shapes_static
        and all(p >= 0 for side in pads for p in side)
        and available()
    )


def _back_pads(kernel_shape, pads, dilation):
    """The pads of the input gradient's convolution: (reach - low, reach - high) per axis."""
    reach = [(k - 1) * d for k, d in zip(kernel_shape[:2], dilation, strict=True)]
    return tuple((r - low, r - high) for r, (low, high) in zip(reach, pads, strict=True))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_with_onednn(x, kernel, strides, pads, dilation, gemm_kernel_gradient=False):
    """An NHWC/HWIO convolution whose forward pass, and input gradient at stride 1, are
    oneDNN's on CPU (`convolution`); its kernel gradient is oneDNN's where
    `onednn_kernel_grad.usable`, else XLA's, or with `gemm_kernel_gradient` (stride 1 only)
    `conv_kernel_grad.kernel_gradient`'s GEMM.

    strides, dilation: (h, w) tuples; pads: ((top, bottom), (left, right)), each >= 0.
    """
    return convolution(x, kernel, strides, pads, dilation)


def _forward(x, kernel, strides, pads, dilation, gemm_kernel_gradient):
    return convolution(x, kernel, strides, pads, dilation), (x, kernel)


def _backward(strides, pads, dilation, gemm_kernel_gradient, residuals, dy):
    x, kernel = residuals

    def xla(x, kernel):
        return _lax_convolution(
            x,
            kernel,
            dimension_numbers=_numbers(x, kernel),
            strides=strides,
            pads=pads,
            dilation=dilation,
        )

    back_pads = _back_pads(kernel.shape, pads, dilation)
    if tuple(strides) == (1, 1) and all(p >= 0 for side in back_pads for p in side):
        turned = kernel[::-1, ::-1]  # HWIO read as HWOI: input and output channels swap
        dx = convolution(dy, turned, (1, 1), back_pads, dilation, ("NHWC", "HWOI", "NHWC"))
    else:
        dx = jax.vjp(lambda x: xla(x, kernel), x)[1](dy)[0]
    if onednn_kernel_grad.usable(x, dy):
        dkernel = onednn_kernel_grad.kernel_gradient(x, dy, kernel.shape, strides, pads, dilation)
    elif gemm_kernel_gradient:
        dkernel = kernel_gradient(x, dy, kernel.shape, pads, dilation)
    else:
        dkernel = jax.vjp(lambda kernel: xla(x, kernel), kernel)[1](dy)[0]
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


conv_with_onednn.defvjp(_forward, _backward)
