"""Evaluates a trained run on a split of its dataset.

    python evaluate.py --workdir runs/default                   # its test split, else eval split
    python evaluate.py --workdir runs/camvid_unet --split val --step 500

Prints the metrics table and writes RUN/eval/<split>-<step>.json, the
prediction grid and confusion matrix in RUN/images/, and RUN/curves.png.
Reads the checkpoint (and the config and dataset info saved in it); never
trains and never writes a checkpoint.
"""

from absl import app, flags

from jaxseg import cli
from jaxseg.train.evaluation import evaluate_run

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.", required=True)
_SPLIT = flags.DEFINE_string("split", None, "Split (default: the test split, else eval split).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_libraries()
    cli.initialize_distributed()
    evaluate_run(_WORKDIR.value, _SPLIT.value, _STEP.value)


if __name__ == "__main__":
    cli.run(main)
