"""Keeping freed host memory for reuse, so that XLA:CPU's per-step buffers stop page-faulting.

XLA:CPU allocates each execution's temporaries anew and frees them at its end. glibc's
malloc gives blocks that large fresh pages from mmap and unmaps them on free, so every
step first-touches (page-faults and zeroes) its temporaries again: 137,000 faults and
0.27 s of kernel time a step for the paper U-Net's train step (batch 4, 128x128), 30,000
and 0.07 s for the default config. The blocks are allocated by XLA's worker threads, whose
malloc arenas mmap anything above 64 MB, so MALLOC_MMAP_MAX_=0 and a high
MALLOC_TRIM_THRESHOLD_ alone do not help.

`reuse_freed_memory()` asks glibc (`mallopt`) for one arena (the main heap, for every
thread), no mmap, and no trimming below 2 GiB: freed blocks then go back to the heap and
the next step reuses their pages (few faults after the first steps). The costs: the process
keeps its high-water mark of memory rather than handing it back, and more (one heap's
holes: peak RSS -10% to +86% measured); and XLA compiles more slowly (+14-37% measured;
presumably its threads contending for the one arena's lock); and each step spends about
7% of its samples in malloc, whose search walks that heap's free chunks for the workspace
oneDNN's GEMM allocates at every call. A training run gains more than it loses (README,
Performance, "Host memory" and "Where the default step's time goes").

It must run before JAX starts its CPU client (whose threads bind to arenas when they
start); the command-line tools call it first thing (--reuse_host_memory, on by default).
It only acts on CPU runs under glibc: with an accelerator, host memory is not where the
steps' buffers live.

This module imports no JAX at the top.
"""

import ctypes
import importlib.util
import os
import pkgutil
import platform

# glibc <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))


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
      What was done, in words: "on", or why not ("not glibc", "not a CPU run", "JAX's
      backends already started", "mallopt refused").
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    if _backends_started():
        return "JAX's backends already started"  # its threads hold their arenas already
    if not runs_on_cpu():
        return "not a CPU run"
    libc = ctypes.CDLL("libc.so.6")
    if not all(libc.mallopt(parameter, value) == 1 for parameter, value in _SETTINGS):
        return "mallopt refused"
    return "on"


def _backends_started() -> bool:
    from jax._src import xla_bridge

    started = getattr(xla_bridge, "backends_are_initialized", None)
    return bool(started and started())


def wanted(environ=os.environ) -> bool:
    """The default of --reuse_host_memory: JAXSEG_REUSE_HOST_MEMORY=0 turns it off."""
    return environ.get("JAXSEG_REUSE_HOST_MEMORY", "1").strip().lower() not in ("0", "false", "no")
