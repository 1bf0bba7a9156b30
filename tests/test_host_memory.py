"""Keeping freed host memory for reuse (jaxseg/host_memory.py): XLA:CPU's per-step buffers
stop page-faulting once glibc keeps them, and the tools ask for it before JAX starts."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from absl.testing import flagsaver

from jaxseg import cli, host_memory

# The default config's network (a U-Net, width 16) and a gradient step at its batch: its
# temporaries are a block above the 64 MB that a thread's malloc arena holds, so glibc mmaps
# them afresh every step unless the main thread's arena allocates them and keeps them.
_FAULTS_PER_STEP = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np
    from jaxseg import host_memory
    done = host_memory.reuse_freed_memory() if sys.argv[1] == "reuse" else "off"
    import jax, jax.numpy as jnp, jaxseg
    from jaxseg.models.platforms import xla_options
    model = jaxseg.get_model("unet", num_classes=5, base_features=16, depth=4)
    images = np.ones((16, 64, 64, 3), np.float32)
    variables = model.init(jax.random.key(0), images)
    after_start = host_memory.reuse_freed_memory()
    def loss(params, images):
        logits, _ = model.apply({**variables, "params": params}, images, train=True,
                                mutable=["batch_stats"])
        return jnp.mean(logits ** 2)
    step = jax.jit(jax.grad(loss), compiler_options=xla_options())
    batch = jax.block_until_ready(jax.device_put(images))
    step = step.lower(variables["params"], batch).compile()
    for _ in range(3):
        jax.block_until_ready(step(variables["params"], batch))
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(step(variables["params"], batch))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"done": done, "after_start": after_start, "faults": faults,
                      "inline": host_memory.dispatches_inline()}))
    """
)


def _faults_per_step(mode):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_STEP, mode],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_freed_blocks_are_reused_so_a_train_step_stops_page_faulting():
    system = _faults_per_step("system")
    reuse = _faults_per_step("reuse")
    assert system["done"] == "off" and reuse["done"] == "on"
    # Too late once JAX runs: its CPU client's threads already hold their arenas.
    assert reuse["after_start"] == system["after_start"] == "JAX's backends already started"
    assert reuse["inline"] and not system["inline"]
    # About 115 MB of temporaries (4 KiB pages) are touched afresh every step, unless glibc
    # keeps them: then most steps reuse the heap's pages (now and then one grows it again).
    assert min(system["faults"]) > 20_000, system
    assert sum(f < 1_000 for f in reuse["faults"]) >= 4, reuse
    assert sum(reuse["faults"]) < sum(system["faults"]) / 3, (reuse, system)


_SETTING_WITH_DEVICES = textwrap.dedent(
    """
    import json
    from jaxseg import host_memory
    done = host_memory.reuse_freed_memory()
    import jax
    print(json.dumps({"done": done, "devices": jax.device_count(),
                      "inline": host_memory.dispatches_inline()}))
    """
)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
@pytest.mark.parametrize(
    "settings, devices",
    [
        ({}, 1),
        ({"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, 2),
        ({"JAX_NUM_CPU_DEVICES": "3"}, 3),
    ],
)
def test_several_cpu_devices_keep_async_dispatch_and_share_one_arena(settings, devices):
    # JAX runs a computation over several devices on its own threads whatever the dispatch
    # setting, so there the main arena is every thread's (module docstring).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", **settings}
    result = subprocess.run(
        [sys.executable, "-c", _SETTING_WITH_DEVICES], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    done = "on" if devices == 1 else f"on, one arena ({devices} CPU devices)"
    assert got == {"done": done, "devices": devices, "inline": devices == 1}


def test_the_forced_cpu_device_count_is_read_from_xla_flags():
    flags = "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=4"
    assert host_memory.cpu_devices({"XLA_FLAGS": flags}) == 4
    assert host_memory.cpu_devices({"XLA_FLAGS": "--xla_force_host_platform_device_count=0"}) == 1
    assert host_memory.cpu_devices({}) == 1


def test_a_cpu_run_is_told_from_the_platform_list_or_the_installed_plugins(monkeypatch):
    assert host_memory.runs_on_cpu("cpu") and host_memory.runs_on_cpu("CPU,cuda")
    assert not host_memory.runs_on_cpu("cuda,cpu") and not host_memory.runs_on_cpu("tpu")
    monkeypatch.setattr(host_memory, "_accelerator_plugins", lambda: [])
    assert host_memory.runs_on_cpu("")
    monkeypatch.setattr(host_memory, "_accelerator_plugins", lambda: ["xla_cuda13"])
    assert not host_memory.runs_on_cpu("")


@pytest.mark.parametrize(
    "value, wanted", [(None, True), ("1", True), ("0", False), ("false", False), ("no", False)]
)
def test_the_environment_turns_it_off(value, wanted):
    environ = {} if value is None else {"JAXSEG_REUSE_HOST_MEMORY": value}
    assert host_memory.wanted(environ) is wanted


@pytest.mark.parametrize("argv, calls", [(["tool"], 1), (["tool", "--noreuse_host_memory"], 0)])
def test_the_tools_ask_for_it_first_unless_the_flag_is_off(monkeypatch, argv, calls):
    order = []
    monkeypatch.setattr(host_memory, "reuse_freed_memory", lambda: order.append("reuse") or "on")
    monkeypatch.setattr(cli, "use_compilation_cache", lambda: order.append("cache"))
    monkeypatch.setattr(sys, "argv", argv)

    def main(argv):
        order.append("main")

    with flagsaver.flagsaver(reuse_host_memory=True), pytest.raises(SystemExit) as stopped:
        cli.run(main)
    assert stopped.value.code in (0, None)
    assert order == ["reuse"] * calls + ["cache", "main"]


@pytest.mark.parametrize("inline", [True, False])
def test_with_inline_dispatch_a_batch_is_ready_when_put(monkeypatch, inline):
    # A step whose input is still being copied runs on one of JAX's threads, not inline.
    from jaxseg.run import parallel

    monkeypatch.setattr(host_memory, "dispatches_inline", lambda: inline)
    layout = parallel.MeshParallel(1)
    waited = []
    wait = parallel.jax.block_until_ready
    monkeypatch.setattr(parallel.jax, "block_until_ready", lambda x: waited.append(x) or wait(x))
    batch = layout.put_batch({"image": np.ones((2, 8, 8, 3), np.uint8)})
    assert [list(b) for b in waited] == ([["image"]] if inline else [])
    assert batch["image"].shape == (2, 8, 8, 3)
