"""Data parallelism: how state, batches and steps are laid out over the devices.

"mesh" (the default): `jax.jit` over a 1-D device mesh; the batch is split on
the "data" axis, the state replicated. The same jitted step runs unchanged on
one device, on N devices of one host and on many hosts: each process feeds its
local part of the global batch and `jax.make_array_from_process_local_data`
assembles the global array. Batch norm sees the global batch.

"pmap": the classic `jax.pmap` form (JAX keeps pmap in maintenance mode). Each
local device gets its slice of the process's batch; gradients and metrics are
summed over all devices of all processes, batch norm statistics are per
device (unsynchronised) and averaged after each step.

The pmap form is written as its difference from the mesh form (a subclass), so the
training loop does not know which runs,
and each carries the one place where per-device collectives are written
(`axis`: `GlobalBatch` or `PerDevice`), which the train and eval steps call.
"""

import jax
import numpy as np
from absl import logging
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxseg import host_memory
from jaxseg.errors import ConfigError
from jaxseg.models.platforms import CPU_OPTIONS

DATA_AXIS = "data"
KINDS = ("mesh", "pmap")


class GlobalBatch:
    """The step sees the whole global batch (jit + sharding): no collectives needed."""

    def sum(self, tree):
        return tree

    def mean(self, tree):
        return tree

    def num_replicas(self) -> int:
        return 1

    def fold_in_replica(self, rng):
        return rng


class PerDevice:
    """The step sees one device's part of the batch (pmap): sums and means over the axis."""

    def __init__(self, axis_name: str):
        self.axis_name = axis_name

    def sum(self, tree):
        return jax.lax.psum(tree, self.axis_name)

    def mean(self, tree):
        return jax.lax.pmean(tree, self.axis_name)

    def num_replicas(self):
        return jax.lax.psum(1, self.axis_name)

    def fold_in_replica(self, rng):
        """A different dropout key on each device."""
        return jax.random.fold_in(rng, jax.lax.axis_index(self.axis_name))


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over all devices (num_devices=0) or the first `num_devices` (one process only)."""
    return Mesh(np.asarray(_devices(num_devices, jax.devices())), (DATA_AXIS,))


def _devices(num_devices, devices):
    if not num_devices:
        return devices
    if jax.process_count() > 1:
        raise ConfigError("train.num_devices must be 0 (all devices) when running on several hosts")
    if num_devices > len(devices):
        raise ConfigError(
            f"train.num_devices={num_devices} but only {len(devices)} devices are available"
        )
    return devices[:num_devices]


def check_batch_size(batch_size: int, num_devices: int, name: str = "data.batch_size") -> None:
    if batch_size % num_devices:
        below = batch_size - batch_size % num_devices
        options = [b for b in (below, below + num_devices) if b > 0]
        raise ConfigError(
            f"{name}={batch_size} is not divisible by the {num_devices} devices;"
            f" use a multiple of {num_devices}, e.g. {options}"
        )


class MeshParallel:
    """jit + NamedSharding over a device mesh: the form every method is written for."""

    axis = GlobalBatch()

    def __init__(self, num_devices: int = 0):
        self.mesh = make_mesh(num_devices)
        self.num_devices = self.mesh.devices.size
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._batch = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        self._restore_sharding = self._replicated  # where orbax puts restored arrays
        self._inline_dispatch = host_memory.dispatches_inline()

    def init_state(self, init_fn, rng):
        return jax.jit(init_fn, out_shardings=self._replicated)(rng)

    def place(self, state):
        """A state built on the host (the same on every process), laid out for the step."""
        return jax.device_put(state, self._replicated)

    def restore_target(self, abstract_state):
        """The abstract state orbax restores into (placement included)."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._restore_sharding),
            abstract_state,
        )

    def place_restored(self, state):
        return self.place(state)  # already where it belongs: no copy

    def saveable(self, state):
        """The state as one copy, as checkpoints and plain jit functions take it."""
        return state

    def global_metrics(self, metrics):
        return self.saveable(metrics)

    def put_batch(self, local_batch: dict) -> dict:
        batch = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self._batch, np.asarray(x)),
            local_batch,
        )
        # With inline CPU dispatch (jaxseg/host_memory.py) a step whose inputs are still being
        # copied runs on one of JAX's threads instead, whose malloc arena cannot keep its
        # temporaries: wait here for the copy (the batch's bytes, once).
        return jax.block_until_ready(batch) if self._inline_dispatch else batch

    def compile_train(self, train_step, compiler_options=None):
        """(state, batch, rng) -> (state, metrics): state donated, replicated; batch sharded.
        `compiler_options`: XLA options of the step (jaxseg/models/remat.py)."""
        return jax.jit(
            train_step,
            in_shardings=(self._replicated, self._batch, self._replicated),
            out_shardings=(self._replicated, self._replicated),
            donate_argnums=(0,),
            compiler_options=compiler_options,
        )

    def compile_eval(self, eval_step, compiler_options=None):
        return jax.jit(
            eval_step,
            in_shardings=(self._replicated, self._batch),
            out_shardings=self._replicated,
            compiler_options=compiler_options,
        )


class PmapParallel(MeshParallel):
    """The mesh form's difference under jax.pmap over this process's devices: a leading
    device axis on the state (one copy per device) and on the batch; collectives span all
    processes."""

    axis = PerDevice(DATA_AXIS)

    def __init__(self, num_devices: int = 0):
        self.devices = _devices(num_devices, jax.local_devices())
        self.num_devices = len(self.devices) * jax.process_count()
        self._restore_sharding = jax.sharding.SingleDeviceSharding(self.devices[0])

    def init_state(self, init_fn, rng):
        return self.place(jax.jit(init_fn)(rng))

    def place(self, state):
        return jax_utils.replicate(state, self.devices)

    def saveable(self, state):
        return jax.tree.map(lambda x: x[0], state)  # every device holds the same (summed)

    def put_batch(self, local_batch: dict) -> dict:
        count = len(self.devices)
        return jax.tree.map(
            lambda x: np.asarray(x).reshape(count, x.shape[0] // count, *x.shape[1:]), local_batch
        )

    def compile_train(self, train_step, compiler_options=None):
        # jax.pmap takes no XLA options: it runs without jaxseg's CPU options (slower there,
        # platforms.py) and without remat's, which costs remat its memory saving (remat.py).
        if set(compiler_options or ()) - set(CPU_OPTIONS):
            logging.warning(
                "train.parallelism='pmap' cannot pass the XLA options %s: on this backend"
                " model.remat saves no memory in the pmap form; use parallelism='mesh'",
                compiler_options,
            )
        return jax.pmap(
            train_step,
            axis_name=DATA_AXIS,
            devices=self.devices,
            in_axes=(0, 0, None),
            donate_argnums=(0,),
        )

    def compile_eval(self, eval_step, compiler_options=None):
        return jax.pmap(eval_step, axis_name=DATA_AXIS, devices=self.devices)


def make_parallel(kind: str, num_devices: int = 0):
    """The "mesh" or "pmap" layout over all devices (0) or the first `num_devices`."""
    if kind == "mesh":
        return MeshParallel(num_devices)
    if kind == "pmap":
        return PmapParallel(num_devices)
    raise ConfigError(f"train.parallelism {kind!r} is not one of {KINDS}")
