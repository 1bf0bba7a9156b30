"""A warm start: the tools keep JAX's compiled programs in a persistent cache, so running the
same config again compiles nothing (JAX's own cache-miss log, JAX_EXPLAIN_CACHE_MISSES)."""

import os
import re
import subprocess
import sys

from helpers import REPO, TINY_CONFIG

MISS = "PERSISTENT COMPILATION CACHE MISS"


def _train(data_dir, workdir, *flags, **environ):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(JAX_EXPLAIN_CACHE_MISSES="1", XLA_FLAGS="", **environ)
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--config", f"{TINY_CONFIG}:{data_dir}",
         "--workdir", str(workdir), *flags],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_a_second_run_of_the_same_config_compiles_nothing(data_dir, tmp_path):
    cache = tmp_path / "cache"
    first = _train(data_dir, tmp_path / "first", f"--compilation_cache={cache}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count(MISS) > 5  # train and eval steps, init, predictor, ...
    entries = sorted(os.listdir(cache))
    second = _train(data_dir, tmp_path / "second", f"--compilation_cache={cache}")
    assert second.returncode == 0, second.stderr[-3000:]
    assert MISS not in second.stderr
    assert sorted(os.listdir(cache)) == entries
    assert "Compiled the training step in" in second.stdout


def test_the_cache_directory_comes_from_the_environment_and_an_empty_flag_turns_it_off(
    data_dir, tmp_path
):
    on = _train(data_dir, tmp_path / "on", JAXSEG_COMPILATION_CACHE=str(tmp_path / "env"))
    assert on.returncode == 0, on.stderr[-3000:]
    assert os.listdir(tmp_path / "env")
    off = _train(
        data_dir, tmp_path / "off", "--compilation_cache=",
        JAXSEG_COMPILATION_CACHE=str(tmp_path / "unused"),
    )  # fmt: skip
    assert off.returncode == 0, off.stderr[-3000:]
    assert not (tmp_path / "unused").exists()
    assert MISS not in off.stderr  # misses are only explained when a cache is on


def test_with_onednn_convolutions_a_second_run_compiles_nothing_too(data_dir, tmp_path):
    # oneDNN's convolutions are jaxseg's own custom call (onednn_calls), which XLA serializes,
    # unlike its own oneDNN thunk: the option keeps the warm start.
    cache, onednn = (
        f"--compilation_cache={tmp_path / 'cache'}",
        "--config.train.cpu_convolutions=onednn",
    )
    first = _train(data_dir, tmp_path / "first", cache, onednn)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Error writing persistent compilation cache" not in first.stderr
    assert re.search(rf"{MISS} for 'jit_train_step'", first.stderr)
    second = _train(data_dir, tmp_path / "second", cache, onednn)
    assert second.returncode == 0, second.stderr[-3000:]
    assert MISS not in second.stderr
