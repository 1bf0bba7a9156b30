"""jaxseg's own errors: each names what is wrong and what is allowed.

The command-line tools print these as their message alone, under a one-line
heading, and exit with status 2 (jaxseg/cli.py); any other exception is a bug
or an environment problem and keeps its traceback. All subclass ValueError.
"""


class JaxsegError(ValueError):
    """Base class; `heading` is the one-line title the tools print above the message."""

    heading = "error"


class ConfigError(JaxsegError):
    """A config key or value that is not allowed."""

    heading = "config error"


class DataError(JaxsegError):
    """A dataset, split or file that cannot be used; the message names it."""

    heading = "data error"


class CheckpointError(JaxsegError):
    """A checkpoint that is missing, damaged or does not fit the model."""

    heading = "checkpoint error"


class RunError(JaxsegError):
    """A workdir that is not a run, or cannot be used as one."""

    heading = "run error"


class ModelInputError(JaxsegError):
    """An input a model cannot take (size, tile); the message names the nearest valid ones."""

    heading = "input error"
