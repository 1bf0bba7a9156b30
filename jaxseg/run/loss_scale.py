"""Dynamic loss scaling, which float16 training always uses.

float16 has 5 exponent bits: gradients below ~6e-8 flush to zero in its backward pass. The
loss is multiplied by a scale S before differentiation, so the float16 gradients are S
times larger, and the float32 parameter gradients are divided by S again. A step whose
gradients are not finite (S too large: float16 overflowed) changes nothing but the scale,
which is divided by `factor` (never below 1); after `period` finite steps in a row it is
multiplied by `factor`: the rule of PyTorch's GradScaler and jmp's DynamicLossScale, with
jmp's defaults (2**15, 2000 steps, 2). bfloat16 has float32's exponent range and needs none
of this.

The scale lives in the train state (`LossScaledTrainState`, jaxseg/run/state.py) of
float16 models only, so float32 and bfloat16 checkpoints keep their tree.
"""

import jax
import jax.numpy as jnp
from flax import struct

INITIAL_SCALE = 2.0**15
PERIOD = 2000
FACTOR = 2.0


def needs_loss_scale(dtype: str) -> bool:
    """Whether a model computing in `dtype` (a model's `dtype` option) trains with a loss scale."""
    return dtype == "float16"


def all_finite(tree) -> jax.Array:
    """A scalar bool: whether every value of a tree of floating-point arrays is finite."""
    leaves = jax.tree.leaves(tree)
    return jnp.stack([jnp.isfinite(leaf).all() for leaf in leaves]).all()


class LossScale(struct.PyTreeNode):
    """The dynamic loss scale: `scale` (float32) and the finite steps since it last changed."""

    scale: jax.Array
    good_steps: jax.Array
    period: int = struct.field(pytree_node=False, default=PERIOD)
    factor: float = struct.field(pytree_node=False, default=FACTOR)

    @classmethod
    def create(cls, initial: float = INITIAL_SCALE, period: int = PERIOD, factor: float = FACTOR):
        """A fresh loss scale.

        Args:
          initial: the first scale.
          period: finite steps in a row after which the scale grows by `factor`.
          factor: what the scale is multiplied by (growth) or divided by (overflow).

        Returns:
          The LossScale.
        """
        return cls(jnp.float32(initial), jnp.int32(0), period, factor)

    def scale_loss(self, loss: jax.Array) -> jax.Array:
        return loss * self.scale

    def unscale(self, grads):
        return jax.tree.map(lambda g: g / self.scale.astype(g.dtype), grads)

    def adjust(self, finite: jax.Array) -> "LossScale":
        """The scale after a step whose gradients were (not) finite."""
        grow = finite & (self.good_steps + 1 >= self.period)
        scale = jnp.where(
            finite,
            jnp.where(grow, self.scale * self.factor, self.scale),
            # Never below 1: a smaller scale would only lose float16 range.
            jnp.maximum(self.scale / self.factor, 1.0),
        )
        good_steps = jnp.where(finite & ~grow, self.good_steps + 1, 0)
        return self.replace(scale=scale, good_steps=good_steps.astype(jnp.int32))


def apply_scaled_gradients(state, scaled_grads, batch_stats):
    """`state.apply_gradients` for gradients of the scaled loss (`state.loss_scale`).

    Args:
      state: a LossScaledTrainState.
      scaled_grads: gradients of `state.loss_scale.scale_loss(loss)`, summed over devices.
      batch_stats: the batch norm statistics of the step.

    Returns:
      The new state. If any gradient is not finite, the parameters, optimizer state and
      batch norm statistics are those of `state` (the step counter still advances, as its
      batch was consumed) and the scale is lowered.
    """
    scaler = state.loss_scale
    grads = scaler.unscale(scaled_grads)
    finite = all_finite(grads)
    updated = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    kept = state.replace(step=updated.step)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, kept)
    return new_state.replace(loss_scale=scaler.adjust(finite))
