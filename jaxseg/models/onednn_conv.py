"""Convolutions computed by oneDNN on CPU, in both gradients: the switch
(`train.cpu_convolutions`, "auto" by default) and the differentiable convolution the
models use.

Why: PyTorch runs the U-Nets' convolutions as oneDNN's direct convolutions, XLA:CPU as
im2col GEMMs, and that was most of the gap between the two (README, "Where the default
step's time goes"). Measured on this project's 2-core machine, the default config's U-Net
(batch 16, 64x64, widths 16-256), its 18 3x3 convs summed, XLA's (with jaxseg's options) ->
oneDNN's: README, Performance.

`conv_with_onednn` is an NHWC/HWIO convolution whose forward pass, input gradient and kernel
gradient are oneDNN's (`onednn_calls`, the `onednn` extra). oneDNN reorders the kernel into
its blocked layout at every call, which costs most where the kernel outweighs the map (the
paper U-Net's 8x8x1024 -> 1024; FCN's fc6, 411 MB): `small_conv` gives it only convolutions
whose output has more positions than the kernel has outputs.

Only functions traced within `onednn_convolutions()` use it: the trainer's and evaluator's
steps, by default wherever the library works (`chosen`). Within, it is used where
`usable`: float32, 2-D, no groups, no input dilation, padding >= 0, static shapes, with the
library installed and working (`onednn_calls.available`). Programs on several devices, and
shapes oneDNN would not run by its direct kernels, get XLA's convolution (`onednn_calls`).
Exported functions never contain it (`platforms.portable_forms`): the call's target exists
only in a process that has imported jaxseg.
"""

import contextvars
import functools
import logging

import jax

from jaxseg.models import onednn_calls
from jaxseg.models.platforms import switched_on, tracing_portable

_ON = contextvars.ContextVar("jaxseg_onednn_convolutions", default=False)


def onednn_convolutions():
    """Within: convolutions traced here use oneDNN where `usable`."""
    return switched_on(_ON)


def chosen(choice: str) -> bool:
    """Whether `train.cpu_convolutions=choice` ("auto", "onednn" or "xla") runs the steps
    within `onednn_convolutions()`: "onednn" always (`with_onednn_convolutions` warns where
    the library is missing), "auto" on a CPU backend where the library is `available`."""
    if choice == "auto":
        return jax.default_backend() == "cpu" and onednn_calls.available()
    return choice == "onednn"


def with_onednn_convolutions(function):
    """`function` called within `onednn_convolutions()`: for a jitted step, its trace and
    compilation happen there, and so does its `lower` (an AOT lowering holds the calls too).
    Warns, on CPU, where oneDNN's convolutions are not available (XLA's are used)."""
    if jax.default_backend() == "cpu" and not onednn_calls.available():
        logging.warning(
            "train.cpu_convolutions='onednn' asks for oneDNN's convolutions, which are not"
            " available here (its library, the %s wheel jaxseg installs on x86-64 Linux,"
            " is missing, does not load or gave a wrong result; see the log above): XLA's"
            " convolutions are used",
            onednn_calls.DISTRIBUTION,
        )

    @functools.wraps(function)
    def call(*args, **kwargs):
        with onednn_convolutions():
            return function(*args, **kwargs)

    if hasattr(function, "lower"):

        @functools.wraps(function.lower)
        def lower(*args, **kwargs):
            with onednn_convolutions():
                return function.lower(*args, **kwargs)

        call.lower = lower
    return call


def usable(x, kernel, pads) -> bool:
    """Whether `conv_with_onednn` may compute this NHWC/HWIO convolution (module docstring)."""
    return (
        _ON.get()
        and not tracing_portable()
        and all(p >= 0 for side in pads for p in side)
        and onednn_calls.usable(x, kernel)
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_with_onednn(x, kernel, strides, pads, dilation):
    """An NHWC/HWIO convolution computed by oneDNN on CPU, both gradients too (module
    docstring); call where `usable`.

    strides, dilation: (h, w) tuples; pads: ((top, bottom), (left, right)), each >= 0.
    """
    return onednn_calls.forward(x, kernel, strides, pads, dilation)


def _forward(x, kernel, strides, pads, dilation):
    return onednn_calls.forward(x, kernel, strides, pads, dilation), (x, kernel)


def _backward(strides, pads, dilation, residuals, dy):
    x, kernel = residuals
    window = (strides, pads, dilation)
    dx = onednn_calls.input_gradient(dy, kernel, x.shape, *window)
    dkernel = onednn_calls.kernel_gradient(x, dy, kernel.shape, *window)
    return dx, dkernel


conv_with_onednn.defvjp(_forward, _backward)
