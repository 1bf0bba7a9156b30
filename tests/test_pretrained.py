"""torchvision weights -> jaxseg encoders: parity with real torchvision, bad files, round trips."""

import hashlib
import json
import sys
from collections.abc import Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO
from torchvision_random import random_torchvision_state_dict, weights_fingerprint

from jaxseg.data.info import SegmentationInfo
from jaxseg.models.encoders import get_encoder
from jaxseg.models.pretrained import (
    WeightsError,
    encoder_variables,
    file_sha256,
    load_encoder_weights,
    read_state_dict,
    save_safetensors,
    torchvision_shapes,
    torchvision_state_dict,
)

FIXTURES = REPO / "tests" / "fixtures" / "torchvision"
GOLDENS = json.loads((FIXTURES / "goldens.json").read_text())
TOLERANCE = 1e-4  # of the largest |torchvision activation| of each map


@pytest.fixture(scope="module")
def random_weights():
    """torchvision architecture -> the seeded random state dict the goldens were made with."""
    cache = {}

    def get(architecture: str) -> dict[str, np.ndarray]:
        if architecture not in cache:
            shapes = GOLDENS["state_dicts"][architecture]
            cache[architecture] = random_torchvision_state_dict(shapes, GOLDENS["seed"])
        return cache[architecture]

    yield get
    cache.clear()  # VGG16's 138M parameters should not outlive this module


def _flat(tree, prefix=()):
    if isinstance(tree, Mapping):  # dicts and FrozenDicts
        return {k: v for key in tree for k, v in _flat(tree[key], (*prefix, key)).items()}
    return {"/".join(prefix): np.asarray(tree)}


def _assert_trees_equal(got, expected):
    got, expected = _flat(got), _flat(expected)
    assert sorted(got) == sorted(expected)
    for path in expected:
        # np.array_equal: assert_array_equal takes seconds on VGG16's 100M-entry fc6.
        assert got[path].dtype == np.float32, path
        assert np.array_equal(got[path], expected[path]), path


@pytest.mark.parametrize("case", sorted(GOLDENS["cases"]))
def test_features_match_torchvision(case, random_weights):
    spec = GOLDENS["cases"][case]
    state_dict = random_weights(spec["torchvision"])
    np.testing.assert_allclose(
        weights_fingerprint(state_dict),
        GOLDENS["fingerprints"][spec["torchvision"]],
        rtol=1e-9,
        err_msg="the random weights differ from the goldens' (numpy's generator changed?):"
        " rerun tools/torchvision_goldens.py",
    )
    variables = encoder_variables(
        spec["encoder"], state_dict, spec["encoder_options"], source=f"random {case}"
    )
    golden = np.load(FIXTURES / f"{case}.npz")
    # jaxseg's own normalisation, so that the goldens also pin what the weights expect.
    images = SegmentationInfo(class_names=("any",)).normalize(golden["image"])
    encoder = get_encoder(spec["encoder"], **spec["encoder_options"])
    # float32 convolutions: GPUs would otherwise use TF32 (~1e-3).
    with jax.default_matmul_precision("highest"):
        features = encoder.apply(variables, images, train=False)
    for name in spec["features"]:
        expected = golden[name]
        got = np.asarray(features[name])[..., golden[f"{name}.channels"]]
        assert got.shape == expected.shape, f"{case} {name}"
        error = np.abs(got - expected).max() / np.abs(expected).max()
        assert error <= TOLERANCE, (
            f"{case} {name}: max |jaxseg - torchvision| = {error:.2e} x max |torchvision|"
        )


@pytest.mark.parametrize("architecture", ["vgg16", "resnet18", "resnet34", "resnet50"])
def test_names_and_shapes_are_torchvisions(architecture):
    real = {name: tuple(shape) for name, shape in GOLDENS["state_dicts"][architecture].items()}
    classifier = {n for n in real if n.startswith(("fc.", "classifier.6."))}
    assert torchvision_shapes(architecture) == {n: real[n] for n in real if n not in classifier}


