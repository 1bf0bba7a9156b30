"""What the command-line tools share: joining a multi-process run, logging, and how errors
reach the user.

jaxseg's own errors (JaxsegError: config, data, checkpoint, run, weights,
input) print as their message alone under a one-line heading; set
JAXSEG_TRACEBACK=1 to see their traceback too. Any other exception keeps its
traceback. Exit statuses of every jaxseg tool (train.py, evaluate.py,
predict.py, export.py):

  0    done
  1    an unexpected error (a bug or the environment): Python's traceback
  2    a jaxseg error: the message names what is wrong; nothing good was lost
  3    predict.py: some inputs could not be read, the others were predicted
  4    train.py: stopped by SIGTERM or SIGINT after saving a checkpoint; run the
       same command again to resume
  130  SIGINT (Ctrl-C) stopped the tool at once, with a line saying what was saved:
       a second Ctrl-C while training saves (that step is not saved); one while a
       run starts up, before its first step (nothing new to save); one in the final
       evaluation (the last checkpoint is saved); one in any other tool
"""

import functools
import os
import sys

from jaxseg import preemption

# Before the heavy imports: a Ctrl-C from here on stops the tool cleanly (preemption.py).
preemption.watch_interrupts_from_start()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from jaxseg import errors, host_memory  # noqa: E402
from jaxseg.errors import JaxsegError  # noqa: E402

# Every tool's exit statuses, here in one place (see the module docstring).
EXIT_ERROR = errors.EXIT_ERROR
EXIT_INTERRUPTED = errors.EXIT_INTERRUPTED
EXIT_PARTIAL = 3  # some inputs failed, the others were processed (predict.py)
EXIT_STOPPED_AT_ONCE = 130  # the shell's status for SIGINT: a second Ctrl-C

# A warm start: compiled programs are kept on disk, so running the same config (or evaluating
# or predicting with the same model) again compiles nothing. JAX_COMPILATION_CACHE_DIR, when
# set, wins (the test suite sets its own).
DEFAULT_COMPILATION_CACHE = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
    "jaxseg",
    "xla",
)
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache",
    os.environ.get("JAXSEG_COMPILATION_CACHE", DEFAULT_COMPILATION_CACHE),
    "Directory of JAX's persistent compilation cache ($JAXSEG_COMPILATION_CACHE);"
    " --compilation_cache= (empty) turns it off.",
)
_REUSE_HOST_MEMORY = flags.DEFINE_bool(
    "reuse_host_memory",
    host_memory.wanted(),
    "On CPU, keep freed host memory for reuse (glibc malloc: no mmap, no trimming; JAX runs"
    " single-device computations on the calling thread, whose arena keeps them), so that"
    " XLA's per-step buffers stop page-faulting: faster steps; the process keeps its"
    " high-water mark of memory (jaxseg/host_memory.py, README)."
    " $JAXSEG_REUSE_HOST_MEMORY=0 turns it off.",
)
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() with the cluster's auto-detection."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def initialize_distributed() -> None:
    """Joins a multi-process run when asked to; CPU processes talk through gloo."""
    if _COORDINATOR.value or _NUM_PROCESSES.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()


def use_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache in --compilation_cache (every program,
    however quick to compile), unless JAX_COMPILATION_CACHE_DIR already chose one or the
    flag is empty."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or not _COMPILATION_CACHE.value:
        return
    jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def quiet_libraries() -> None:
    """orbax and tfds log every file at INFO; keep warnings unless --verbosity is given.
    orbax's own lines are dropped too: a failed save or restore reaches the user as a
    jaxseg error (its traceback, orbax's included, with JAXSEG_TRACEBACK=1)."""
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
        logging.get_absl_logger().addFilter(_not_from_orbax)


def _not_from_orbax(record) -> bool:
    return f"{os.sep}orbax{os.sep}" not in record.pathname


def report_error(error: JaxsegError) -> None:
    """Prints a jaxseg error as its heading and message (and its traceback if asked)."""
    if os.environ.get("JAXSEG_TRACEBACK"):
        import traceback

        traceback.print_exception(error, file=sys.stderr)
    print(f"jaxseg {error.heading}:\n{error}", file=sys.stderr)


def config_name(spec: str) -> str:
    """ "unet" for "configs/unet.py" or "configs/unet.py:argument" (a run's default workdir)."""
    path = spec if os.path.exists(spec) else spec.partition(":")[0]
    return os.path.splitext(os.path.basename(path))[0]


def _started(main, argv):
    """What every tool does once its flags are parsed, then the tool."""
    if _REUSE_HOST_MEMORY.value:  # before anything starts JAX's CPU client
        logging.info("reuse host memory: %s", host_memory.reuse_freed_memory())
    use_compilation_cache()
    return main(argv)


def _show_command_help(command: str) -> None:
    """--help describes the command, whichever script or console entry started it: absl
    prints __main__'s docstring and key flags, so the command module's become them."""
    module = sys.modules[command]
    sys.modules["__main__"].__doc__ = module.__doc__
    main_name = sys.argv[0]
    shared = [__name__, "jaxseg.commands.prediction_flags"]  # cache, processes; tiles, TTA
    for flag in sum((flags.FLAGS.get_key_flags_for_module(m) for m in [command, *shared]), []):
        flags.FLAGS.register_key_flag_for_module(main_name, flag)
        flags.FLAGS.register_key_flag_for_module("__main__", flag)


def run(main, default_config: str | None = None, command: str | None = None) -> None:
    """absl.app.run(main) with jaxseg's error reporting (exit statuses: module docstring).

    With `default_config`, the tool takes a config: `--config FILE[:ARG]` (either form) and
    `--config.KEY=VALUE` overrides are read here (jaxseg/overrides.py), before absl parses
    the other flags, and main is called as `main(argv, config=..., config_spec=...)`.
    """
    if command is not None:
        _show_command_help(command)
    try:
        argv = sys.argv
        preemption.arm_interrupts()  # a Ctrl-C during the imports stops here
        if default_config is not None:
            from jaxseg.overrides import load_config, split_config_args

            spec, overrides, argv = split_config_args(sys.argv)
            spec = spec or default_config
            main = functools.partial(main, config=load_config(spec, overrides), config_spec=spec)
        app.run(functools.partial(_started, main), argv=argv)
    except JaxsegError as error:
        report_error(error)
        sys.exit(error.exit_status)
    except KeyboardInterrupt:
        print(f"jaxseg: {preemption.describe_interrupt()}", file=sys.stderr)
        sys.exit(EXIT_STOPPED_AT_ONCE)
