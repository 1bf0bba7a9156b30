r"""`jaxseg predict` (python predict.py): segments images of any size with a trained run.

    jaxseg predict --workdir runs/default --input photos/ --output predictions/
    jaxseg predict --workdir runs/camvid_unet --input 'street/*.png' --output out \
        --tta --scales=0.75,1,1.25
    jaxseg predict --exported model.jaxexport --input big.tif --output out --save_probs
    jaxseg predict --exported model.onnx --input big.tif --output out   # onnxruntime

For every input image NAME.EXT it writes NAME.png (the classes as a palette PNG),
NAME_overlay.png (unless --no_overlay) and with --save_probs NAME_probs.npy
(float16 H x W x C); inputs whose outputs would share a name (a.png, a.jpg) keep their
extension in NAME (a.png.png, a.jpg.png). By default an image that fits in one ~512x512
tile is predicted whole (padded to a size bucket: one compilation per bucket) and larger
ones tile by tile; --tile=H,W tiles every image, --tile=0 predicts each image whole
(--overlap: how much tiles share). Existing outputs are kept unless --overwrite; an
output never replaces an input, and --output may not be an --input directory (refused
before any work). Exit status 0 when every image was predicted, 3 when some could not be
read (they are listed), 2 for a jaxseg error (flags, inputs and outputs are checked
before the model is loaded).
"""

from jaxseg import cli  # noqa: I001  (first: it arms the Ctrl-C handling before the rest loads)

import ctypes
import sys

from absl import app, flags

from jaxseg.errors import ConfigError
from jaxseg.inference import Predictor
from jaxseg.commands.prediction_flags import define_prediction_flags
from jaxseg.inference.files import plan_outputs, predict_files
from jaxseg.inference.tiling import AUTO, check_options

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run.")
_EXPORTED = flags.DEFINE_string(
    "exported", None, "An exported model (export.py: NAME.jaxexport, or NAME.onnx) instead."
)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_INPUT = flags.DEFINE_multi_string("input", None, "Image file, directory or glob pattern.")
_OUTPUT = flags.DEFINE_string("output", None, "Output directory.")
_BATCH = flags.DEFINE_integer("batch_size", 4, "Tiles per network call.")
_PREDICTION = define_prediction_flags(
    "default: images within one ~512x512 tile whole, larger ones in such tiles;"
    " 0 = every image whole"
)
_SAVE_PROBS = flags.DEFINE_bool("save_probs", False, "Also write NAME_probs.npy (float16).")
_NO_OVERLAY = flags.DEFINE_bool("no_overlay", False, "Do not write NAME_overlay.png.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Predict images whose outputs exist.")


def predictor_from_flags() -> Predictor:
    options = dict(
        batch_size=_BATCH.value,
        **_PREDICTION.options(),
    )
    check_options(**{k: v for k, v in options.items() if k != "flip"}, flag_prefix="--")
    if _EXPORTED.value:
        from jaxseg.inference.export import load_exported
        from jaxseg.inference.onnx_export import load_onnx

        if _PREDICTION.tile.value or _STEP.value is not None:
            raise ConfigError("--tile and --step belong to --workdir: an export has its own")
        load = load_onnx if _EXPORTED.value.endswith(".onnx") else load_exported
        return load(_EXPORTED.value).predictor(**options)
    from jaxseg.run import load_run

    trained = load_run(_WORKDIR.value, _STEP.value)
    tile = _PREDICTION.parsed_tile() if _PREDICTION.tile.value else AUTO
    return Predictor(trained.model, trained.variables, trained.info, tile=tile, **options)


def _return_freed_memory() -> None:
    """glibc's malloc serves allocations below a threshold that rises to 32 MiB from its
    heap, where the band arrays of large images, freed, stay resident; a fixed 1 MiB
    threshold maps such arrays and unmaps them when freed (8192^2: 220 MiB lower peak)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if bool(_WORKDIR.value) == bool(_EXPORTED.value):
        raise ConfigError("give either --workdir (a trained run) or --exported (a model file)")
    if not _INPUT.value or not _OUTPUT.value:
        raise ConfigError("--input and --output are required")
    # Flags, inputs and outputs are checked before a model is loaded and compiled.
    plan_outputs(_INPUT.value, _OUTPUT.value, not _NO_OVERLAY.value, _SAVE_PROBS.value)
    cli.quiet_libraries()
    _return_freed_memory()
    predictor = predictor_from_flags()
    summary = predict_files(
        predictor,
        _INPUT.value,
        _OUTPUT.value,
        with_overlay=not _NO_OVERLAY.value,
        save_probabilities=_SAVE_PROBS.value,
        overwrite=_OVERWRITE.value,
    )
    print(
        f"{len(summary.predicted)} image(s) predicted into {_OUTPUT.value}"
        f" ({summary.megapixels:.1f} megapixels in {summary.seconds:.1f} s)"
    )
    if summary.skipped:
        print(f"{len(summary.skipped)} skipped: their outputs exist (--overwrite redoes them)")
    if summary.failed:
        print(f"{len(summary.failed)} image(s) could not be read:", file=sys.stderr)
        for _, reason in summary.failed:  # the reason names the file
            print(f"  {reason}", file=sys.stderr)
        sys.exit(cli.EXIT_PARTIAL)


def run():
    cli.run(main, command=__name__)


if __name__ == "__main__":
    run()
