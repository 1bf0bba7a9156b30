"""Test setup: 4 fake CPU devices (set before jax is imported) and small shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()

import pytest  # noqa: E402
from absl import flags  # noqa: E402

# grain's worker processes read absl flags; outside an absl app they must be marked parsed.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One TFDS data dir for the whole session: tiny datasets are built once."""
    return str(tmp_path_factory.mktemp("tfds"))
