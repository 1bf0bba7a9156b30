"""Trains and evaluates a jaxseg config.

    python train.py                                     # configs/default.py, workdir runs/default
    python train.py --config configs/unet.py --workdir runs/unet --config.train.num_steps=500

Running the same command again with the same workdir resumes from its latest checkpoint.

Several processes (hosts): run the same command in each, with
    --distributed                     on a TPU pod or SLURM (jax finds the cluster), or
    --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""

import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jaxseg.train.loop import train_and_evaluate

_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "default.py")
_CONFIG = config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "Training config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config name>).")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with the cluster's auto-detection."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize_distributed():
    """Joins a multi-process run when asked to; CPU processes talk through gloo."""
    if _COORDINATOR.value or _NUM_PROCESSES.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and tfds log every file at INFO
    initialize_distributed()
    config_path = config_flags.get_config_filename(flags.FLAGS["config"])
    name = os.path.splitext(os.path.basename(config_path))[0]
    train_and_evaluate(_CONFIG.value, _WORKDIR.value or os.path.join("runs", name))


if __name__ == "__main__":
    app.run(main)
