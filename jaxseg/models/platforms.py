"""Ops computed differently per backend (`jax.lax.platform_dependent`), and a switch that
traces only their plain lax form.

An exported StableHLO function carries every form and each platform lowers its own. A
converter that reads the traced jaxpr (jax2onnx) has no rule for the `platform_index`
primitive this choice leaves in it, and its target (onnxruntime) runs none of XLA's
backends, so the CPU rewrites would not be faster there: inside `plain_lax_forms()` the
choice is resolved at trace time to the plain lax form, which every rewrite equals.
"""

import contextlib
import contextvars

import jax

_PLAIN_LAX = contextvars.ContextVar("jaxseg_plain_lax_forms", default=False)


@contextlib.contextmanager
def plain_lax_forms():
    """Within: `per_platform` traces only its `default` (plain lax) form.

    Only functions traced inside are affected: a function jitted and traced before keeps
    its per-platform form (convert a fresh function).
    """
    token = _PLAIN_LAX.set(True)
    try:
        yield
    finally:
        _PLAIN_LAX.reset(token)


def tracing_plain_lax() -> bool:
    """Whether `per_platform` traces only the plain lax form now."""
    return _PLAIN_LAX.get()


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
