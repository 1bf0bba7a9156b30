"""`jaxseg train` (python train.py): trains and evaluates a jaxseg config.

    jaxseg train                                        # configs/default.py, workdir runs/default
    jaxseg train --config configs/unet.py --workdir runs/unet --config.train.num_steps=500

Running the same command again with the same workdir resumes from its newest intact checkpoint.
SIGTERM or Ctrl-C saves a checkpoint and exits with status 4 (Ctrl-C twice: at once, 130);
one workdir takes one training run at a time. Exit statuses: jaxseg/cli.py.

Several processes (hosts): run the same command in each, with
    --distributed                     on a TPU pod or SLURM (jax finds the cluster), or
    --coordinator_address=HOST:PORT --num_processes=N --process_id=I
"""

from jaxseg import cli  # noqa: I001  (first: it arms the Ctrl-C handling before the rest loads)

import os

from absl import app, flags

from jaxseg.config import CONFIGS_DIR
from jaxseg.train.loop import train_and_evaluate

_DEFAULT_CONFIG = os.path.join(CONFIGS_DIR, "default.py")
# Read by cli.run (jaxseg/overrides.py), with --config.KEY=VALUE; declared here for --help.
flags.DEFINE_string("config", _DEFAULT_CONFIG, "Config file, FILE.py or FILE.py:ARGUMENT.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output directory (default: runs/<config name>).")


def main(argv, config, config_spec):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_libraries()
    cli.initialize_distributed()
    workdir = _WORKDIR.value or os.path.join("runs", cli.config_name(config_spec))
    train_and_evaluate(config, workdir)


def run():
    cli.run(main, _DEFAULT_CONFIG, command=__name__)


if __name__ == "__main__":
    run()
