"""A trained model as one file: its prediction function in StableHLO (`jax.export`), its
variables, and what it needs to be applied (dataset info, input contract, tile shape).

The container is a zip archive:
  jaxseg_export.json      format and version, platforms, tile shapes, the model's input
                          contract, the dataset info (class names, palette, normalisation),
                          and where it came from (run, step, model config)
  function.jaxexport      `jax.export.Exported.serialize()` of network(variables, tiles):
                          uint8 (batch, tile_h, tile_w, 3) -> class probabilities, batch
                          symbolic; the variables are its first argument, not constants
  variables.safetensors   the variables, keyed by their paths ("params/encoder/...")

`load_exported(path)` gives back an object with the model's input contract, so the
tiled Predictor applies it to images of any size without any jaxseg model code.
"""

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy
from jax import export

from jaxseg.atomic import atomic_path, sweep_stale_temporaries, temporary_path
from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import JaxsegError
from jaxseg.inference.network import probability_network
from jaxseg.inference.tiling import Predictor
from jaxseg.models.platforms import portable_forms
from jaxseg.models.unet import unet_tile_padding

FORMAT, VERSION = "jaxseg-export", 1
PLATFORMS = ("cpu", "cuda", "tpu")
MANIFEST, FUNCTION, VARIABLES = "jaxseg_export.json", "function.jaxexport", "variables.safetensors"


class ExportError(JaxsegError):
    """An exported file that cannot be read or used."""

    heading = "export error"


def _contract(model) -> dict:
    padding = None
    if model.input_padding(1, 1) is not None:
        # Only the original U-Net pads its input; its padding is a function of its depth.
        padding = {"function": "unet_tile_padding", "depth": model.depth}
    return {
        "input_multiple": model.input_multiple(),
        "tile_period": model.tile_period(),
        "position_dependent": model.position_dependent(),
        "input_padding": padding,
    }


def describe(model, info: SegmentationInfo, tile, output_tile, source: dict | None) -> dict:
    """What every exported form records beside its function: tile shapes, classes, the
    model's input contract, the dataset info and where it came from."""
    return {
        "tile": list(tile),
        "output_tile": list(output_tile),
        "num_classes": info.num_classes,
        "contract": _contract(model),
        "info": info.to_dict(),
        "source": source or {},
    }


def _flatten(variables) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf) for path, leaf in flat
    }


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    tree = {}
    for name, value in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def check_platforms(platforms) -> None:
    """ExportError unless `platforms` are some of PLATFORMS."""
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        raise ExportError(f"platforms {list(platforms)}: each must be one of {list(PLATFORMS)}")


def export_model(
    path: str,
    model,
    variables,
    info: SegmentationInfo,
    tile: tuple[int, int],
    platforms=PLATFORMS,
    source: dict | None = None,
) -> dict:
    """Writes the container for `model` applied to tiles of input shape `tile`.

    Returns:
      Its manifest (what jaxseg_export.json holds).
    """
    check_platforms(platforms)
    check_destination(path)
    predictor = Predictor(model, variables, info, tile=tile)  # checks the tile, names valid ones
    network = probability_network(model, info)
    (batch,) = export.symbolic_shape("batch")
    specs = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), variables)
    tiles = jax.ShapeDtypeStruct((batch, *predictor.tile, 3), jnp.uint8)
    with portable_forms():  # no call into a library of this XLA build
        exported = export.export(jax.jit(network), platforms=tuple(platforms))(specs, tiles)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "jax": jax.__version__,
        "platforms": list(platforms),
        **describe(model, info, predictor.tile, exported.out_avals[0].shape[1:3], source),
    }
    try:  # a failed or killed export leaves no half-written file
        with atomic_path(path) as partial, zipfile.ZipFile(partial, "w") as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2))
            archive.writestr(FUNCTION, bytes(exported.serialize()))
            archive.writestr(VARIABLES, safetensors.numpy.save(_flatten(variables)))
    except OSError as e:
        raise ExportError(f"{path}: cannot be written ({e.strerror or e}); nothing was") from e
    return manifest


