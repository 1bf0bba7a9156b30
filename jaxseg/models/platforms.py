"""Ops computed differently per backend (`jax.lax.platform_dependent`), a switch that
traces only their plain lax form, and the XLA options jaxseg compiles its functions with.

An exported StableHLO function carries every form and each platform lowers its own. A
converter that reads the traced jaxpr (jax2onnx) has no rule for the `platform_index`
primitive this choice leaves in it, and its target (onnxruntime) runs none of XLA's
backends, so the CPU rewrites would not be faster there: inside `plain_lax_forms()` the
choice is resolved at trace time to the plain lax form, which every rewrite equals.
"""

import contextlib
import contextvars
import functools
import logging

import jax
import numpy as np

_PLAIN_LAX = contextvars.ContextVar("jaxseg_plain_lax_forms", default=False)
_PORTABLE = contextvars.ContextVar("jaxseg_portable_forms", default=False)


@contextlib.contextmanager
def switched_on(switch: contextvars.ContextVar):
    """Within: the boolean context variable `switch` is True; restored on the way out."""
    token = switch.set(True)
    try:
        yield
    finally:
        switch.reset(token)


def plain_lax_forms():
    """Within: `per_platform` traces only its `default` (plain lax) form, and `xla_options`
    gives none (XLA as it is).

    Only functions traced inside are affected: a function jitted and traced before keeps
    its per-platform form (convert a fresh function).
    """
    return switched_on(_PLAIN_LAX)


def tracing_plain_lax() -> bool:
    """Whether `per_platform` traces only the plain lax form now."""
    return _PLAIN_LAX.get()


def portable_forms():
    """Within: no form that calls a library of this jaxlib's own build (XLA:CPU's oneDNN
    convolution, `onednn_conv`), which another XLA build need not have: for functions that
    are exported. The other per-platform forms are plain StableHLO and stay."""
    return switched_on(_PORTABLE)


def tracing_portable() -> bool:
    """Whether functions traced now must be portable (`portable_forms`, `plain_lax_forms`)."""
    return _PORTABLE.get() or _PLAIN_LAX.get()


def per_platform(*args, default, **forms):
    """`jax.lax.platform_dependent(*args, default=default, **forms)`; `default(*args)` alone
    inside `plain_lax_forms()`.

    Args:
      *args: the operands.
      default: the plain lax form, used on every platform not named in `forms`.
      **forms: platform name (cpu, cuda, ...) -> a form equal to `default` (to float
        rounding) that is faster there.
    """
    if tracing_plain_lax():
        return default(*args)
    return jax.lax.platform_dependent(*args, default=default, **forms)


# XLA:CPU (jaxlib 0.10) hands each convolution to YNNPACK by default. Its own convolutions
# (the option below leaves YNNPACK only dots and reductions) are faster on most layers of
# jaxseg's models: measured on this project's 2-core machine, forward, batch 4: the paper
# U-Net's 3x3 convs 8x8x1024 -> 1024 57 -> 24 ms, 16x16x1024 -> 512 63 -> 35 ms,
# 16x16x512 -> 512 22 -> 17 ms, 32x32x256 -> 256 20 -> 18 ms; slower only on wide maps
# with few channels (128x128x64 -> 64 18 -> 27 ms). Whole train steps with the option alone,
# one A/B of two rounds: the paper U-Net 1.30-1.34x, six other configs 0.98-1.29x (README,
# Performance, has the later A/B of the option with the kernel-gradient rule).
CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def xla_options(platform: str | None = None) -> dict[str, str] | None:
    """The XLA options of jaxseg's compiled model functions on `platform` (default: JAX's
    default backend): CPU_OPTIONS on CPU, none elsewhere and inside `plain_lax_forms()`.

    For `jax.jit(..., compiler_options=xla_options())`. An XLA that no longer takes them
    (the option is experimental) gets none, with a warning, rather than failing.
    """
    if tracing_plain_lax():
        return None
    options = _checked_options(platform or jax.default_backend())
    return dict(options) if options else None


@functools.cache
def _checked_options(platform: str) -> dict[str, str] | None:
    if platform != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=CPU_OPTIONS).lower(1.0).compile()
    except Exception as error:  # an XLA without the option or its values
        logging.warning("XLA does not take jaxseg's CPU options %s: %s", CPU_OPTIONS, error)
        return None
    return CPU_OPTIONS


def run_on_cpu(function, *arrays):
    """`function(*arrays)` compiled and run on the CPU now, also while another function is
    traced (as a NumPy array)."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu) for a in arrays]
    return np.asarray(jax.jit(function).lower(*specs).compile()(*arrays))


def one_device(ctx) -> bool:
    """Whether the program being lowered (`ctx`, a lowering rule's context) runs on one device
    only: not pmap's per-device program of several, nor one partitioned over a mesh."""
    context = ctx.module_context.axis_context
    mesh = getattr(context, "mesh", None)
    if mesh is not None:  # shard_map
        return mesh.size == 1
    axis_env = getattr(context, "axis_env", None)
    if axis_env is not None:  # pmap
        return axis_env.nreps == 1
    return getattr(context, "num_devices", 1) == 1
