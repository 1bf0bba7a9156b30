"""Nothing a user gives to predict.py or export.py is lost or misread: inputs are never
replaced, colliding names are all predicted, bad flags and destinations are refused before
any work with exit status 2, and failed writes leave no temporary files."""

import errno
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO
from PIL import Image

from jaxseg import atomic
from jaxseg.data import images
from jaxseg.data.images import read_image
from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import ConfigError, DataError
from jaxseg.inference import Predictor, files
from jaxseg.inference.export import ExportError, export_model, manifest_of
from jaxseg.inference.files import predict_files
from jaxseg.inference.png import write_png
from jaxseg.models import get_model
from jaxseg.report import tensorboard
from jaxseg.report.writer import RunWriter
from jaxseg.run import checkpoint

TILE = (32, 32)
INFO = SegmentationInfo(("a", "b", "c"), palette=((0, 0, 0), (255, 0, 0), (0, 0, 255)))


@pytest.fixture(scope="module")
def model_and_variables():
    model = get_model("unet", num_classes=3, base_features=4, depth=2)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, *TILE, 3)))
    return model, variables


@pytest.fixture(scope="module")
def predictor(model_and_variables):
    return Predictor(*model_and_variables, INFO, tile=TILE)


def _image(path, seed, size=(20, 24)):
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), np.uint8)
    Image.fromarray(pixels).save(path, quality=95)
    return path.read_bytes()


def _predict(predictor, inputs, output, **options):
    inputs = [str(p) for p in inputs]
    return predict_files(predictor, inputs, str(output), show_progress=False, **options)


def _listing(directory):
    return sorted(os.listdir(directory))


