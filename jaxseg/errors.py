"""jaxseg's own errors: each names what is wrong and what is allowed.

The command-line tools print these as their message alone, under a one-line
heading, and exit with the error's `exit_status` (jaxseg/cli.py has the table);
any other exception is a bug or an environment problem and keeps its
traceback. All subclass ValueError.
"""

EXIT_ERROR = 2  # a jaxseg error: the message says what is wrong and nothing good was lost
EXIT_INTERRUPTED = 4  # stopped by SIGTERM/SIGINT after saving a checkpoint: run it again


class JaxsegError(ValueError):
    """Base class; `heading` is the one-line title the tools print above the message."""

    heading = "error"
    exit_status = EXIT_ERROR


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


class WorkdirLockedError(RunError):
    """Another training run holds the workdir; the message names its process and host."""

    heading = "workdir in use"


class DivergedError(RunError):
    """The loss or the train state stopped being finite; nothing non-finite was saved."""

    heading = "training diverged"


class Interrupted(JaxsegError):
    """Training stopped on a signal after saving a checkpoint; the message says how to resume."""

    heading = "interrupted"
    exit_status = EXIT_INTERRUPTED


class ModelInputError(JaxsegError):
    """An input a model cannot take (size, tile); the message names the nearest valid ones."""

    heading = "input error"
