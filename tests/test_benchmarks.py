"""The benchmark scripts run end to end on tiny settings (their numbers are not checked:
timing is benchmarks' job, never tests'). xla_bench and loop_vs_step: test_xla_bench.py;
predict_small_images (it needs a trained run): test_predict.py."""

import importlib.util
import re
import subprocess
import sys

import pytest
from helpers import REPO, TINY_CONFIG

from jaxseg.config import load_config_file, recipes

sys.path.insert(0, str(REPO / "benchmarks"))

import input_pipeline  # noqa: E402
import model_zoo  # noqa: E402

RATE = r"\d+\.\d images/s"


def test_input_pipeline(data_dir, capsys):
    input_pipeline.main(f"{TINY_CONFIG}:{data_dir}", "10")
    out = capsys.readouterr().out
    for name in ("pipeline, 2 threads", "pipeline, 2 worker processes", "train step"):
        assert re.search(rf"{re.escape(name)} +{RATE}", out), out
    assert re.search(rf"full-size crops +{RATE} +\d+\.\dx the step", out), out


def test_model_zoo_trains_the_shapes_recipes_only():
    names = model_zoo.shapes_recipes()
    assert "default" in names and "fcn_vgg16:8s" in names
    assert {"deeplabv3_resnet18", "deeplabv3plus_resnet18", "segformer_b0"} <= set(names)
    for name in names:
        file, _, argument = name.partition(":")
        spec = f"{file}.py" + (f":{argument}" if argument else "")
        assert spec in recipes()
        assert load_config_file(str(REPO / "configs" / spec)).data.name == "shapes"
    assert not any(name.startswith(("camvid", "isbi", "dsb2018")) for name in names)


def test_predict_memory():
    command = [sys.executable, str(REPO / "benchmarks" / "predict_memory.py")]
    command += ["--sizes", "96", "--tile", "64", "--batch_size", "2"]
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO).stdout
    header, row = out.strip().splitlines()[-2:]
    values = dict(zip(header.split(" | "), row.split(" | "), strict=True))
    assert values["size"] == "96" and int(values["tiles"]) == 4  # 2 x 2 tiles of 64
    assert float(values["peak MiB"]) >= 0 and float(values["seconds"]) > 0


def _run_benchmark(script: str, *arguments: str) -> str:
    """The script's standard output; fails with its standard error if it fails."""
    command = [sys.executable, str(REPO / "benchmarks" / script), *arguments]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the bench extra (torch)")
def test_vs_pytorch_twins_compute_the_same_function():
    out = _run_benchmark(
        "vs_pytorch.py", "default", "--check", "--rounds", "1", "--warmup", "1",
        "--variants", "jax", "torch",
    )  # fmt: skip
    assert "torch" in out and "jax" in out
    _run_benchmark("vs_pytorch.py", "--rounds", "0")  # no benchmark named: all (setup only)


@pytest.mark.skipif(importlib.util.find_spec("monai") is None, reason="torch and monai")
def test_vs_monai_predicts_what_the_twin_predicts():
    out = _run_benchmark(
        "vs_monai.py", "--check", "--size", "160", "--tiles", "64", "--rounds", "1",
        "--batch_size", "2",
    )  # fmt: skip
    error = re.search(r"max \|jaxseg - PyTorch\| probability (\S+)", out)
    assert error and float(error.group(1)) < 1e-4, out
    # Tile 64 steps by 48 on both sides: the same 3 x 3 tiles (at 0, 48 and 96).
    assert re.search(r"jaxseg +9 tiles", out) and re.search(r"monai +9 tiles", out), out
    assert float(re.search(r"agree on (\S+)%", out).group(1)) > 90, out


def test_model_zoo_gives_each_config_the_same_training_time(monkeypatch):
    """--minutes: the steps come from the calibration run's rate; the table shows the row."""
    calls = []

    def fake_train(name, workdir, *overrides):
        calls.append((name, workdir, overrides))
        steps = int(overrides[0].split("=")[1])
        rate = 40.0 if "calibrate" in workdir else 38.0
        metrics = dict(pixel_acc=0.9, mean_acc=0.8, miou=0.7, fwiou=0.85)
        return dict(
            config=name,
            parameters=1_234_567,
            steps=steps,
            batch_size=16,
            images=16 * steps,
            images_per_second=rate,
            step_seconds=16 / rate,
            train_seconds=300.0,
            wall_seconds=330.0,
            **metrics,
        )

    monkeypatch.setattr(model_zoo, "train", fake_train)
    row = model_zoo.run("deeplabv3plus_resnet18", minutes=2)
    assert "calibrate" in calls[0][1]
    assert calls[0][2][0] == f"--config.train.num_steps={model_zoo.CALIBRATION_STEPS}"
    assert calls[1][2][0] == "--config.train.num_steps=300"  # 2 min x 40 img/s / 16
    assert row["steps"] == 300 and row["calibrated_images_per_second"] == 40.0
    line = model_zoo.table([row]).splitlines()[-1]
    assert line == (
        "| `configs/deeplabv3plus_resnet18.py` | 1.23 M | 300 x 16 | 38.0 | 421 ms | 5.0 min"
        " | 0.900 | 0.800 | 0.700 | 0.850 |"
    )
    assert model_zoo.PARAMETERS.search("x\nModel unet: 1,940,000 parameters; 1 device(s)")[1] == (
        "1,940,000"
    )
