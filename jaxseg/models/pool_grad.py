"""Max pooling (unpadded: jaxseg pads with -inf first) with a CPU gradient written as a mask.

XLA:CPU expands the gradient of max pooling (select-and-scatter) into an argmax over each
window that carries one int32 index array per dimension, then a scatter: about a tenth of
the traced op time of the default config's train step. The same gradient is a mask: each
window's upstream gradient goes to the first position (row-major, the order
select-and-scatter visits) that holds the window's maximum. Ties (ReLU's zeros) go where
XLA sends them.
- Windows that tile the map (window = stride: the U-Net's and VGG's 2x2 pools): one
  elementwise pass, each position in one window; values and gradients equal the plain
  reduce_window's. Alone 5-30x faster (4x128x128x64: 45 -> 1.7 ms); whole train steps
  1.01-1.07x (README, "Exact CPU rewrites").
- Overlapping windows (ResNet's 3x3/2 stem pool): each tap's share is placed back at its
  strided positions (a pad with interior padding) and the window*window shares are added;
  a position in several windows sums their gradients in another order than the scatter, so
  gradients equal to float rounding. Alone 3.4x faster (8x130x162x64, the CamVid stem:
  157 -> 46 ms).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxseg.models.platforms import per_platform


def _reduce_window_max(x: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
    # Flax's pool (a reduce_window), called as jax2onnx's max-pool rule takes it (keywords).
    return nn.max_pool(x, window_shape=(window, window), strides=(stride, stride), padding="VALID")


def _tiles(shape, window: int, stride: int) -> bool:
    return window == stride and not (shape[1] % window or shape[2] % window)


def _tiling_gradient(x, pooled, grad, window: int) -> jnp.ndarray:
    """The gradient of the pool at `x`: each window's `grad` at the first position
    (row-major) that holds the window's maximum `pooled`, zero elsewhere."""
    n, h, w, c = x.shape
    blocks = x.reshape(n, h // window, window, w // window, window, c)
    zero = jnp.zeros((), grad.dtype)
    taken = jnp.zeros(pooled.shape, bool)  # windows whose maximum has had its gradient
    rows = []
    for i in range(window):
        row = []
        for j in range(window):
            hit = (blocks[:, :, i, :, j, :] == pooled) & ~taken
            taken = taken | hit
            row.append(jnp.where(hit, grad, zero))
        rows.append(jnp.stack(row, axis=3))
    # One elementwise pass (XLA fuses the slices, compares and stacks): 2-4x faster on
    # CPU than a minimum over the window's positions, a reduce over strided axes.
    return jnp.stack(rows, axis=2).reshape(n, h, w, c)


def _overlapping_gradient(x, pooled, grad, window: int, stride: int) -> jnp.ndarray:
    """The gradient of the pool at `x` for any window and stride: each tap's share (the
    windows whose first maximum it holds) placed back at the tap's strided positions."""
    height, width = x.shape[1:3]
    out_h, out_w = pooled.shape[1:3]
    rows, cols = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1  # each tap's span
    zero = jnp.zeros((), grad.dtype)
    taken = jnp.zeros(pooled.shape, bool)
    total = None
    for i in range(window):
        for j in range(window):
            hit = (x[:, i : i + rows : stride, j : j + cols : stride] == pooled) & ~taken
            taken = taken | hit
            share = jnp.where(hit, grad, zero)
            # Interior padding stride - 1 spreads the share back to the strided positions.
            placed = lax.pad(
                share,
                zero,
                ((0, 0, 0), (i, height - i - rows, stride - 1), (j, width - j - cols, stride - 1))
                + ((0, 0, 0),),
            )
            total = placed if total is None else total + placed
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _masked_max_pool(x: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
    return _reduce_window_max(x, window, stride)


def _forward(x, window, stride):
    pooled = _reduce_window_max(x, window, stride)
    return pooled, (x, pooled)


def _backward(window, stride, residuals, grad):
    x, pooled = residuals
    if _tiles(x.shape, window, stride):
        return (_tiling_gradient(x, pooled, grad, window),)
    return (_overlapping_gradient(x, pooled, grad, window, stride),)


_masked_max_pool.defvjp(_forward, _backward)


def masked_max_pool(x: jnp.ndarray, window: int, stride: int) -> jnp.ndarray:
    """Max pooling of NHWC `x` over `window` x `window` windows at `stride`, no padding
    ("VALID"); on CPU its gradient is the mask above."""
    return per_platform(
        x,
        cpu=lambda x: _masked_max_pool(x, window, stride),
        default=lambda x: _reduce_window_max(x, window, stride),
    )


def tiling_max_pool(x: jnp.ndarray, window: int) -> jnp.ndarray:
    """`masked_max_pool` at stride `window` of a map whose H and W are multiples of it."""
    height, width = x.shape[1:3]
    if not _tiles(x.shape, window, window):
        raise ValueError(f"a {height}x{width} map does not tile into {window}x{window} windows")
    return masked_max_pool(x, window, window)
