"""`jaxseg evaluate` (python evaluate.py): evaluates a trained run on a split of its dataset.

    jaxseg evaluate --workdir runs/default                   # its test split (it says which)
    jaxseg evaluate --workdir runs/camvid_unet --split val --step 500
    jaxseg evaluate --workdir runs/camvid_unet --tile 368,480 --tta --scales 0.75,1,1.25

Prints the metrics table and writes RUN/eval/<split>-<step>[-settings].json, the
prediction grid and confusion matrix in RUN/images/, and RUN/curves.png. With
--tile/--overlap/--tta/--scales it predicts as predict.py does (tiles, test-time
augmentation; the settings go into the file name). The config's evaluators add their
scores (the ISBI 2012 config: the challenge's V_Rand and V_Info).
Reads the checkpoint (and the config and dataset info saved in it); never
trains and never writes a checkpoint.
"""

from jaxseg import cli  # noqa: I001  (first: it arms the Ctrl-C handling before the rest loads)

from absl import app, flags

from jaxseg.commands.prediction_flags import define_prediction_flags
from jaxseg.evaluation.evaluate import PredictionSettings, evaluate_run

_WORKDIR = flags.DEFINE_string("workdir", None, "The run directory.", required=True)
_SPLIT = flags.DEFINE_string("split", None, "Split (default: the test split, else eval split).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_PREDICTION = define_prediction_flags("default: whole images, batched")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_libraries()
    cli.initialize_distributed()
    settings = PredictionSettings(tile=_PREDICTION.parsed_tile(), **_PREDICTION.options())
    evaluate_run(_WORKDIR.value, _SPLIT.value, _STEP.value, settings)


def run():
    cli.run(main, command=__name__)


if __name__ == "__main__":
    run()
