"""One process of a multi-process CPU run (used by test_multihost.py).

python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT WORKDIR DATA_DIR
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main(process_id, num_processes, port, workdir, data_dir):
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=int(num_processes),
        process_id=int(process_id),
    )
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from helpers import tiny_config  # noqa: PLC0415

    from jaxseg.train.loop import train_and_evaluate  # noqa: PLC0415

    config = tiny_config(data_dir, **{"train.num_steps": 4, "train.num_devices": 0})
    results = train_and_evaluate(config, workdir)
    print(
        f"process {jax.process_index()}: {jax.device_count()} devices,"
        f" {jax.local_device_count()} local, miou {results['validation']['miou']:.6f}"
    )
    jax.distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
