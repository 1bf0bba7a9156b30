"""Keeping freed host memory for reuse, so that XLA:CPU's per-step buffers stop page-faulting.

XLA:CPU allocates each execution's temporaries anew and frees them at its end. glibc's
malloc gives blocks that large fresh pages from mmap and unmaps them on free, so every
step first-touches (page-faults and zeroes) its temporaries again: 137,000 faults and
0.27 s of kernel time a step for the paper U-Net's train step (batch 4, 128x128), 30,000
and 0.07 s for the default config. By default JAX runs a computation on one of its own
threads; a thread's malloc arena (any but the main thread's) holds at most 64 MB and mmaps
anything larger even with mmap turned off, so MALLOC_MMAP_MAX_=0 and a high
MALLOC_TRIM_THRESHOLD_ alone do not help.

`reuse_freed_memory()` asks glibc (`mallopt`) for no mmap and no trimming below 2 GiB, and
JAX to run single-device CPU computations on the calling thread
(`jax_cpu_enable_async_dispatch=False`): the main thread's arena, the one heap that grows
without limit, then allocates the temporaries, freed blocks go back to it, and the next
step reuses their pages (few faults after the first steps). XLA's worker threads keep their
own arenas for what they allocate, chiefly the workspace oneDNN's GEMM allocates at every
call (thousands a step). With several CPU devices JAX still runs computations on its
threads, so there every thread is given the main arena (one arena); that was the setting
for every run before, and in one shared arena the workspaces' allocations walk its free
chunks and wait on its lock (7% of the default step's samples) and compiling took 14-37%
longer. The costs left: the process keeps its high-water mark of memory rather than
handing it back; Python's own work between steps no longer overlaps a running step (the
default config's training loop still ran at 99% and 105% of its bare step's rate,
`benchmarks/loop_vs_step.py`). Measured in README, Performance, "Host memory".

It must run before JAX starts its CPU client (whose threads bind to arenas when they
start, and whose dispatch mode is fixed then); the command-line tools call it first thing
(--reuse_host_memory, on by default). It only acts on CPU runs under glibc: with an
accelerator, host memory is not where the steps' buffers live.

This module imports no JAX at the top.
"""

import ctypes
import importlib.util
import os
import pkgutil
import platform
import re

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_KEEP_FREED = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
_ONE_ARENA = ((_M_ARENA_MAX, 1),)


def runs_on_cpu(jax_platforms: str | None = None) -> bool:
    """Whether JAX will run on the CPU, decided without starting any backend.

    Args:
      jax_platforms: JAX's platform list (JAX_PLATFORMS, e.g. "cpu" or "cuda,cpu"); None
        reads JAX's setting.

    Returns:
      True when the list puts "cpu" first, or, with no list, when no accelerator plugin
      (jax_plugins.*, libtpu) is installed.
    """
    if jax_platforms is None:
        import jax

        jax_platforms = jax.config.jax_platforms or ""
    if jax_platforms:
        return jax_platforms.split(",")[0].strip().lower() == "cpu"
    return not _accelerator_plugins()


def _accelerator_plugins() -> list[str]:
    names = []
    if importlib.util.find_spec("jax_plugins") is not None:
        import jax_plugins

        names += [module.name for module in pkgutil.iter_modules(jax_plugins.__path__)]
    if importlib.util.find_spec("libtpu") is not None:
        names.append("libtpu")
    return names


def reuse_freed_memory() -> str:
    """Sets glibc's malloc to keep freed memory for reuse (module docstring), where it helps.

    Returns:
      What was done, in words: "on" (and "one arena" with several CPU devices), or why
      not ("not glibc", "not a CPU run", "JAX's backends already started", "mallopt
      refused").
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    if _backends_started():
        return "JAX's backends already started"  # its threads hold their arenas already
    if not runs_on_cpu():
        return "not a CPU run"
    devices = cpu_devices()
    settings = _KEEP_FREED + (_ONE_ARENA if devices > 1 else ())
    libc = ctypes.CDLL("libc.so.6")
    if not all(libc.mallopt(parameter, value) == 1 for parameter, value in settings):
        return "mallopt refused"
    if devices > 1:
        return f"on, one arena ({devices} CPU devices)"
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    return "on"


def dispatches_inline() -> bool:
    """Whether JAX runs single-device CPU computations on the calling thread, as
    `reuse_freed_memory()` asks. Such a computation still goes to one of JAX's threads when
    an input is not ready yet (a copy to the device under way), so callers that put inputs
    on the device then wait for them."""
    import jax

    asynchronous = jax.config.values.get("jax_cpu_enable_async_dispatch", True)
    return jax.default_backend() == "cpu" and not asynchronous


def cpu_devices(environ=os.environ) -> int:
    """How many devices JAX's CPU client will make: `jax_num_cpu_devices`, else XLA_FLAGS'
    --xla_force_host_platform_device_count, else 1. Read before the client starts."""
    import jax

    configured = jax.config.values.get("jax_num_cpu_devices", -1)
    if configured > 0:
        return configured
    forced = re.findall(
        r"--xla_force_host_platform_device_count=(\d+)", environ.get("XLA_FLAGS", "")
    )
    return max(int(forced[-1]), 1) if forced else 1


def _backends_started() -> bool:
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def wanted(environ=os.environ) -> bool:
    """The default of --reuse_host_memory: JAXSEG_REUSE_HOST_MEMORY=0 turns it off."""
    return environ.get("JAXSEG_REUSE_HOST_MEMORY", "1").strip().lower() not in ("0", "false", "no")
