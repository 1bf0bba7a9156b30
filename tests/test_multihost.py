"""Two train.py processes x 2 CPU devices (gloo on 127.0.0.1) train like one process x 4."""

import os
import socket
import subprocess
import sys

import numpy as np
from helpers import REPO, TINY_CONFIG, tiny_config

from jaxseg.report.writer import read_metrics
from jaxseg.train.loop import train_and_evaluate


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(workdir, split="train"):
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return [r["loss"] for r in records if r["split"] == split]


def test_two_processes_match_one(data_dir, tmp_path):
    single = tmp_path / "single"
    config = tiny_config(data_dir, **{"train.num_steps": 4, "train.num_devices": 4})
    train_and_evaluate(config, str(single))

    multi = tmp_path / "multi"
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "train.py"),
                "--config",
                f"{TINY_CONFIG}:{data_dir}",
                "--workdir",
                str(multi),
                "--config.train.num_devices=0",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "4 device(s), 2 process(es)" in outputs[0]
    assert "Final metrics at step 4" in outputs[0]  # process 0 prints the table
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-3)
    np.testing.assert_allclose(
        _losses(multi, "validation"), _losses(single, "validation"), rtol=1e-3
    )
    assert os.path.isdir(multi / "checkpoints" / "4")
