"""Time per HLO instruction of a compiled program, read from a `jax.profiler` trace: what
`xla_bench.py --top-ops` and `vs_pytorch.py --profile` print."""

import collections
import glob
import re

import jax


def module_name(hlo_text: str) -> str:
    """The HLO module's name ("jit_train_step"), as the trace's events carry it."""
    return re.match(r"HloModule (\S+?),", hlo_text).group(1)


def instructions(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """{instruction name: (kind, result shape without layout, source op_name or "")}."""
    table = {}
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%(\S+) = (\S+) ([\w-]+)\(", line)
        if match:
            source = re.search(r'op_name="([^"]*)"', line)
            shape = match.group(2).split("{")[0]
            table[match.group(1)] = (match.group(3), shape, source.group(1) if source else "")
    return table


def milliseconds_per_step(profile_dir: str, module: str, steps: int) -> collections.Counter:
    """{instruction name: ms per step} of `module` in the trace of `steps` runs in
    `profile_dir` (thunks may run concurrently: the sum can exceed the step's wall time)."""
    (path,) = glob.glob(f"{profile_dir}/**/*.xplane.pb", recursive=True)
    milliseconds = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            for event in line.events:
                stats = dict(event.stats)
                if stats.get("hlo_module") == module and "hlo_op" in stats:
                    milliseconds[stats["hlo_op"]] += event.duration_ns / 1e6 / steps
    return milliseconds