def test_an_output_never_replaces_an_input(predictor, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    good = _image(photos / "good.png", 0)
    _image(photos / "other.jpg", 1)
    # The reported case: the input directory as --output (it used to overwrite good.png).
    for overwrite in (False, True):
        with pytest.raises(DataError, match="is also the input directory"):
            _predict(predictor, [photos], photos, overwrite=overwrite)
        # A file given by name: its mask would be photos/good.png, the input itself.
        with pytest.raises(DataError, match=r"the output .*good.png would replace the input"):
            _predict(predictor, [photos / "good.png"], photos, overwrite=overwrite)
    # The same directory reached through a symbolic link, and a hard link to the input.
    (tmp_path / "link").symlink_to(photos)
    with pytest.raises(DataError, match="would replace the input"):
        _predict(predictor, [photos / "good.png"], tmp_path / "link", overwrite=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.link(photos / "good.png", elsewhere / "good.png")
    with pytest.raises(DataError, match="would replace the input"):
        _predict(predictor, [photos / "good.png"], elsewhere, overwrite=True)
    assert (photos / "good.png").read_bytes() == good
    assert _listing(photos) == ["good.png", "other.jpg"]  # refused before any work
    assert _listing(elsewhere) == ["good.png"]
    # A pattern that leaves the outputs out may predict beside the inputs.
    summary = _predict(predictor, [photos / "*.jpg"], photos)
    assert summary.predicted == [str(photos / "other.jpg")]
    assert _listing(photos) == ["good.png", "other.jpg", "other.png", "other_overlay.png"]
    assert (photos / "good.png").read_bytes() == good


def test_existing_outputs_are_kept_unless_overwrite(predictor, tmp_path):
    _image(tmp_path / "a.jpg", 0)
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"the user's own file")
    summary = _predict(predictor, [tmp_path / "a.jpg"], out)
    assert summary.predicted == [str(tmp_path / "a.jpg")]  # the missing overlay was written
    assert (out / "a.png").read_bytes() == b"the user's own file"
    assert _listing(out) == ["a.png", "a_overlay.png"]
    assert _predict(predictor, [tmp_path / "a.jpg"], out).skipped == [str(tmp_path / "a.jpg")]
    _predict(predictor, [tmp_path / "a.jpg"], out, overwrite=True)
    assert Image.open(out / "a.png").mode == "P"


def test_inputs_of_the_same_stem_are_all_predicted_under_their_full_names(predictor, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for seed, name in enumerate(["a.png", "a.jpg", "b.jpg", "b_overlay.jpg", "c.png"]):
        _image(images / name, seed)
    out = tmp_path / "out"
    summary = _predict(predictor, [images], out, save_probabilities=True)
    assert len(summary.predicted) == 5 and not summary.failed
    names = {"a.png": "a.png", "a.jpg": "a.jpg", "b.jpg": "b.jpg"}
    names |= {"b_overlay.jpg": "b_overlay.jpg", "c.png": "c"}  # c collides with nothing
    expected = sorted(
        f"{name}{suffix}" for name in names.values() for suffix in (".png", "_overlay.png")
    )
    expected += [f"{name}_probs.npy" for name in names.values()]
    assert _listing(out) == sorted(expected)
    for source, name in names.items():
        mask = np.asarray(Image.open(out / f"{name}.png"))
        np.testing.assert_array_equal(mask, predictor.predict(read_image(images / source)))
    # The same file name in two directories cannot be told apart by name: refused.
    (tmp_path / "more").mkdir()
    _image(tmp_path / "more" / "a.png", 9)
    with pytest.raises(DataError, match="outputs would have the same name"):
        _predict(predictor, [images / "a.png", tmp_path / "more" / "a.png"], tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def _cli(script, *args):
    return subprocess.run(
        [sys.executable, str(REPO / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
    )


def test_bad_prediction_flags_are_refused_before_loading(predictor, tmp_path):
    _image(tmp_path / "a.png", 0)
    out = tmp_path / "out"
    for flag, value, message in (
        ("--overlap", "1.5", "--overlap=1.5: the fraction of a tile its neighbours share"),
        ("--batch_size", "0", "--batch_size=0: tiles per network call, an integer >= 1"),
        ("--scales", "0", "--scales=0.0: positive finite factors"),
    ):
        args = ("--input", str(tmp_path / "a.png"), "--output", str(out), flag, value)
        # The workdir does not exist: the flag is refused before anything is loaded.
        done = _cli("predict.py", "--workdir", str(tmp_path / "no_run"), *args)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "jaxseg config error:" in done.stderr and message in done.stderr
        assert "Traceback" not in done.stderr
    # The reported case: the input directory as --output, refused before loading too.
    done = _cli("predict.py", "--workdir", str(tmp_path / "no_run"), "--input", str(tmp_path),
                "--output", str(tmp_path))  # fmt: skip
    assert done.returncode == 2 and "is also the input directory" in done.stderr
    assert not out.exists() and _listing(tmp_path) == ["a.png"]
    model, variables = predictor.model, predictor._variables
    with pytest.raises(ConfigError, match="batch_size=0"):
        Predictor(model, variables, predictor.info, tile=TILE, batch_size=0)
    with pytest.raises(ConfigError, match="scales=1,nan"):
        Predictor(model, variables, predictor.info, tile=TILE, scales=(1, float("nan")))


def test_export_destinations_are_checked_first_and_failures_leave_nothing(
    model_and_variables, tmp_path, monkeypatch
):
    done = _cli("export.py", "--workdir", str(tmp_path / "no_run"), "--output", str(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"--output {tmp_path} is a directory" in done.stderr
    missing = tmp_path / "missing" / "m.jaxexport"
    done = _cli("export.py", "--workdir", str(tmp_path / "no_run"), "--output", str(missing))
    assert done.returncode == 2 and "does not exist" in done.stderr, done.stderr[-2000:]

    info = INFO
    path = tmp_path / "model.jaxexport"
    notes = tmp_path / "notes.txt"
    notes.write_text("not an export")
    with pytest.raises(ExportError, match="exists and is not a jaxseg export"):
        export_model(str(notes), *model_and_variables, info, TILE, ("cpu",))
    assert notes.read_text() == "not an export"
    export_model(str(path), *model_and_variables, info, TILE, ("cpu",))
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    import zipfile

    with monkeypatch.context() as patch:
        patch.setattr(zipfile.ZipFile, "writestr", disk_full)
        with pytest.raises(ExportError, match="No space left on device"):
            export_model(str(path), *model_and_variables, info, TILE, ("cpu",))
    assert path.read_bytes() == before and manifest_of(str(path))["tile"] == list(TILE)
    assert _listing(tmp_path) == ["model.jaxexport", "notes.txt"]

    def unwritable(file, mode="r", *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", file)

    monkeypatch.setattr("jaxseg.inference.export.open", unwritable, raising=False)
    with pytest.raises(ExportError, match="cannot be written: Permission denied"):
        export_model(str(tmp_path / "new.jaxexport"), *model_and_variables, info, TILE, ("cpu",))
    assert _listing(tmp_path) == ["model.jaxexport", "notes.txt"]


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_full_disk_leaves_no_temporary_file_and_stale_ones_are_swept(
    predictor, tmp_path, monkeypatch
):
    workdir = tmp_path / "run"
    writer = RunWriter(str(workdir))
    writer.picture("eval/grid.png", b"first")
    real_open = open

    class FullDisk:
        """Files opened for writing whose writes fail as on a full disk (once created)."""

        def __new__(cls, path, mode="r", *args, **kwargs):
            if "w" not in mode:
                return real_open(path, mode, *args, **kwargs)
            return super().__new__(cls)

        def __init__(self, path, mode="r"):
            self.file = real_open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(atomic, "open", FullDisk, raising=False)
        with pytest.raises(OSError, match="No space left"):
            writer.picture("eval/grid.png", b"second")
    assert (workdir / "eval" / "grid.png").read_bytes() == b"first"
    assert _listing(workdir / "eval") == ["grid.png"]
    # The other whole-file writers of a run: TensorBoard events rewritten on resume, and the
    # record of a checkpoint's files.
    events = workdir / "tensorboard" / "events.out.tfevents.1"
    events.parent.mkdir()
    step = workdir / "checkpoints" / "2"
    step.mkdir(parents=True)
    (step / "state").write_bytes(b"x")
    for module, write in (
        (tensorboard, lambda: tensorboard.write_records(str(events), [b"record"])),
        (checkpoint, lambda: checkpoint._write_integrity(str(step))),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(module, "open", FullDisk, raising=False)
            with pytest.raises(OSError, match="No space left"):
                write()
    assert _listing(events.parent) == [] and _listing(step) == ["state"]

    # What killed processes left (this and earlier versions' names) goes when a writer opens
    # the run; a running process's file, other files and the checkpoints stay.
    dead, alive = _dead_pid(), os.getpid()
    stale = [f"eval/.grid.png.tmp{dead}", f"metrics.jsonl.tmp{dead}"]
    kept = [f"eval/.grid.png.tmp{alive}", "eval/notes.tmp", f"checkpoints/x.tmp{dead}"]
    for name in stale + kept:
        (workdir / name).write_bytes(b"x")
    RunWriter(str(workdir), enabled=False)
    assert all((workdir / name).exists() for name in stale)  # only the writing process sweeps
    RunWriter(str(workdir))
    assert not any((workdir / name).exists() for name in stale)
    assert all((workdir / name).exists() for name in kept)

    # predict.py's outputs alike: a failed write names the file and leaves nothing.
    _image(tmp_path / "a.png", 0)
    out = tmp_path / "out"

    def write_until_full(file, *args, **kwargs):
        file.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(files, "write_png", write_until_full)
        with pytest.raises(DataError, match=r"out/a\.png: cannot be written \(No space left on"):
            _predict(predictor, [tmp_path / "a.png"], out, save_probabilities=True)
    assert _listing(out) == ["a_probs.npy"]  # complete: written before the mask failed
    (out / f".a.png.tmp{dead}").write_bytes(b"x")
    _predict(predictor, [tmp_path / "a.png"], out)  # writes what is missing, sweeps the rest
    assert _listing(out) == ["a.png", "a_overlay.png", "a_probs.npy"]


def test_a_large_image_shows_its_progress_in_tiles(predictor, capsys):
    image = np.random.default_rng(0).integers(0, 255, (90, 100, 3), np.uint8)
    predictor.predict(image, progress=True)
    shown = re.findall(r"tiles: +\d+%.*?(\d+)/(\d+) \[", capsys.readouterr().err)
    assert shown and {total for _, total in shown} == {"16"}  # 4 x 4 tiles of 32 at step 24
    assert [int(done) for done, _ in shown] == sorted(int(done) for done, _ in shown)
    predictor.predict(image)
    assert "tiles" not in capsys.readouterr().err


def test_outputs_are_encoded_and_images_decoded_band_by_band(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (37, 29, 3), np.uint8)
    classes = rng.integers(0, 5, (37, 29), np.uint8)
    many_classes = rng.integers(0, 300, (37, 29)).astype(np.int32)
    palette = rng.integers(0, 255, (5, 3), np.uint8)
    for name, bands, expected, colours in (
        ("rgb.png", np.array_split(rgb, 4), rgb, None),
        ("p.png", np.array_split(classes, 3), classes, palette),
        ("i16.png", [many_classes.astype(np.uint16)], many_classes, None),
    ):
        with open(tmp_path / name, "wb") as f:
            write_png(f, bands, 37, 29, colours)
        with Image.open(tmp_path / name) as written:
            np.testing.assert_array_equal(np.asarray(written), expected)
            if colours is not None:
                assert written.mode == "P" and written.getpalette() == palette.ravel().tolist()
    with open(tmp_path / "short.png", "wb") as f:
        with pytest.raises(ValueError, match="36 rows given for a height of 37"):
            write_png(f, [rgb[:36]], 37, 29)

    info = SegmentationInfo(("a", "b", "c", "d", "e"), palette=tuple(map(tuple, palette)))
    monkeypatch.setattr(files, "_bands", lambda height, width: range(0, height, 8))
    files.save_overlay(str(tmp_path / "overlay.png"), rgb, classes, info)
    expected = np.round(0.5 * rgb.astype(np.float64) + 0.5 * palette[classes]).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "overlay.png")), expected)

    monkeypatch.setattr(images, "_PIXELS_PER_BAND", 29 * 5)  # bands of 5 rows
    for mode in ("RGB", "L", "RGBA", "P"):
        source = Image.fromarray(rgb).convert(mode)
        source.save(tmp_path / f"{mode}.png")
        read = read_image(tmp_path / f"{mode}.png")
        np.testing.assert_array_equal(read, np.asarray(source.convert("RGB")))
