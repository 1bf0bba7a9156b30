r"""`jaxseg export` (python export.py): a trained run's prediction function (StableHLO) in one file.

    jaxseg export --workdir runs/default --output default.jaxexport
    jaxseg export --workdir runs/camvid_unet --output camvid.jaxexport \
        --platforms cpu,cuda --tile 368,480

The file holds the function (uint8 tiles of --tile in, class probabilities out, any
batch size), the trained variables (an argument of the function, not constants) and
the dataset info; `jaxseg predict --exported FILE` applies it to images of any size,
tile by tile, without building any jaxseg model. --output is checked before the work (a
directory, an unwritable place or an existing file that is no export: exit 2), and the
file is written whole or not at all.
"""

from jaxseg import cli  # noqa: I001  (first: it arms the Ctrl-C handling before the rest loads)

from absl import app, flags

from jaxseg.errors import ConfigError
from jaxseg.inference import default_tile
from jaxseg.inference.export import (
    PLATFORMS,
    check_destination,
    check_platforms,
    export_model,
)
from jaxseg.inference.files import parse_tile

_WORKDIR = flags.DEFINE_string("workdir", None, "The trained run.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "The file to write.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_TILE = flags.DEFINE_string("tile", None, "H,W of the exported tile (default ~512x512).")
_PLATFORMS = flags.DEFINE_list("platforms", list(PLATFORMS), "Platforms to lower for.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    check_platforms(_PLATFORMS.value)
    tile = parse_tile(_TILE.value) if _TILE.value else None
    if _TILE.value and tile is None:
        raise ConfigError("--tile 0 (whole images) cannot be exported: give H,W")
    check_destination(_OUTPUT.value)  # before the run is loaded and lowered
    cli.quiet_libraries()
    from jaxseg.run import load_run

    trained = load_run(_WORKDIR.value, _STEP.value)
    tile = tile or default_tile(trained.model)
    if tile is None:
        raise ConfigError(
            f"model {trained.config.model.name!r} is position dependent and cannot be tiled;"
            " exporting it is not supported"
        )
    manifest = export_model(
        _OUTPUT.value,
        trained.model,
        trained.variables,
        trained.info,
        tile,
        _PLATFORMS.value,
        source={
            "workdir": trained.workdir,
            "step": trained.step,
            "model": trained.config.model.to_dict(),
        },
    )
    print(
        f"Exported {trained.workdir} step {trained.step} to {_OUTPUT.value}: tiles"
        f" {tuple(manifest['tile'])} -> {tuple(manifest['output_tile'])},"
        f" {manifest['num_classes']} classes, platforms {manifest['platforms']}"
    )


def run():
    cli.run(main, command=__name__)


if __name__ == "__main__":
    run()
