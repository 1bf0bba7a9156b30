"""The command-line tools: `jaxseg train|evaluate|predict|export ...` (the console script the
package installs; `python -m jaxseg ...` too). The repository's train.py, evaluate.py,
predict.py and export.py are aliases of the same commands."""

import importlib
import sys

COMMANDS = ("train", "evaluate", "predict", "export")
USAGE = (
    "usage: jaxseg {train,evaluate,predict,export} [flags]   (jaxseg COMMAND --help for its flags)"
)


def main() -> None:
    """Runs `jaxseg COMMAND ARGS...`: the command module alone is imported (each defines its
    own flags), with `sys.argv` as if it had been run by itself."""
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    command = sys.argv[1]
    if command not in COMMANDS:
        print(f"jaxseg: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"jaxseg {command}", *sys.argv[2:]]
    importlib.import_module(f"jaxseg.commands.{command}").run()
