"""Test setup: 4 fake CPU devices and one XLA compilation cache (both set before jax is
imported), and small shared fixtures."""

import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

# The tests compile the same programs many times over (every build_run of the tiny config,
# every train.py they start, configs that share a network): JAX's persistent cache compiles
# each once per test session. The directory is new for each session, made by the first
# process (pytest-xdist's workers and the tests' subprocesses inherit it) and removed by it.
_CACHE_OWNER = "JAXSEG_TEST_XLA_CACHE" not in os.environ
if _CACHE_OWNER:
    os.environ["JAXSEG_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="jaxseg-tests-xla-cache-")
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAXSEG_TEST_XLA_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's worker processes read absl flags; outside an absl app they must be marked parsed.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(autouse=True)
def _test_processes_keep_glibcs_malloc(monkeypatch):
    """A tool run in the test process (cli.run) leaves the worker's malloc as it is: the
    setting slows compiling, and would hold for the rest of the worker's tests. The tools
    that the tests start as subprocesses do take it; test_host_memory tests it."""
    from jaxseg import host_memory

    monkeypatch.setattr(host_memory, "reuse_freed_memory", lambda: "off in the test process")


def pytest_unconfigure(config):
    if _CACHE_OWNER:
        shutil.rmtree(os.environ["JAXSEG_TEST_XLA_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the whole session: tiny datasets are built once."""
    return str(tmp_path_factory.mktemp("tfds"))
