"""Keeping freed host memory for reuse (jaxseg/host_memory.py): XLA:CPU's per-step buffers
stop page-faulting once glibc keeps them, and the tools ask for it before JAX starts."""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest
from absl.testing import flagsaver

from jaxseg import cli, host_memory

# The default config's network (a U-Net, width 16) and a gradient step at its batch: XLA's
# worker threads allocate its temporaries, in blocks above the 64 MB that their malloc
# arenas hold, so glibc mmaps them afresh every step.
_FAULTS_PER_STEP = textwrap.dedent(
    """
    import json, resource, sys
    from jaxseg import host_memory
    done = host_memory.reuse_freed_memory() if sys.argv[1] == "reuse" else "off"
    import jax, jax.numpy as jnp, jaxseg
    from jaxseg.models.platforms import xla_options
    model = jaxseg.get_model("unet", num_classes=5, base_features=16, depth=4)
    images = jnp.ones((16, 64, 64, 3), jnp.float32)
    variables = model.init(jax.random.key(0), images)
    after_start = host_memory.reuse_freed_memory()
    def loss(params):
        logits, _ = model.apply({**variables, "params": params}, images, train=True,
                                mutable=["batch_stats"])
        return jnp.mean(logits ** 2)
    step = jax.jit(jax.grad(loss), compiler_options=xla_options())
    step = step.lower(variables["params"]).compile()
    for _ in range(3):
        jax.block_until_ready(step(variables["params"]))
    faults = []
    for _ in range(6):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        jax.block_until_ready(step(variables["params"]))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"done": done, "after_start": after_start, "faults": faults}))
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
    # About 115 MB of temporaries (4 KiB pages) are touched afresh every step, unless glibc
    # keeps them: then most steps reuse the heap's pages (now and then one grows it again).
    assert min(system["faults"]) > 20_000, system
    assert sum(f < 1_000 for f in reuse["faults"]) >= 4, reuse
    assert sum(reuse["faults"]) < sum(system["faults"]) / 3, (reuse, system)


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
