"""jaxseg as an installed library, not a checkout: the wheel carries the configs and the
`jaxseg` console script, which trains and predicts from a directory outside the repository."""

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

import numpy as np
from helpers import REPO
from PIL import Image


def _run(*command, cwd, env=None):
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_wheel_installs_into_a_fresh_venv_and_trains_and_predicts(data_dir, tmp_path):
    # Built from a copy (setuptools leaves build/ beside the sources), without build
    # isolation: the test environment's setuptools, no download.
    source = tmp_path / "source"
    shutil.copytree(
        REPO / "jaxseg", source / "jaxseg", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(tmp_path / "dist"), str(source), cwd=tmp_path,
    )  # fmt: skip
    (wheel,) = glob.glob(str(tmp_path / "dist" / "jaxseg-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=tmp_path)
    python = venv / "bin" / "python"
    _run(
        sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
        wheel, cwd=tmp_path,
    )  # fmt: skip
    # The dependencies (jax, flax, ...) from this environment, without its editable jaxseg
    # (a path in a .pth file adds the directory, not the .pth files inside it).
    site = _run(
        str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    with open(os.path.join(site, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"XLA_FLAGS": ""}
    where = _run(str(python), "-c", "import jaxseg; print(jaxseg.__file__)", cwd=outside, env=env)
    assert where.stdout.strip().startswith(site), where.stdout

    jaxseg = str(venv / "bin" / "jaxseg")
    shapes = dict(image_size=32, num_train=64, num_validation=16, num_test=8, data_dir=data_dir)
    trained = _run(
        jaxseg, "train", "--config", "configs/default.py", "--workdir", "run",
        "--config.model.base_features=8", "--config.model.depth=2",
        *(f"--config.data.options.{key}={value}" for key, value in shapes.items()),
        "--config.data.augment.crop_size=32,32", "--config.data.batch_size=8",
        "--config.data.eval_batch_size=8", "--config.train.num_steps=1",
        "--config.train.eval_every=0", "--config.train.checkpoint_every=0",
        "--config.train.num_devices=1", "--config.train.grid_examples=1",
        cwd=outside, env=env,
    )  # fmt: skip
    assert "Final metrics at step 1" in trained.stdout

    image = np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8)
    Image.fromarray(image).save(outside / "photo.png")
    _run(
        str(python), "-m", "jaxseg", "predict", "--workdir", "run", "--input", "photo.png",
        "--output", "out", cwd=outside, env=env,
    )  # fmt: skip
    assert np.asarray(Image.open(outside / "out" / "photo.png")).shape == (40, 48)
