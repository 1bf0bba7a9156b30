"""Two processes x 2 CPU devices (gloo collectives on 127.0.0.1) train like one process x 4."""

import os
import socket
import subprocess
import sys

import numpy as np
from helpers import REPO, tiny_config

from jaxseg.train.loop import train_and_evaluate
from jaxseg.train.reporting import read_metrics


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
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(REPO / "tests" / "multihost_worker.py"),
                str(i),
                "2",
                str(port),
                str(multi),
                data_dir,
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
    assert "process 0: 4 devices, 2 local" in outputs[0]
    assert "process 1: 4 devices, 2 local" in outputs[1]
    np.testing.assert_allclose(_losses(multi), _losses(single), rtol=1e-3)
    np.testing.assert_allclose(
        _losses(multi, "validation"), _losses(single, "validation"), rtol=1e-3
    )
    assert os.path.isdir(multi / "checkpoints" / "4")
