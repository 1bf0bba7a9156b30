"""DeepLabV3 and DeepLabV3+: parameter counts, logits equal to torchvision's and smp's on the
same weights, reference weight files, options, remat and dtype."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO
from torchvision_random import random_torchvision_state_dict, weights_fingerprint

from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import ConfigError
from jaxseg.inference import Predictor
from jaxseg.inference.export import export_model, load_exported
from jaxseg.models import get_model
from jaxseg.models.deeplab import DeepLabV3Plus
from jaxseg.models.pretrained import (
    WeightsError,
    load_encoder_weights,
    load_model_weights,
    model_reference_shapes,
    model_reference_state_dict,
    model_variables,
    save_safetensors,
)

FIXTURES = REPO / "tests" / "fixtures" / "deeplab"
GOLDENS = json.loads((FIXTURES / "goldens.json").read_text())
TOLERANCE = 1e-4  # of the largest |reference logit|
LAYOUTS = {"torchvision": "torchvision_deeplabv3", "smp": "smp_deeplabv3plus"}


def _model(case, **changes):
    spec = GOLDENS["cases"][case]
    return get_model(spec["model"], num_classes=GOLDENS["num_classes"], **spec["options"] | changes)


def _weights(case):
    state_dict = random_torchvision_state_dict(GOLDENS["state_dicts"][case], GOLDENS["seed"])
    np.testing.assert_allclose(
        weights_fingerprint(state_dict),
        GOLDENS["fingerprints"][case],
        rtol=1e-9,
        err_msg="the random weights differ from the goldens' (numpy's generator changed?):"
        " rerun tools/deeplab_goldens.py",
    )
    return state_dict


def _parameter_count(model, side=64):
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, side, side, 3)), train=False)
    )
    return sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))


def _relative_error(model, variables, case):
    """max |jaxseg - reference| / max |reference| on the golden's pixels."""
    golden = np.load(FIXTURES / f"{case}.npz")
    images = SegmentationInfo(class_names=("any",)).normalize(golden["image"])
    # float32 convolutions: GPUs would otherwise use TF32 (~1e-3).
    with jax.default_matmul_precision("highest"):
        logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    step = GOLDENS["subsample"]
    got, expected = np.asarray(logits)[:, ::step, ::step], golden["logits"]
    assert got.shape == expected.shape
    return np.abs(got - expected).max() / np.abs(expected).max()


# Measured with torch 2.14.1, torchvision 0.29.1, segmentation-models-pytorch 0.6.0:
# torchvision deeplabv3_resnet50(num_classes=21, aux_loss=False) and
# smp.DeepLabV3Plus(encoder_name=..., classes=21), sum of p.numel() over parameters().
@pytest.mark.parametrize(
    "name, options, count",
    [
        ("deeplabv3", {"encoder": "resnet50"}, 39_638_869),
        ("deeplabv3", {"encoder": "resnet50", "output_stride": 16}, 39_638_869),
        ("deeplabv3plus", {"encoder": "resnet18"}, 12_334_437),
        ("deeplabv3plus", {"encoder": "resnet34"}, 22_442_597),
        ("deeplabv3plus", {"encoder": "resnet50"}, 26_682_725),
        ("deeplabv3plus", {"encoder": "resnet18", "output_stride": 8}, 12_334_437),
    ],
)
def test_parameter_counts_are_the_references(name, options, count):
    assert _parameter_count(get_model(name, num_classes=21, **options)) == count


@pytest.mark.parametrize("case", sorted(GOLDENS["cases"]))
def test_names_shapes_and_counts_are_the_references(case):
    layout = LAYOUTS[GOLDENS["cases"][case]["weights"]]
    real = {name: tuple(shape) for name, shape in GOLDENS["state_dicts"][case].items()}
    assert model_reference_shapes(_model(case), layout) == real
    assert _parameter_count(_model(case)) == GOLDENS["parameters"][case]


@pytest.mark.parametrize("case", sorted(GOLDENS["cases"]))
def test_logits_match_the_reference(case):
    spec = GOLDENS["cases"][case]
    model = _model(case)
    variables = model_variables(model, _weights(case), LAYOUTS[spec["weights"]], source=case)
    error = _relative_error(model, variables, case)
    assert error <= TOLERANCE, f"{case}: max |jaxseg - reference| = {error:.2e} x max |reference|"


