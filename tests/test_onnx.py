"""ONNX: every model, converted by jax2onnx and run by onnxruntime, computes what jaxseg
does (tiny widths); the exported .onnx file predicts images as the in-process model does."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("jax2onnx", reason="ONNX needs the jaxseg[onnx] extra (README: export)")
onnxruntime = pytest.importorskip("onnxruntime", reason="ONNX needs the jaxseg[onnx] extra")

from jaxseg.data.info import SegmentationInfo  # noqa: E402
from jaxseg.inference import Predictor  # noqa: E402
from jaxseg.inference.export import ExportError  # noqa: E402
from jaxseg.inference.onnx_export import (  # noqa: E402
    OnnxUnavailable,
    export_onnx,
    load_onnx,
    model_to_onnx,
    onnx_path,
    require,
)
from jaxseg.models import get_model, model_names  # noqa: E402

TOLERANCE = 1e-5  # of the largest |score|
# One tiny configuration per registered model, each reaching ops the others do not.
CASES = {
    "unet": ({"base_features": 4, "depth": 2}, (32, 32)),
    "unet_original": ({"base_features": 4, "depth": 2}, (76, 76)),  # valid convs, crops
    # VGG16 in Caffe's form: conv1_1 padded by 100, ceil-mode pools, final crop.
    "fcn32s": ({"alignment": "caffe", "encoder_options": {"include_fc": False}}, (36, 36)),
    "fcn16s": ({"encoder": "resnet18", "upsample": "resize"}, (64, 64)),  # bilinear resize
    "fcn8s": ({"encoder": "resnet18"}, (64, 64)),  # padded max pool, transposed convs
    # Nearest resizing down to stride 8 (half-pixel ties, where onnxruntime's Resize differs).
    "hypercolumn": (
        {
            "encoder": "resnet18",
            "projection_features": 8,
            "resize_method": "nearest",
            "resolution": 8,
        },
        (64, 64),
    ),  # fmt: skip
    "deeplabv3": ({"encoder": "resnet18", "channels": 8}, (64, 64)),  # atrous, image pooling
    "deeplabv3plus": ({"encoder": "resnet18", "channels": 8}, (64, 64)),  # separable, corners
    "segformer": ({"decoder_hidden_size": 16}, (64, 64)),  # attention, layer norm, GELU
}


def _perturbed(variables, seed=1):
    """Every variable moved off its initial value: zero biases and score layers, and unit
    batch statistics, would hide a wrongly converted op."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(variables)
    rng = np.random.default_rng(seed)
    moved = []
    for path, leaf in leaves:
        leaf = np.asarray(leaf)
        if getattr(path[-1], "key", None) == "var":
            moved.append(rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype))
        else:
            scale = float(leaf.std()) if leaf.size > 1 and leaf.std() > 0 else 0.1
            moved.append(leaf + rng.normal(0, scale, leaf.shape).astype(leaf.dtype))
    return jax.tree_util.tree_unflatten(tree, moved)


def _model(name, tile, **changes):
    options, _ = CASES[name]
    model = get_model(name, num_classes=3, **options | changes)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, *tile, 3)))
    return model, _perturbed(variables)


def _session(proto):
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def test_every_model_has_a_case():
    # jaxseg's own models: a test run in the same process may have registered a user's.
    from jaxseg.models import MODELS

    def module(name):  # partials (fcn8s, unet_original) are named by the function they wrap
        constructor = MODELS.get(name)
        return getattr(constructor, "func", constructor).__module__

    shipped = [n for n in model_names() if module(n).startswith("jaxseg.")]
    assert sorted(CASES) == sorted(shipped)


@pytest.mark.parametrize("name", sorted(CASES))
def test_onnxruntime_equals_jaxseg(name):
    _, tile = CASES[name]
    model, variables = _model(name, tile)
    images = np.random.default_rng(2).normal(size=(2, *tile, 3)).astype(np.float32)
    expected = np.asarray(model.apply(variables, images))
    proto = model_to_onnx(model, variables, images.shape)
    ops = {node.op_type for node in proto.graph.node}
    assert not {"If", "Loop"} & ops  # one form of every op, no platform choice
    (got,) = _session(proto).run(None, {"images": images})
    assert got.shape == expected.shape
    error = np.abs(got - expected).max() / np.abs(expected).max()
    assert error < TOLERANCE, f"{name}: relative error {error:.2e}"


