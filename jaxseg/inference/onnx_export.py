"""A trained model as an ONNX file (converted by jax2onnx), run by onnxruntime.

The file holds uint8 tiles (batch, tile_h, tile_w, 3) -> class probabilities, the
normalisation inside, the weights as constants (initializers), computed in float32. Its
batch size is fixed when it is written (jax2onnx's resize rule takes no symbolic batch);
`OnnxModel` runs any number of tiles through it, a batch at a time. The manifest of the
StableHLO container (`export.describe`: tile, classes, input contract, dataset info) is
the model's metadata under METADATA_KEY, so `load_onnx` gives the tiled Predictor all it
needs.

Needs the optional extra: `pip install "jaxseg[onnx]"`, then jax2onnx itself with
`pip install --no-deps jax2onnx==0.17.1` (it pins orbax-checkpoint<0.11.37, which it never
imports, against jaxseg's >=0.12.8).
"""

import contextlib
import importlib
import importlib.metadata
import json
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxseg.atomic import atomic_path
from jaxseg.data.info import SegmentationInfo
from jaxseg.inference.export import (
    ExportedContract,
    ExportError,
    check_destination,
    describe,
)
from jaxseg.inference.network import probability_network
from jaxseg.inference.tiling import Predictor
from jaxseg.models.platforms import plain_lax_forms

FORMAT, VERSION = "jaxseg-onnx", 1
METADATA_KEY = "jaxseg_export"
INPUT, OUTPUT = "images", "probabilities"
OPSET = 23  # jax2onnx 0.17.1's default; onnxruntime 1.32 runs it
INSTALL = 'pip install "jaxseg[onnx]" && pip install --no-deps jax2onnx==0.17.1'


class OnnxUnavailable(ExportError):
    """jax2onnx, onnx or onnxruntime is not installed."""

    heading = "ONNX unavailable"