def test_parity_fails_with_a_perturbed_weight_or_torchvision_dilation():
    """The parity test can fail: one changed tensor, or ResNet dilated as torchvision does
    (the first block of layer4 undilated) instead of as smp does, moves the logits."""
    case = "deeplabv3plus_resnet18"
    model, state_dict = _model(case), _weights(case)
    for name in ("decoder.block1.0.weight", "encoder.layer4.1.conv2.weight"):
        perturbed = dict(state_dict)
        perturbed[name] = state_dict[name] * np.float32(1.1)
        variables = model_variables(model, perturbed, "smp_deeplabv3plus")
        assert _relative_error(model, variables, case) > 10 * TOLERANCE, name

    class TorchvisionDilation(DeepLabV3Plus):
        def model_encoder_options(self):
            return {"output_stride": self.output_stride}  # no dilate_first_block

    spec = GOLDENS["cases"][case]
    torchvision_dilation = TorchvisionDilation(num_classes=5, **spec["options"])
    assert not torchvision_dilation.build_encoder(detached=True).dilate_first_block
    assert model.build_encoder(detached=True).dilate_first_block
    variables = model_variables(model, state_dict, "smp_deeplabv3plus")
    assert _relative_error(torchvision_dilation, variables, case) > 10 * TOLERANCE


def test_weight_files_and_their_report(tmp_path):
    case = "deeplabv3plus_resnet18"
    model, state_dict = _model(case), _weights(case)
    path = tmp_path / "smp.safetensors"
    save_safetensors(path, state_dict)
    loaded = load_model_weights(path, model, "smp_deeplabv3plus")
    back = model_reference_state_dict(model, loaded.variables, "smp_deeplabv3plus")
    assert sorted(back) == sorted(state_dict)
    assert all(np.array_equal(back[name], state_dict[name]) for name in state_dict)
    assert loaded.path == str(path) and len(loaded.sha256) == 64

    bad = dict(state_dict)
    del bad["decoder.block2.0.1.weight"]
    bad["decoder.block3.0.weight"] = np.ones(3, np.float32)
    bad["segmentation_head.0.weight"] = np.ones((21, 256, 1, 1), np.float32)
    bad["encoder.fc.weight"] = np.ones((1000, 512), np.float32)
    bad["encoder.bn1.num_batches_tracked"] = np.zeros((), np.int64)  # ignored
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(WeightsError) as raised:
        load_model_weights(tmp_path / "bad.npz", model, "smp_deeplabv3plus")
    message = str(raised.value)
    assert message.startswith(
        f"{tmp_path / 'bad.npz'}: the tensors do not fit model DeepLabV3Plus"
        " (smp_deeplabv3plus names)"
    )
    assert "1 missing: decoder.block2.0.1.weight" in message
    assert "2 unexpected: decoder.block3.0.weight, encoder.fc.weight" in message
    assert (
        "1 with the wrong shape: segmentation_head.0.weight (21, 256, 1, 1)"
        " (expected (5, 256, 1, 1))" in message
    )
    # A torchvision DeepLabV3 file is not an smp DeepLabV3+ one; its aux head is ignored.
    torchvision = _weights("deeplabv3_resnet50_os8")
    torchvision["aux_classifier.4.bias"] = np.ones(5, np.float32)
    model_variables(_model("deeplabv3_resnet50_os8"), torchvision, "torchvision_deeplabv3")
    with pytest.raises(WeightsError, match=r"missing: decoder\.aspp\.0\.convs\.0\.0\.weight"):
        model_variables(_model("deeplabv3plus_resnet50"), torchvision, "smp_deeplabv3plus")
    with pytest.raises(WeightsError, match=r"unknown weights layout 'smp'"):
        model_variables(model, state_dict, "smp")


def test_pth_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    case = "deeplabv3_resnet50_os16"
    model, state_dict = _model(case), _weights(case)
    path = tmp_path / "deeplabv3.pth"
    torch.save({name: torch.from_numpy(value) for name, value in state_dict.items()}, path)
    loaded = load_model_weights(path, model, "torchvision_deeplabv3")
    back = model_reference_state_dict(model, loaded.variables, "torchvision_deeplabv3")
    assert all(np.array_equal(back[name], state_dict[name]) for name in state_dict)


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("deeplabv3", {"output_stride": 32}, r"output_stride=32 is not one of \(8, 16\)"),
        ("deeplabv3", {"encoder": "vgg16"}, r"encoder 'vgg16' has no output_stride option"),
        ("deeplabv3plus", {"atrous_rates": (6, 12)}, r"atrous_rates=\(6, 12\) must be three"),
        ("deeplabv3plus", {"aspp_dropout": 1.0}, r"aspp_dropout=1.0 in \[0, 1\)"),
    ],
)
def test_bad_options(name, options, message):
    with pytest.raises(ConfigError, match=message):
        get_model(name, num_classes=3, **options)