def test_a_perturbed_weight_fails_the_comparison():
    """The comparison can fail: one changed weight is seen."""
    tile = (32, 32)
    model, variables = _model("unet", tile)
    images = np.random.default_rng(2).normal(size=(1, *tile, 3)).astype(np.float32)
    (got,) = _session(model_to_onnx(model, variables, images.shape)).run(None, {"images": images})
    changed = jax.tree.map(lambda x: x, variables)
    changed["params"]["classifier"]["bias"] = changed["params"]["classifier"]["bias"] + 0.01
    expected = np.asarray(model.apply(changed, images))
    assert np.abs(got - expected).max() / np.abs(expected).max() > TOLERANCE


def test_exported_file_predicts_what_the_model_does(tmp_path):
    """uint8 tiles in, probabilities out, 2 tiles per call of the graph; the Predictor's
    batches of 3 (6 with the flip) are cut and padded to it."""
    info = SegmentationInfo(("a", "b", "c"))
    # Initial weights: scores of a few units, so that probabilities compare at 1e-5 (the
    # perturbed models' scores reach hundreds).
    model = get_model("fcn8s", num_classes=3, encoder="resnet18", zero_init_scores=False)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    path = str(tmp_path / "model.onnx")
    manifest = export_onnx(path, model, variables, info, (64, 64), batch_size=2)
    assert manifest["batch_size"] == 2 and manifest["output_tile"] == [64, 64]
    loaded = load_onnx(path)
    assert loaded.tile == (64, 64) and loaded.tile_period() == 32
    assert loaded.info.class_names == ("a", "b", "c")
    image = np.random.default_rng(1).integers(0, 255, (90, 100, 3), np.uint8)
    expected, got = np.zeros((90, 100, 3), np.float32), np.zeros((90, 100, 3), np.float32)
    options = dict(tile=(64, 64), batch_size=3, flip=True)
    Predictor(model, variables, info, **options).predict(image, expected)
    loaded.predictor(batch_size=3, flip=True).predict(image, got)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bfloat16_models_are_exported_in_float32(tmp_path):
    info = SegmentationInfo(("a", "b", "c"))
    model = get_model("unet", num_classes=3, base_features=4, depth=2)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    path = str(tmp_path / "model.onnx")
    bfloat16 = model.clone(dtype="bfloat16")
    export_onnx(path, bfloat16, variables, info, (32, 32))
    tiles = np.random.default_rng(1).integers(0, 255, (1, 32, 32, 3), np.uint8)
    expected = jax.nn.softmax(model.apply(variables, info.normalize(tiles)), axis=-1)
    np.testing.assert_allclose(load_onnx(path).run(tiles), expected, atol=1e-5)


def test_files_that_are_not_jaxseg_onnx_are_named(tmp_path):
    info = SegmentationInfo(("a", "b", "c"))
    model, variables = _model("unet", (32, 32))
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model")
    with pytest.raises(ExportError, match="notes.onnx exists and is not a jaxseg export"):
        export_onnx(str(notes), model, variables, info, (32, 32))
    assert notes.read_text() == "not a model"
    with pytest.raises(ExportError, match="notes.onnx: not a readable ONNX file"):
        load_onnx(str(notes))
    foreign = tmp_path / "foreign.onnx"
    foreign.write_bytes(model_to_onnx(model, variables, (1, 32, 32, 3)).SerializeToString())
    with pytest.raises(ExportError, match="foreign.onnx: an ONNX file, but not one jaxseg"):
        load_onnx(str(foreign))
    with pytest.raises(ExportError, match="batch size 0"):
        export_onnx(str(tmp_path / "m.onnx"), model, variables, info, (32, 32), batch_size=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.onnx", "notes.onnx"]


def test_paths_and_a_missing_converter(monkeypatch):
    assert onnx_path("runs/model.jaxexport") == "runs/model.onnx"
    assert onnx_path("model") == "model.onnx"

    def missing(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr("jaxseg.inference.onnx_export.importlib.import_module", missing)
    with pytest.raises(OnnxUnavailable, match=r"need jax2onnx.*pip install \"jaxseg\[onnx\]\""):
        require("jax2onnx")
