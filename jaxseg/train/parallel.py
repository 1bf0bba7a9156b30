"""Data parallelism over a device mesh: the batch is split on the "data" axis, params replicated.

The same jitted step runs unchanged on one device, on N devices of one host,
and on many hosts: each process feeds its local part of the global batch and
`jax.make_array_from_process_local_data` assembles the global array.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(num_devices: int = 0) -> Mesh:
    """A 1-D mesh over all devices (num_devices=0) or the first `num_devices` (one process only)."""
    devices = jax.devices()
    if num_devices:
        if jax.process_count() > 1:
            raise ValueError(
                "train.num_devices must be 0 (all devices) when running on several hosts"
            )
        if num_devices > len(devices):
            raise ValueError(
                f"train.num_devices={num_devices} but only {len(devices)} devices are available"
            )
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "data.batch_size") -> None:
    num_devices = mesh.devices.size
    if batch_size % num_devices:
        below = batch_size - batch_size % num_devices
        options = [b for b in (below, below + num_devices) if b > 0]
        raise ValueError(
            f"{name}={batch_size} is not divisible by the {num_devices} devices;"
            f" use a multiple of {num_devices}, e.g. {options}"
        )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict, mesh: Mesh) -> dict:
    """Assembles this process's part of the batch into global arrays sharded on "data"."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )


def jit_train_step(train_step, mesh: Mesh):
    """Jits (state, batch, rng) -> (state, metrics): state donated, replicated; batch sharded."""
    return jax.jit(
        train_step,
        in_shardings=(replicated(mesh), batch_sharding(mesh), replicated(mesh)),
        out_shardings=(replicated(mesh), replicated(mesh)),
        donate_argnums=(0,),
    )


def jit_eval_step(eval_step, mesh: Mesh):
    return jax.jit(
        eval_step,
        in_shardings=(replicated(mesh), batch_sharding(mesh)),
        out_shardings=replicated(mesh),
    )