def test_rates_and_input_contract():
    assert get_model("deeplabv3", num_classes=3).rates() == (12, 24, 36)
    os16 = get_model("deeplabv3", num_classes=3, output_stride=16)
    assert os16.rates() == (6, 12, 18)
    assert os16.input_multiple() == 16 and os16.tile_period() == 16
    plus = get_model("deeplabv3plus", num_classes=3, output_stride=8, encoder="resnet18")
    assert plus.rates() == (12, 24, 36) and plus.input_multiple() == 8
    assert not os16.position_dependent() and not plus.position_dependent()


@pytest.mark.parametrize("name", ["deeplabv3", "deeplabv3plus"])
def test_remat_dtype_and_dropout(name):
    """remat keeps the variables and the gradients; bfloat16 returns float32 scores;
    dropout uses the "dropout" rng in training only."""
    options = dict(num_classes=3, encoder="resnet18", output_stride=16, channels=16)
    model, remat = get_model(name, **options), get_model(name, **options, remat="blocks")
    images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    init = jax.jit(lambda model: model.init(jax.random.key(0), images), static_argnums=0)
    variables = init(model)
    remat_variables = init(remat)
    assert jax.tree.structure(remat_variables) == jax.tree.structure(variables)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(remat_variables), jax.tree.leaves(variables))
    )

    @jax.jit
    def train_logits(params, seed):
        logits, _ = model.apply(
            variables | {"params": params},
            images,
            train=True,
            rngs={"dropout": jax.random.key(seed)},
            mutable=["batch_stats"],
        )
        return logits

    @functools.partial(jax.jit, static_argnums=0)
    def gradients(model, params):
        def loss(params):
            logits, _ = model.apply(
                variables | {"params": params},
                images,
                train=True,
                rngs={"dropout": jax.random.key(2)},
                mutable=["batch_stats"],
            )
            return jnp.mean(logits**2)

        return jax.grad(loss)(params)

    # One is enough (each gradient takes a while to compile). Not bitwise: the recomputed
    # forward pass rounds differently, and train-mode batch norm over 4x4 maps amplifies it.
    if name == "deeplabv3plus":
        plain = jax.tree.leaves(gradients(model, variables["params"]))
        recomputed = jax.tree.leaves(gradients(remat, variables["params"]))
        scale = max(np.abs(a).max() for a in plain)
        assert max(np.abs(a - b).max() for a, b in zip(plain, recomputed)) <= 1e-4 * scale
    assert not np.allclose(
        train_logits(variables["params"], 3), train_logits(variables["params"], 4)
    )
    evaluated = jax.jit(model.apply)(variables, images)
    half = jax.jit(get_model(name, **options, dtype="bfloat16").apply)(variables, images)
    assert evaluated.shape == half.shape == (2, 64, 64, 3) and half.dtype == jnp.float32
    assert np.abs(np.asarray(half) - np.asarray(evaluated)).max() < 0.1 * (
        np.abs(np.asarray(evaluated)).max() + 1
    )


def test_export_and_tiles(tmp_path):
    """The exported model predicts what the in-process one does (tiled); tiles are allowed
    but pool their own image-level context, so they differ from the whole image."""
    info = SegmentationInfo(("a", "b", "c"))
    model = get_model("deeplabv3plus", num_classes=3, encoder="resnet18", channels=16)
    tile = (64, 64)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((1, *tile, 3)))
    path = str(tmp_path / "model.jaxexport")
    export_model(path, model, variables, info, tile, platforms=("cpu",))
    loaded = load_exported(path)
    assert loaded.tile_period() == 16 and not loaded.position_dependent()
    image = np.random.default_rng(1).integers(0, 255, (90, 100, 3), np.uint8)
    expected, got, whole = (np.zeros((90, 100, 3), np.float32) for _ in range(3))
    Predictor(model, variables, info, tile=tile).predict(image, expected)
    loaded.predictor().predict(image, got)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    Predictor(model, variables, info, tile=None).predict(image, whole)
    assert np.abs(whole - expected).max() > 1e-4


def test_torchvision_encoder_weights_fit_the_dilated_encoder(tmp_path):
    """init.encoder_weights: an ImageNet ResNet file (output stride 32) fits the dilated
    encoder of DeepLabV3+ (dilation changes no shape), as run/initialise.py loads it."""
    model = get_model("deeplabv3plus", num_classes=3, encoder="resnet18")
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
    )
    resnet18 = {
        name.removeprefix("encoder."): value
        for name, value in _weights("deeplabv3plus_resnet18").items()
        if name.startswith("encoder.")
    }
    path = tmp_path / "resnet18.safetensors"
    save_safetensors(path, resnet18)
    loaded = load_encoder_weights(path, model.encoder, dict(model.encoder_options or {}))
    for collection in ("params", "batch_stats"):
        expected = jax.tree.map(lambda leaf: leaf.shape, shapes[collection]["encoder"])
        assert jax.tree.map(np.shape, loaded.variables[collection]) == expected
