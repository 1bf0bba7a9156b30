"""Whether a tree of arrays is finite, and a train step that skips non-finite updates
(`train.skip_nonfinite_steps`); the training loop's divergence checks use them too."""

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _floating_leaves(tree) -> list:
    return [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]


def all_finite(tree) -> jax.Array:
    """A scalar bool: whether every floating-point value in `tree` is finite (traceable)."""
    checks = [jnp.isfinite(x).all() for x in _floating_leaves(tree)]
    return jnp.stack(checks).all() if checks else jnp.bool_(True)


_all_finite = jax.jit(all_finite)


def is_finite(tree) -> bool:
    """`all_finite` on the host (also for arrays that span several processes)."""
    result = _all_finite(tree)
    if not result.is_fully_addressable:
        result = result.addressable_data(0)
    return bool(np.asarray(result))


def skipping_nonfinite(step_fn):
    """`step_fn` (state, batch, rng) -> (state, metric sums) that keeps the incoming state
    when the loss or the new state is not finite; such a step adds nothing to the metric
    sums but 1 to their "skipped" count."""

    @functools.wraps(step_fn)
    def step(state, batch, rng):
        new_state, metrics = step_fn(state, batch, rng)
        finite = all_finite(metrics["loss_sum"]) & all_finite(
            (new_state.params, new_state.batch_stats, new_state.opt_state)
        )
        kept = state.replace(step=new_state.step)
        nothing = jax.tree.map(jnp.zeros_like, metrics)
        # cond, not a where per array: XLA compiles that select over the state 3x slower.
        new_state, metrics = jax.lax.cond(
            finite, lambda: (new_state, metrics), lambda: (kept, nothing)
        )
        return new_state, {**metrics, "skipped": (~finite).astype(jnp.int32)}

    return step
