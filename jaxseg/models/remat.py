"""Rematerialisation: recompute each encoder stage and decoder block in the backward pass.

`remat` (a model option): "none" keeps every activation the backward pass needs; "blocks"
keeps only each block's inputs and recomputes the rest of the block when its gradient is
taken (one more forward pass, activation memory of one block at a time); "convs" keeps the
convolution (and matmul) outputs inside a block too and recomputes only what is cheap to
recompute: batch norm, ReLU, pooling, resizes.

Every stage is checkpointed by `checkpointed`, a lifted `nn.checkpoint` over a function of
the module: the stage's submodules are created in the module's own scope, so parameter
names, initial values and checkpoints are the same with and without remat (tested). One
checkpoint over the whole forward pass, saving tagged block outputs, would keep the names
as well but saves nothing: XLA schedules the whole recomputation before the backward pass.
Where the stages begin matters too: an encoder stage starts after its pooling (the pooled
map is what it keeps), a U-Net decoder block includes its upsampling. Measured on the
paper's U-Net train step at 256x256, batch 8 (temporaries, MiB): none 3742; pooling
inside the stages 2564; upsampling outside the blocks 1852; as here 1732.

On CPU, XLA removes the optimization barriers that keep a recomputation apart from the
forward pass before its last CSE pass, which then merges the two again: remat has no effect
there unless the step is compiled with `compiler_options` (measured: the paper-width U-Net
at 256x256, batch 8, keeps the same temporaries without it). `build_run` compiles the train
step with them; the "pmap" form cannot take them (jax.pmap has no compiler options), so on
CPU remat saves nothing there.
"""

from collections.abc import Callable

import flax.linen as nn
import jax

from jaxseg.errors import ConfigError
from jaxseg.models import onednn_calls

REMAT_MODES = ("none", "blocks", "convs")

_SAVED_BY_CONVS = (
    jax.lax.conv_general_dilated_p,
    onednn_calls.convolution_p,
    jax.lax.dot_general_p,
)


def _save_conv_outputs(primitive, *_, **__) -> bool:
    return primitive in _SAVED_BY_CONVS


POLICIES = {"blocks": None, "convs": _save_conv_outputs}  # None: save only the inputs


def check_remat(remat: str) -> str:
    """Returns `remat`; ConfigError naming it and the allowed values if it is not one."""
    if remat not in REMAT_MODES:
        raise ConfigError(f"model.remat={remat!r} is not allowed; allowed: {REMAT_MODES}")
    return remat


def checkpointed(module: nn.Module, stage: Callable, remat: str) -> Callable:
    """`stage(module, *arrays)` as a function of the arrays, checkpointed unless remat="none".

    Args:
      module: the module whose compact method runs the stage; the stage's submodules are
        created in its scope, with the names `stage` gives them.
      stage: a function (module, *arrays) -> arrays; Python values it needs (train, sizes)
        are closed over.
      remat: one of REMAT_MODES.

    Returns:
      A function of the arrays that computes `stage` (in the backward pass, recomputes it).
    """
    if check_remat(remat) == "none":
        return lambda *arrays: stage(module, *arrays)
    lifted = nn.checkpoint(nn.compact(stage), policy=POLICIES[remat])
    return lambda *arrays: lifted(module, *arrays)


def compiler_options(remat: str, platform: str) -> dict[str, str] | None:
    """XLA options a step with this remat needs on `platform` ("cpu", "gpu", "tpu").

    Args:
      remat: the model's remat mode.
      platform: the backend the step is compiled for.

    Returns:
      On CPU with remat on, the option that keeps the optimization barriers (see the module
      docstring); otherwise None (nothing to change).
    """
    if check_remat(remat) == "none" or platform != "cpu":
        return None
    return {"xla_disable_hlo_passes": "cse_barrier_expander"}
