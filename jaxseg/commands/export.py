r"""`jaxseg export` (python export.py): a trained run's prediction function (StableHLO) in one file.

    jaxseg export --workdir runs/default --output default.jaxexport
    jaxseg export --workdir runs/camvid_unet --output camvid.jaxexport \
        --platforms cpu,cuda --tile 368,480

The file holds the function (uint8 tiles of --tile in, class probabilities out, any
batch size), the trained variables (an argument of the function, not constants) and
the dataset info; `jaxseg predict --exported FILE` applies it to images of any size,
tile by tile, without building any jaxseg model. Beside it goes the same function as
ONNX (NAME.onnx for NAME.jaxexport; weights as constants, float32, --onnx_batch_size
tiles per call), which `jaxseg predict --exported NAME.onnx` runs with onnxruntime; it
needs `jaxseg[onnx]` (without it a note says it was skipped; --onnx given explicitly
makes that an error) and --noonnx skips it. Outputs are checked before the work (a
directory, an unwritable place or an existing file that is no export: exit 2), and each
file is written whole or not at all.
"""

from jaxseg import cli  # noqa: I001  (first: it arms the Ctrl-C handling before the rest loads)

from absl import app, flags

from jaxseg.errors import ConfigError
from jaxseg.inference import default_tile
from jaxseg.inference.export import (
    PLATFORMS,
    ExportError,
    check_destination,
    check_platforms,
    export_model,
)
from jaxseg.inference.files import parse_tile
from jaxseg.inference.onnx_export import (
    export_onnx,
    onnx_available,
    onnx_manifest_of,
    onnx_path,
    require,
)

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "The file to write.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_TILE = flags.DEFINE_string("tile", None, "H,W of the exported tile (default ~512x512).")
_PLATFORMS = flags.DEFINE_list("platforms", list(PLATFORMS), "Platforms to lower for.")
_ONNX = flags.DEFINE_bool(
    "onnx", True, "Also write NAME.onnx beside --output (needs jaxseg[onnx]); --noonnx skips it."
)
_ONNX_BATCH = flags.DEFINE_integer("onnx_batch_size", 1, "Tiles per call of the ONNX graph.")


def _onnx_destination() -> str | None:
    """The ONNX file to write, or None: --noonnx, or ONNX not installed and not asked for."""
    if not _ONNX.value:
        return None
    if not onnx_available():
        if _ONNX.present:  # asked for explicitly: say what is missing (exit 2)
            for module in ("jax2onnx", "onnx", "onnxruntime"):
                require(module)
        print("ONNX file skipped: jax2onnx/onnxruntime are not installed (jaxseg[onnx])")
        return None
    if _ONNX_BATCH.value < 1:
        raise ConfigError(f"--onnx_batch_size {_ONNX_BATCH.value}: it must be >= 1")
    path = onnx_path(_OUTPUT.value)
    check_destination(path, "the ONNX file", onnx_manifest_of)
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_platforms(_PLATFORMS.value)
    tile = parse_tile(_TILE.value) if _TILE.value else None
    if _TILE.value and tile is None:
        raise ConfigError("--tile 0 (whole images) cannot be exported: give H,W")
    check_destination(_OUTPUT.value)  # before the run is loaded and lowered
    onnx_file = _onnx_destination()
    cli.quiet_libraries()
    from jaxseg.run import load_run

    trained = load_run(_WORKDIR.value, _STEP.value)
    tile = tile or default_tile(trained.model)
    if tile is None:
        raise ConfigError(
            f"model {trained.config.model.name!r} is position dependent and cannot be tiled;"
            " exporting it is not supported"
        )
    source = {
        "workdir": trained.workdir,
        "step": trained.step,
        "model": trained.config.model.to_dict(),
    }
    manifest = export_model(
        _OUTPUT.value,
        trained.model,
        trained.variables,
        trained.info,
        tile,
        _PLATFORMS.value,
        source=source,
    )
    print(
        f"Exported {trained.workdir} step {trained.step} to {_OUTPUT.value}: tiles"
        f" {tuple(manifest['tile'])} -> {tuple(manifest['output_tile'])},"
        f" {manifest['num_classes']} classes, platforms {manifest['platforms']}"
    )
    if onnx_file:
        try:
            export_onnx(
                onnx_file,
                trained.model,
                trained.variables,
                trained.info,
                tile,
                _ONNX_BATCH.value,
                source=source,
            )
        except ExportError as e:
            raise ExportError(
                f"{e}\n{_OUTPUT.value} is written; {onnx_file} is not (--noonnx skips it)"
            ) from e
        print(f"and as ONNX to {onnx_file} ({_ONNX_BATCH.value} tile(s) per call, float32)")


def run():
    cli.run(main, command=__name__)


if __name__ == "__main__":
    run()