def check_destination(path: str, what: str = "--output", read_manifest=None) -> None:
    """Raises ExportError, before any work, if `path` cannot receive an export: a directory,
    a missing or unwritable directory, or an existing file that is no jaxseg export (which
    would be lost). Stale temporary files of killed exports to `path` are removed.

    Args:
      path: the file to write.
      what: how messages name it (the flag, or the file written beside it).
      read_manifest: reads an existing file's manifest, raising OSError, KeyError,
        ValueError or zipfile.BadZipFile for a file that is no export of its kind;
        default: the StableHLO container's (`manifest_of`).
    """
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ExportError(
            f"{what} {path} is a directory; give the file to write, e.g."
            f" {os.path.join(path, 'model.jaxexport')}"
        )
    if not os.path.isdir(directory):
        raise ExportError(f"{what} {path}: its directory {directory} does not exist")
    if os.path.lexists(path):
        try:
            (read_manifest or manifest_of)(path)
        except (OSError, zipfile.BadZipFile, KeyError, ValueError):
            raise ExportError(
                f"{what} {path} exists and is not a jaxseg export; it is not replaced:"
                " remove it or choose another --output"
            ) from None
    sweep_stale_temporaries(directory, of=os.path.basename(path), recursive=False)
    probe = temporary_path(path)
    try:  # the only sure test of writability (permissions, read-only mounts, ACLs)
        open(probe, "wb").close()
    except OSError as e:
        raise ExportError(f"{what} {path} cannot be written: {e.strerror or e}") from e
    os.remove(probe)


class ExportedContract:
    """An exported model as the Predictor sees it: its input contract, tile, dataset info
    read from its manifest (`describe`); subclasses add `variables` and
    `network(variables, uint8 tiles) -> probabilities`."""

    variables: dict

    def __init__(self, path: str, manifest: dict):
        self.path, self.manifest = path, manifest
        self.info = SegmentationInfo.from_dict(manifest["info"])
        self.tile = tuple(manifest["tile"])
        self._contract = manifest["contract"]

    def input_multiple(self) -> int:
        return self._contract["input_multiple"]

    def tile_period(self) -> int:
        return self._contract["tile_period"]

    def position_dependent(self) -> bool:
        return self._contract["position_dependent"]

    def input_padding(self, height: int, width: int):
        padding = self._contract["input_padding"]
        return None if padding is None else unet_tile_padding(height, width, padding["depth"])

    def predictor(self, **options) -> Predictor:
        """A tiled Predictor running the exported function on tiles of its export shape."""
        return Predictor(
            self, self.variables, self.info, network=self.network, tile=self.tile, **options
        )


class ExportedModel(ExportedContract):
    """A loaded container: the input contract of its model, its network and variables."""

    def __init__(self, path: str, manifest: dict, exported, variables: dict):
        super().__init__(path, manifest)
        self.exported, self.variables = exported, variables

    def network(self, variables, images):
        return self.exported.call(variables, images)


def load_exported(path: str) -> ExportedModel:
    """Reads a container; ExportError naming the file for anything that is not one."""
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read(MANIFEST))
            if manifest.get("format") != FORMAT:
                raise ExportError(
                    f"{path}: not a jaxseg export (format {manifest.get('format')!r})"
                )
            if manifest.get("version") != VERSION:
                raise ExportError(
                    f"{path}: jaxseg export version {manifest.get('version')}; this jaxseg reads"
                    f" version {VERSION}: export the run again with this version"
                )
            function = archive.read(FUNCTION)
            flat = safetensors.numpy.load(archive.read(VARIABLES))
    except FileNotFoundError as e:
        raise ExportError(f"{path}: no such file") from e
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"{path}: not a readable jaxseg export ({type(e).__name__}: {e})") from e
    try:
        exported = export.deserialize(bytearray(function))
    except Exception as e:  # flatbuffers/jax raise several types for damaged bytes
        raise ExportError(f"{path}: its function cannot be deserialised ({e})") from e
    variables = _unflatten(flat)
    expected = exported.in_tree.children()[0].children()[0]
    if jax.tree.structure(variables) != expected:
        raise ExportError(f"{path}: its variables do not match its function's arguments")
    return ExportedModel(path, manifest, exported, variables)


def manifest_of(path: str) -> dict:
    """The manifest alone (e.g. to print what a container holds)."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read(MANIFEST))


__all__ = [
    "ExportError",
    "ExportedContract",
    "ExportedModel",
    "check_destination",
    "check_platforms",
    "describe",
    "export_model",
    "load_exported",
    "manifest_of",
]