def require(module: str):
    """The module (jax2onnx, onnx, onnxruntime), or OnnxUnavailable saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise OnnxUnavailable(
            f"ONNX export and prediction need {module}, which is not installed ({e});"
            f" install them with: {INSTALL}"
        ) from e


def onnx_available() -> bool:
    """Whether jax2onnx, onnx and onnxruntime can all be imported."""
    try:
        for module in ("jax2onnx", "onnx", "onnxruntime"):
            require(module)
    except OnnxUnavailable:
        return False
    return True


def onnx_path(output: str) -> str:
    """Where the ONNX file beside a StableHLO container goes: NAME.jaxexport -> NAME.onnx,
    any other name gets .onnx appended."""
    return output.removesuffix(".jaxexport") + ".onnx"


@contextlib.contextmanager
def _level(logger: logging.Logger, level: int):
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def convert(function, inputs: jax.ShapeDtypeStruct, name: str, output_name: str = OUTPUT):
    """`function` of one array as an onnx.ModelProto, traced with the plain lax forms.

    Args:
      function: traceable; its constants (the weights) become the graph's initializers.
      inputs: the shape and dtype of its one input (named INPUT in the graph).
      name: the graph's name.
      output_name: the name of its one output.

    Returns:
      The model, its intermediate shapes inferred by onnx.
    """
    jax2onnx, onnx = require("jax2onnx"), require("onnx")
    # onnx_ir warns of values without a type when it writes their shape hints: hints that
    # are dropped and inferred again below.
    hints = logging.getLogger("onnx_ir.serde")
    with plain_lax_forms(), _level(hints, logging.ERROR):
        model = jax2onnx.to_onnx(
            function,
            [inputs],
            model_name=name,
            opset=OPSET,
            input_names=[INPUT],
            output_names=[output_name],
        )
    # jax2onnx 0.17.1 keeps the NHWC shapes of values its layout pass moved to NCHW (a
    # ResNet block's sum, then onnxruntime refuses the graph): the intermediate shapes are
    # only hints, so they are dropped and inferred again.
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model)


def model_to_onnx(model, variables, shape: tuple[int, ...]):
    """The model's scores (`model.apply(variables, x)`, float NHWC in) as an onnx.ModelProto
    for inputs of exactly `shape`: what the parity tests compare with jaxseg."""
    return convert(
        lambda images: model.apply(variables, images),
        jax.ShapeDtypeStruct(shape, jnp.float32),
        name=f"jaxseg_{type(model).__name__}",
        output_name="scores",
    )


def export_onnx(
    path: str,
    model,
    variables,
    info: SegmentationInfo,
    tile: tuple[int, int],
    batch_size: int = 1,
    source: dict | None = None,
) -> dict:
    """Writes `path`: the model's prediction function on uint8 tiles of input shape `tile`,
    `batch_size` of them per call, computed in float32 (see the module docstring).

    Returns:
      Its manifest (the file's metadata under METADATA_KEY).
    """
    onnx = require("onnx")
    require("jax2onnx")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"ONNX batch size {batch_size!r}: it must be an integer >= 1")
    check_destination(path, "the ONNX file", onnx_manifest_of)
    # float32 (onnxruntime's CPU kernels) and no rematerialisation (inference only).
    model = model.clone(parent=None, dtype="float32", remat="none")
    predictor = Predictor(model, variables, info, tile=tile)  # checks the tile
    network = probability_network(model, info)
    tiles = jax.ShapeDtypeStruct((batch_size, *predictor.tile, 3), jnp.uint8)
    try:
        proto = convert(
            lambda images: network(variables, images), tiles, f"jaxseg_{type(model).__name__}"
        )
    except (NotImplementedError, TypeError, ValueError) as e:
        raise ExportError(
            f"jax2onnx cannot convert {type(model).__name__} ({type(e).__name__}: {e})"
        ) from e
    output_tile = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim][1:3]
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "jax": jax.__version__,
        "jax2onnx": importlib.metadata.version("jax2onnx"),
        "opset": OPSET,
        "batch_size": batch_size,
        **describe(model, info, predictor.tile, output_tile, source),
    }
    onnx.helper.set_model_props(proto, {METADATA_KEY: json.dumps(manifest)})
    try:  # a failed or killed export leaves no half-written file
        with atomic_path(path) as partial, open(partial, "wb") as f:
            f.write(proto.SerializeToString())
    except OSError as e:
        raise ExportError(f"{path}: cannot be written ({e.strerror or e}); nothing was") from e
    return manifest


def _checked_manifest(path: str, metadata: dict) -> dict:
    if METADATA_KEY not in metadata:
        raise ExportError(f"{path}: an ONNX file, but not one jaxseg wrote (no {METADATA_KEY})")
    manifest = json.loads(metadata[METADATA_KEY])
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ExportError(
            f"{path}: jaxseg ONNX format {manifest.get('format')!r} version"
            f" {manifest.get('version')}; this jaxseg reads {FORMAT!r} version {VERSION}:"
            " export the run again with this version"
        )
    return manifest


def onnx_manifest_of(path: str) -> dict:
    """The manifest of a jaxseg ONNX file; ValueError (ExportError) for any other file."""
    onnx = require("onnx")
    try:
        proto = onnx.load(path, load_external_data=False)
    except OSError:
        raise
    except Exception as e:  # protobuf's DecodeError and others for a file that is no model
        raise ExportError(f"{path}: not an ONNX file ({type(e).__name__}: {e})") from e
    return _checked_manifest(path, {p.key: p.value for p in proto.metadata_props})


class OnnxModel(ExportedContract):
    """A loaded jaxseg ONNX file: its input contract, and its network run by onnxruntime."""

    variables: dict = {}  # the weights are constants of the graph

    def __init__(self, path: str, manifest: dict, session):
        super().__init__(path, manifest)
        self.session = session
        self.batch_size = manifest["batch_size"]
        self.output_tile = tuple(manifest["output_tile"])

    def run(self, images: np.ndarray) -> np.ndarray:
        """uint8 tiles (N, tile_h, tile_w, 3), any N -> float32 probabilities, through the
        file's fixed batch (the last one padded)."""
        images = np.asarray(images, np.uint8)
        outputs = []
        for start in range(0, len(images), self.batch_size):
            batch = images[start : start + self.batch_size]
            count = len(batch)
            if count < self.batch_size:
                padding = np.zeros((self.batch_size - count, *batch.shape[1:]), np.uint8)
                batch = np.concatenate([batch, padding])
            (probabilities,) = self.session.run([OUTPUT], {INPUT: batch})
            outputs.append(probabilities[:count])
        return np.concatenate(outputs)

    def network(self, variables, images):
        """`run` as a traceable function (the Predictor jits its network)."""
        del variables
        shape = (images.shape[0], *self.output_tile, self.info.num_classes)
        return jax.pure_callback(self.run, jax.ShapeDtypeStruct(shape, jnp.float32), images)


def load_onnx(path: str) -> OnnxModel:
    """Opens a jaxseg ONNX file in onnxruntime; ExportError naming the file for anything else."""
    onnxruntime = require("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its warnings are about graph hints
    try:
        session = onnxruntime.InferenceSession(
            path, options, providers=onnxruntime.get_available_providers()
        )
    except Exception as e:  # onnxruntime raises its own types for missing and damaged files
        raise ExportError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    manifest = _checked_manifest(path, session.get_modelmeta().custom_metadata_map)
    return OnnxModel(path, manifest, session)


__all__ = [
    "OnnxModel",
    "OnnxUnavailable",
    "convert",
    "export_onnx",
    "load_onnx",
    "model_to_onnx",
    "onnx_available",
    "onnx_manifest_of",
    "onnx_path",
]
