"""predict.py and export.py: a trained model applied to image files of any size, in process
and as an exported StableHLO (and ONNX) file."""

import json
import os
import re
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, tiny_config
from PIL import Image

from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import DataError, ModelInputError
from jaxseg.inference import Predictor
from jaxseg.inference.export import ExportError, export_model, load_exported
from jaxseg.inference.files import predict_files
from jaxseg.models import get_model
from jaxseg.run import build_run, load_run
from jaxseg.run.checkpoint import Checkpointer


@pytest.fixture(scope="module")
def run_dir(data_dir, tmp_path_factory):
    """A tiny U-Net trained 2 steps and checkpointed (no evaluation: seconds)."""
    workdir = tmp_path_factory.mktemp("predict_run")
    run = build_run(tiny_config(data_dir))
    state, batches = run.init_state(), run.train_batches()
    for _ in range(2):
        state, _ = run.train_step(state, run.layout.put_batch(next(batches)), run.step_rng)
    checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"))
    checkpointer.save(2, state, batches.get_state(), run.record())
    checkpointer.wait()
    checkpointer.close()
    return str(workdir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Images of three sizes and modes, and a file that is no image."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (33, 70), np.uint8)).save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), np.uint8)).save(folder / "rgba.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _cli(script, *args, env=None):
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(env or os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
    )


def _onnx_installed() -> bool:
    from jaxseg.inference.onnx_export import onnx_available

    return onnx_available()


def test_predict_cli_writes_masks_overlays_and_probabilities(run_dir, images, tmp_path):
    out = tmp_path / "out"
    done = _cli(
        "predict.py", "--workdir", run_dir, "--input", str(images), "--output", str(out),
        "--tile", "32,32", "--save_probs",
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]  # one image could not be read
    assert "broken.png" in done.stderr and "3 image(s) predicted" in done.stdout
    trained = load_run(run_dir)
    predictor = Predictor(trained.model, trained.variables, trained.info, tile=(32, 32))
    from jaxseg.data.images import read_image

    for name, size in (("rgb", (40, 50)), ("grey", (33, 70)), ("rgba", (64, 64))):
        written = Image.open(out / f"{name}.png")
        assert written.mode == "P" and written.size == size[::-1]
        palette = np.asarray(written.getpalette()[: 3 * 5]).reshape(5, 3)
        np.testing.assert_array_equal(palette, trained.info.palette)
        mask = np.asarray(written)
        assert mask.max() < 5
        np.testing.assert_array_equal(mask, predictor.predict(read_image(images / f"{name}.png")))
        assert Image.open(out / f"{name}_overlay.png").size == size[::-1]
        probabilities = np.load(out / f"{name}_probs.npy")
        assert probabilities.dtype == np.float16 and probabilities.shape == (*size, 5)
        np.testing.assert_array_equal(probabilities.argmax(-1), mask)
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no partial files left

    again = _cli("predict.py", "--workdir", run_dir, "--input", str(images / "rgb.png"),
                 "--output", str(out))  # fmt: skip
    assert again.returncode == 0 and "1 skipped" in again.stdout


def test_small_images_benchmark_runs_predict_by_default_and_whole(run_dir):
    """benchmarks/predict_small_images.py end to end on tiny settings (its numbers are not
    checked: timing is the benchmark's job)."""
    command = [sys.executable, str(REPO / "benchmarks" / "predict_small_images.py")]
    command += ["--workdir", run_dir, "--count", "2", "--size", "20,28", "--rounds", "1"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"default / --tile=0: \d+\.\d\dx", done.stdout), done.stdout


def test_export_cli_and_the_exported_model_predict_the_same(run_dir, images, tmp_path):
    exported = tmp_path / "tiny.jaxexport"
    done = _cli("export.py", "--workdir", run_dir, "--output", str(exported), "--tile", "32,32")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "platforms ['cpu', 'cuda', 'tpu']" in done.stdout
    out = tmp_path / "out"
    done = _cli("predict.py", "--exported", str(exported), "--input", str(images / "grey.png"),
                "--output", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    trained = load_run(run_dir)
    predictor = Predictor(trained.model, trained.variables, trained.info, tile=(32, 32))
    from jaxseg.data.images import read_image

    expected = predictor.predict(read_image(images / "grey.png"))
    np.testing.assert_array_equal(np.asarray(Image.open(out / "grey.png")), expected)
    if not _onnx_installed():
        assert "ONNX file skipped" in done.stdout
        pytest.skip("ONNX: needs the jaxseg[onnx] extra (README: export)")
    # The ONNX file beside it, run by onnxruntime (fixed batch 1; predict.py's batches of 4).
    assert (tmp_path / "tiny.onnx").is_file()
    onnx_out = tmp_path / "onnx_out"
    done = _cli("predict.py", "--exported", str(tmp_path / "tiny.onnx"), "--input",
                str(images / "grey.png"), "--output", str(onnx_out), "--save_probs")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    probabilities = np.zeros((*expected.shape, 5), np.float32)
    predictor.predict(read_image(images / "grey.png"), probabilities)
    saved = np.load(onnx_out / "grey_probs.npy")
    np.testing.assert_allclose(saved, probabilities, atol=1e-3)  # saved as float16
    top2 = np.sort(probabilities, axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-4  # no near tie that 1e-6 could flip
    mask = np.asarray(Image.open(onnx_out / "grey.png"))
    np.testing.assert_array_equal(mask[clear], expected[clear])


def test_export_without_onnx_installed(run_dir, tmp_path):
    """A jax2onnx that cannot be imported: the StableHLO file alone with a note, or, with
    --onnx given, an error before any work."""
    hidden = tmp_path / "hidden"
    (hidden / "jax2onnx").mkdir(parents=True)
    (hidden / "jax2onnx" / "__init__.py").write_text("raise ImportError('hidden by the test')")
    path = os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = dict(os.environ, PYTHONPATH=path)
    exported = tmp_path / "tiny.jaxexport"
    args = ("--workdir", run_dir, "--output", str(exported), "--tile", "32,32")
    done = _cli("export.py", *args, "--onnx", env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "need jax2onnx" in done.stderr and 'pip install "jaxseg[onnx]"' in done.stderr
    assert not exported.exists()
    done = _cli("export.py", *args, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ONNX file skipped" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hidden", "tiny.jaxexport"]


@pytest.mark.parametrize(
    "name, options, tile",
    [
        ("unet", {"base_features": 4, "depth": 2}, (32, 32)),
        ("fcn8s", {"encoder": "resnet18"}, (64, 64)),
        ("hypercolumn", {"encoder": "resnet18", "projection_features": 8}, (64, 64)),
        ("unet_original", {"base_features": 4, "depth": 2}, (76, 76)),
        ("segformer", {}, (64, 64)),
    ],
)
def test_exported_model_equals_in_process_prediction(name, options, tile, tmp_path):
    info = SegmentationInfo(("a", "b", "c"))
    model = get_model(name, num_classes=3, **options)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, *tile, 3)))
    path = str(tmp_path / "model.jaxexport")
    export_model(path, model, variables, info, tile, platforms=("cpu", "cuda"))
    loaded = load_exported(path)
    image = np.random.default_rng(1).integers(0, 255, (90, 100, 3), np.uint8)
    expected = np.zeros((90, 100, 3), np.float32)
    got = np.zeros((90, 100, 3), np.float32)
    Predictor(model, variables, info, tile=tile).predict(image, expected)
    loaded.predictor().predict(image, got)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # the variables are arguments of the function, not constants baked into it
    assert len(loaded.exported.in_avals) == len(jax.tree.leaves(variables)) + 1
    largest = max(x.size for x in jax.tree.leaves(variables))
    literals = re.findall(r'dense<"0x([0-9A-Fa-f]+)"', loaded.exported.mlir_module())
    assert max((len(h) // 8 for h in literals), default=0) < largest  # no weight is a literal


def test_bad_exports_and_inputs_are_named(run_dir, images, tmp_path):
    trained = load_run(run_dir)
    path = tmp_path / "model.jaxexport"
    export_model(str(path), trained.model, trained.variables, trained.info, (32, 32), ("cpu",))
    truncated = tmp_path / "truncated.jaxexport"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ExportError, match="truncated.jaxexport: not a readable jaxseg export"):
        load_exported(str(truncated))
    newer = tmp_path / "newer.jaxexport"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(newer, "w") as target:
        for item in source.namelist():
            data = source.read(item)
            if item == "jaxseg_export.json":
                data = json.dumps({**json.loads(data), "version": 99}).encode()
            target.writestr(item, data)
    with pytest.raises(ExportError, match="export version 99; this jaxseg reads version 1"):
        load_exported(str(newer))
    with pytest.raises(ExportError, match="platforms"):
        export_model(str(path), trained.model, trained.variables, trained.info, (32, 32), ("gpu",))

    predictor = Predictor(trained.model, trained.variables, trained.info, tile=(32, 32))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="a directory with no images"):
        predict_files(predictor, [str(empty)], str(tmp_path / "o"), show_progress=False)
    with pytest.raises(DataError, match="no file matches it as a pattern"):
        predict_files(predictor, [str(tmp_path / "*.tif")], str(tmp_path / "o"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="exists and is not a directory"):
        predict_files(predictor, [str(images / "rgb.png")], str(a_file))
    with pytest.raises(ModelInputError, match=r"nearest valid tile sides: \[28, 32\]"):
        Predictor(trained.model, trained.variables, trained.info, tile=(30, 32))