def _save_npz(path, state_dict):
    np.savez(path, **state_dict)
    return path


def test_npz_and_safetensors_load_the_same(tmp_path, random_weights):
    state_dict = random_weights("resnet18")
    npz = _save_npz(tmp_path / "resnet18.npz", state_dict)
    safetensors_file = tmp_path / "resnet18.safetensors"
    save_safetensors(safetensors_file, state_dict)
    from_npz = load_encoder_weights(npz, "resnet18")
    from_safetensors = load_encoder_weights(safetensors_file, "resnet18")
    _assert_trees_equal(from_npz.variables, from_safetensors.variables)
    assert from_npz.sha256 == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert from_safetensors.sha256 == file_sha256(safetensors_file)
    assert from_safetensors.path == str(safetensors_file)


def test_round_trip_from_jaxseg_variables(tmp_path):
    """A jaxseg-side tree (FrozenDict of jax arrays) -> torchvision file -> the same variables."""
    encoder = get_encoder("resnet18")
    shapes = jax.eval_shape(
        lambda x: encoder.init(jax.random.key(0), x, train=False),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
    )
    rng = np.random.default_rng(0)
    variables = flax.core.freeze(
        jax.tree.map(lambda leaf: jnp.asarray(rng.standard_normal(leaf.shape, np.float32)), shapes)
    )
    state_dict = torchvision_state_dict("resnet18", variables)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in state_dict.values())
    path = tmp_path / "encoder.safetensors"
    save_safetensors(path, state_dict)
    _assert_trees_equal(load_encoder_weights(path, "resnet18").variables, variables)


@pytest.mark.parametrize(
    "encoder_name, options",
    [("vgg16", {}), ("vgg16", {"include_fc": False}), ("resnet50", {"output_stride": 8})],
)
def test_round_trip_from_torchvision(encoder_name, options, random_weights):
    state_dict = random_weights(encoder_name)
    variables = encoder_variables(encoder_name, state_dict, options)
    back = torchvision_state_dict(encoder_name, variables, options)
    kept = torchvision_shapes(encoder_name, options)
    assert sorted(back) == sorted(kept)
    for name in kept:
        assert np.array_equal(back[name], state_dict[name]), name
    _assert_trees_equal(encoder_variables(encoder_name, back, options), variables)


def test_vgg16_fc6_respects_torch_flatten_order(random_weights):
    state_dict = random_weights("vgg16")
    fc6 = encoder_variables("vgg16", state_dict)["params"]["fc6"]["kernel"]
    assert fc6.shape == (7, 7, 512, 4096)
    # torch's flatten of (C, H, W): input (c=5, h=2, w=3) is column 5*49 + 2*7 + 3.
    np.testing.assert_array_equal(fc6[2, 3, 5, :], state_dict["classifier.0.weight"][:, 262])


def test_vgg16_without_fc_ignores_the_classifier(random_weights):
    convs = {k: v for k, v in random_weights("vgg16").items() if k.startswith("features.")}
    variables = encoder_variables("vgg16", convs, {"include_fc": False})
    assert "fc6" not in variables["params"] and variables["batch_stats"] == {}
    with pytest.raises(WeightsError, match=r"4 missing: classifier\.0\.bias, classifier\.0\.w"):
        encoder_variables("vgg16", convs, {"include_fc": True}, source="convs only")


