"""What every benchmark prints about the machine it ran on (timings mean little without it)."""

import contextlib
import os
import platform
from importlib import metadata

import flax
import jax
import optax


def cpu_name() -> str:
    """The host CPU's model name (/proc/cpuinfo), else what `platform` knows."""
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        name = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name)
    return name


def software() -> str:
    """Python and the JAX stack's versions."""
    return (
        f"python {platform.python_version()}, jax {jax.__version__},"
        f" jaxlib {metadata.version('jaxlib')}, flax {flax.__version__}, optax {optax.__version__}"
    )


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0))