def test_not_a_weights_file(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not weights")
    with pytest.raises(WeightsError, match=f"{notes}: not a weights file"):
        read_state_dict(notes)
    disguised = tmp_path / "weights.safetensors"
    disguised.write_text("not weights either")
    with pytest.raises(WeightsError, match=f"{disguised}: cannot read it as .safetensors"):
        load_encoder_weights(disguised, "resnet18")
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        read_state_dict(tmp_path / "absent.npz")


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_truncated_file(tmp_path, suffix):
    whole = tmp_path / f"whole{suffix}"
    tensors = {"conv1.weight": np.ones((64, 3, 7, 7), np.float32)}
    save_safetensors(whole, tensors) if suffix == ".safetensors" else _save_npz(whole, tensors)
    truncated = tmp_path / f"truncated{suffix}"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(WeightsError, match=f"{truncated}: cannot read it as {suffix}"):
        load_encoder_weights(truncated, "resnet18")


def test_pth_without_torch_says_how_to_convert(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    path = tmp_path / "resnet18.pth"
    path.write_bytes(b"\0")
    with pytest.raises(
        WeightsError, match=rf"{path}: .*needs torch.*safetensors\.torch\.save_file"
    ):
        read_state_dict(path)


def test_pth_with_torch(tmp_path, random_weights):
    torch = pytest.importorskip("torch")
    state_dict = random_weights("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save({name: torch.from_numpy(value) for name, value in state_dict.items()}, path)
    _assert_trees_equal(
        load_encoder_weights(path, "resnet18").variables,
        encoder_variables("resnet18", state_dict),
    )
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=f"{path}: cannot read it with torch.load"):
        read_state_dict(path)


def _error(tmp_path, state_dict, encoder_name="resnet18") -> str:
    path = _save_npz(tmp_path / "bad.npz", state_dict)
    with pytest.raises(WeightsError) as raised:
        load_encoder_weights(path, encoder_name)
    message = str(raised.value)
    assert message.startswith(f"{path}: the tensors do not fit encoder {encoder_name!r}")
    return message


def test_missing_tensor(tmp_path, random_weights):
    state_dict = dict(random_weights("resnet18"))
    del state_dict["layer2.1.bn2.running_var"]
    assert "1 missing: layer2.1.bn2.running_var" in _error(tmp_path, state_dict)


def test_unexpected_tensor(tmp_path, random_weights):
    state_dict = random_weights("resnet18") | {"layer5.0.conv1.weight": np.ones(3, np.float32)}
    message = _error(tmp_path, state_dict)
    assert "1 unexpected: layer5.0.conv1.weight" in message and "missing" not in message


def test_wrong_shape(tmp_path, random_weights):
    state_dict = random_weights("resnet18") | {
        "layer1.0.conv1.weight": np.ones((64, 64, 1, 1), np.float32)
    }
    message = _error(tmp_path, state_dict)
    assert "1 with the wrong shape: layer1.0.conv1.weight (64, 64, 1, 1)" in message
    assert "(expected (64, 64, 3, 3))" in message


def test_integer_tensor(tmp_path, random_weights):
    state_dict = random_weights("resnet18") | {"bn1.bias": np.ones(64, np.int64)}
    assert "1 not floating point: bn1.bias int64" in _error(tmp_path, state_dict)


def test_resnet50_file_into_resnet34(tmp_path):
    resnet50 = {
        name: np.zeros(shape, np.float32)
        for name, shape in GOLDENS["state_dicts"]["resnet50"].items()
    }
    message = _error(tmp_path, resnet50, "resnet34")
    # Bottlenecks add conv3 + bn3 (5 tensors) to all 16 blocks, and a downsample (5) to layer1.0.
    assert "85 unexpected: layer1.0.bn3.bias" in message
    assert "with the wrong shape: layer1.0.conv1.weight (64, 64, 1, 1)" in message
    assert "more)" in message and "missing" not in message


def test_bad_variables_and_unsupported_encoder():
    assert issubclass(WeightsError, ValueError)
    with pytest.raises(WeightsError, match=r"100 problems: params/layer1_0/conv1_bn/bias missing"):
        torchvision_state_dict("resnet18", {"params": {}, "batch_stats": {}})
    with pytest.raises(WeightsError, match=r"'unet'; supported: \['vgg16', 'resnet18'"):
        torchvision_shapes("unet")
