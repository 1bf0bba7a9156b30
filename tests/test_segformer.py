"""SegFormer and its Mix Transformer encoder against transformers: parameter counts, logits
from the same weights, checkpoint names and reports, attention, drop path, dtype, remat."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO
from test_pretrained import _assert_trees_equal, _flat
from test_remat import _loss_and_grads
from torchvision_random import random_torchvision_state_dict, weights_fingerprint

from jaxseg.data.info import SegmentationInfo
from jaxseg.models import get_model
from jaxseg.models.encoders import get_encoder
from jaxseg.models.encoders.mit import attention
from jaxseg.models.pretrained import (
    WeightsError,
    checkpoint_names,
    encoder_variables,
    load_encoder_weights,
    load_segformer_weights,
    read_state_dict,
    save_safetensors,
    segformer_shapes,
    segformer_state_dict,
    segformer_variables,
)

FIXTURES = REPO / "tests" / "fixtures" / "segformer"
GOLDENS = json.loads((FIXTURES / "goldens.json").read_text())
TOLERANCE = 1e-4  # of the largest |transformers logit| (or activation) of each map

# Measured with transformers 5.25.0: sum of SegformerForSemanticSegmentation(SegformerConfig(
# ..., num_labels)).parameters() and of SegformerModel's (the encoder).
TRANSFORMERS_PARAMETERS = {
    ("mit_b0", 150): 3_752_694,
    ("mit_b0", 5): 3_715_429,
    ("mit_b2", 150): 27_461_974,
    ("mit_b2", 5): 27_350_469,
}
TRANSFORMERS_ENCODER_PARAMETERS = {"mit_b0": 3_319_392, "mit_b1": 13_151_424, "mit_b2": 24_196_288}


def _count(module, *args) -> int:
    shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("encoder, num_classes", sorted(TRANSFORMERS_PARAMETERS))
def test_parameter_count_equals_transformers(encoder, num_classes):
    model = get_model("segformer", num_classes=num_classes, encoder=encoder)
    assert _count(model) == TRANSFORMERS_PARAMETERS[encoder, num_classes]
    if str(num_classes) in GOLDENS["parameter_counts"][encoder]:  # what the goldens' tool saw
        assert GOLDENS["parameter_counts"][encoder][str(num_classes)] == _count(model)


@pytest.mark.parametrize("encoder", sorted(TRANSFORMERS_ENCODER_PARAMETERS))
def test_encoder_parameter_count_equals_transformers(encoder):
    assert _count(get_encoder(encoder)) == TRANSFORMERS_ENCODER_PARAMETERS[encoder]


def _random_weights(encoder: str) -> dict[str, np.ndarray]:
    return random_torchvision_state_dict(GOLDENS["state_dicts"][encoder], GOLDENS["seed"])


def _errors(case: str, state_dict) -> dict[str, float]:
    """max |jaxseg - transformers| / max |transformers| of the logits and each stage."""
    spec = GOLDENS["cases"][case]
    options = {"encoder": spec["encoder"], "num_classes": spec["num_labels"]}
    variables = segformer_variables(state_dict, options, source=f"random {case}")
    golden = np.load(FIXTURES / f"{case}.npz")
    images = SegmentationInfo(class_names=("any",)).normalize(golden["image"])
    model = get_model("segformer", **options)
    # float32 matmuls: GPUs would otherwise use TF32 (~1e-3).
    with jax.default_matmul_precision("highest"):
        scores, captured = jax.jit(
            lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"])
        )(variables, images)
    captured = captured["intermediates"]
    assert scores.shape == (*golden["image"].shape[:3], spec["num_labels"])
    # transformers' logits are at stride 4: compare the classifier's output, before the
    # base class resizes it to the input.
    got = {"logits": np.asarray(captured["classifier"]["__call__"][0])}
    features = captured["encoder"]["__call__"][0]
    for stage in range(1, 5):
        name = f"stage{stage}"
        got[name] = np.asarray(features[name])[..., golden[f"{name}.channels"]]
    errors = {}
    for name, value in got.items():
        assert value.shape == golden[name].shape, f"{case} {name}"
        errors[name] = float(np.abs(value - golden[name]).max() / np.abs(golden[name]).max())
    return errors


@pytest.mark.parametrize("case", sorted(GOLDENS["cases"]))
def test_logits_match_transformers(case):
    encoder = GOLDENS["cases"][case]["encoder"]
    state_dict = _random_weights(encoder)
    np.testing.assert_allclose(
        weights_fingerprint(state_dict),
        GOLDENS["fingerprints"][encoder],
        rtol=1e-9,
        err_msg="the random weights differ from the goldens' (numpy's generator changed?):"
        " rerun tools/segformer_goldens.py",
    )
    for name, error in _errors(case, state_dict).items():
        assert error <= TOLERANCE, f"{case} {name}: max |jaxseg - transformers| = {error:.2e}"


@pytest.mark.parametrize(
    "name",
    [
        "segformer.encoder.block.3.1.attention.self.key.weight",  # the last block's keys
        "decode_head.linear_c.2.proj.bias",  # one stage's projection in the decoder
    ],
)
def test_a_perturbed_weight_fails_the_comparison(name):
    state_dict = dict(_random_weights("mit_b0"))
    state_dict[name] = state_dict[name] * np.float32(1.01)
    assert max(_errors("segformer_b0", state_dict).values()) > TOLERANCE


def test_attention_equals_the_softmax_formula():
    rng = np.random.default_rng(0)
    # (batch, tokens, heads, head_dim) queries over fewer (sequence-reduced) keys.
    query = rng.standard_normal((2, 12, 3, 8), np.float32)
    key, value = rng.standard_normal((2, 2, 5, 3, 8), np.float32)
    logits = np.einsum("bthd,bshd->bhts", query, key) / np.sqrt(8)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bhts,bshd->bthd", weights, value)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(attention)(query, key, value))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # bfloat16 (8 bits of mantissa) computes the same function, in bfloat16.
    low = [jnp.asarray(a, jnp.bfloat16) for a in (query, key, value)]
    got = jax.jit(attention)(*low)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, atol=0.05)


def test_transformers_5_module_names_read_as_checkpoint_names():
    for encoder, renamed in GOLDENS["module_names"].items():
        assert checkpoint_names(dict.fromkeys(renamed)) == dict.fromkeys(renamed.values()), encoder
        # A transformers >= 5 `model.state_dict()` loads as its checkpoint does.
        if encoder == "mit_b0":
            state_dict = _random_weights(encoder)
            new_names = {module: state_dict[saved] for module, saved in renamed.items()}
            options = {"encoder": encoder, "num_classes": 5}
            _assert_trees_equal(
                segformer_variables(new_names, options), segformer_variables(state_dict, options)
            )


def test_checkpoint_names_and_shapes_are_transformers():
    for case, spec in GOLDENS["cases"].items():
        options = {"encoder": spec["encoder"], "num_classes": spec["num_labels"]}
        expected = {k: tuple(v) for k, v in GOLDENS["state_dicts"][spec["encoder"]].items()}
        assert segformer_shapes(options) == expected, case


def test_safetensors_checkpoint_round_trip(tmp_path):
    """model.safetensors as save_pretrained writes it (batch counters included) -> jaxseg ->
    the same tensors; num_classes comes from the checkpoint when not given."""
    state_dict = _random_weights("mit_b0")
    path = tmp_path / "model.safetensors"
    counter = {"decode_head.batch_norm.num_batches_tracked": np.zeros((), np.int64)}
    save_safetensors(path, state_dict | counter)
    loaded = load_segformer_weights(path, {"encoder": "mit_b0"})
    assert loaded.variables["params"]["classifier"]["kernel"].shape == (1, 1, 256, 5)
    options = {"encoder": "mit_b0", "num_classes": 5}
    _assert_trees_equal(loaded.variables, segformer_variables(state_dict, options))
    back = segformer_state_dict(loaded.variables, options)
    assert sorted(back) == sorted(state_dict)
    for name, value in state_dict.items():
        assert np.array_equal(back[name], value), name


def test_bin_checkpoint_without_torch_says_how_to_convert(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(b"\0")
    with pytest.raises(WeightsError, match=rf"{path}: .*needs torch.*safetensors\.torch"):
        read_state_dict(path)


def test_bin_checkpoint_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    state_dict = _random_weights("mit_b0")
    path = tmp_path / "pytorch_model.bin"
    torch.save({name: torch.from_numpy(value) for name, value in state_dict.items()}, path)
    options = {"encoder": "mit_b0", "num_classes": 5}
    _assert_trees_equal(
        load_segformer_weights(path, options).variables, segformer_variables(state_dict, options)
    )


def test_encoder_only_from_a_classification_or_segmentation_checkpoint(tmp_path):
    """An ImageNet mit-bX checkpoint (encoder + "classifier.") or a SegFormer one (encoder +
    "decode_head.") gives the encoder of the model, for fine-tuning."""
    state_dict = _random_weights("mit_b0")
    expected = segformer_variables(state_dict, {"encoder": "mit_b0", "num_classes": 5})
    expected = {"params": expected["params"]["encoder"], "batch_stats": {}}
    encoder = {k: v for k, v in state_dict.items() if k.startswith("segformer.encoder.")}
    imagenet = encoder | {
        "classifier.weight": np.zeros((1000, 256), np.float32),
        "classifier.bias": np.zeros(1000, np.float32),
    }
    for name, tensors in (("imagenet", imagenet), ("segformer", state_dict)):
        path = tmp_path / f"{name}.safetensors"
        save_safetensors(path, tensors)
        _assert_trees_equal(load_encoder_weights(path, "mit_b0").variables, expected)
    with pytest.raises(WeightsError, match=r"fit encoder 'mit_b2'.*transformers checkpoint"):
        encoder_variables("mit_b2", encoder, source="b0 into b2")


def _segformer_error(state_dict, options=None) -> str:
    with pytest.raises(WeightsError) as raised:
        segformer_variables(state_dict, options or {"encoder": "mit_b0"}, source="bad.safetensors")
    message = str(raised.value)
    assert message.startswith("bad.safetensors: the tensors do not fit model 'segformer'")
    return message


def test_missing_unexpected_and_misshapen_tensors_are_named():
    state_dict = dict(_random_weights("mit_b0"))
    del state_dict["segformer.encoder.block.1.0.attention.self.sr.weight"]
    state_dict["decode_head.linear_c.4.proj.weight"] = np.ones((256, 8), np.float32)
    message = _segformer_error(state_dict)
    assert "1 missing: segformer.encoder.block.1.0.attention.self.sr.weight" in message
    assert "1 unexpected: decode_head.linear_c.4.proj.weight" in message
    # A B2 checkpoint into B0: more blocks, wider stages.
    message = _segformer_error(_random_weights("mit_b2"), {"encoder": "mit_b0", "num_classes": 5})
    assert "unexpected: segformer.encoder.block.0.2." in message
    assert "with the wrong shape: decode_head.batch_norm.bias (768,) (expected (256,))" in message
    assert "more)" in message
    # A checkpoint with other classes than asked for.
    message = _segformer_error(_random_weights("mit_b0"), {"encoder": "mit_b0", "num_classes": 3})
    assert "2 with the wrong shape: decode_head.classifier.bias (5,) (expected (3,))" in message


def test_drop_path_only_in_training():
    encoder = get_encoder("mit_b0", drop_path_rate=0.5)
    rates = encoder.drop_path_rates()
    assert len(rates) == 8 and rates[0] == 0 and rates[-1] == 0.5
    assert np.allclose(np.diff(rates), 0.5 / 7)
    model = get_model("segformer", num_classes=3, encoder_options={"drop_path_rate": 0.5})
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), images[:1])
    # Not training: deterministic, no rng needed.
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    np.testing.assert_array_equal(apply(variables, images), apply(variables, images))

    def train(seed):
        rngs = {"dropout": jax.random.key(seed)}
        return apply(variables, images, train=True, rngs=rngs, mutable=("batch_stats",))[0]

    np.testing.assert_array_equal(train(1), train(1))
    assert not np.allclose(train(1), train(2))


def test_bfloat16_computes_in_bfloat16():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 64, 64, 3)), jnp.float32)
    reference = get_model("segformer", num_classes=3)
    variables = reference.init(jax.random.key(0), images)
    model = get_model("segformer", num_classes=3, dtype="bfloat16")
    scores, captured = model.apply(
        variables, images, capture_intermediates=True, mutable=["intermediates"]
    )
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(captured["intermediates"]["encoder"])}
    assert dtypes == {jnp.dtype(jnp.bfloat16)}
    assert scores.dtype == jnp.float32
    want = reference.apply(variables, images)
    assert np.abs(scores - want).max() <= 0.05 * np.abs(want).max()


def test_remat_computes_the_same_function_and_gradients():
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    plain = get_model("segformer", num_classes=3)
    variables = plain.init(jax.random.key(0), images[:1])
    (_, (want_logits, want_stats)), want_grads = _loss_and_grads(plain, variables, images)
    model = get_model("segformer", num_classes=3, remat="blocks")
    (_, (logits, stats)), grads = _loss_and_grads(model, variables, images)
    # Drop path draws the same masks inside the checkpointed blocks. Tolerances relative to
    # each tree's largest entry: the decoder's projection biases, which batch norm cancels,
    # have gradients of rounding size (1e-12).
    for got, want in ((logits, want_logits), (grads, want_grads), (stats, want_stats)):
        got, want = _flat(got), _flat(want)
        assert sorted(got) == sorted(want)
        scale = max(np.abs(value).max() for value in want.values())
        for path in want:
            assert np.abs(got[path] - want[path]).max() <= 1e-4 * scale, path


def test_encoder_weights_of_a_run_from_a_mit_checkpoint(tmp_path):
    """init.encoder_weights takes a mit-bX (or SegFormer) checkpoint for a SegFormer run."""
    from jaxseg.config import load_config_file
    from jaxseg.run.build import build_model
    from jaxseg.run.initialise import load_initialisation

    state_dict = _random_weights("mit_b0")
    path = tmp_path / "model.safetensors"
    save_safetensors(path, state_dict)
    config = load_config_file(str(REPO / "configs" / "segformer_b0.py"))
    config.init.encoder_weights = str(path)
    initialisation = load_initialisation(config, build_model(config.model, 5))
    expected = segformer_variables(state_dict, {"encoder": "mit_b0", "num_classes": 5})
    _assert_trees_equal(initialisation.source["params"]["encoder"], expected["params"]["encoder"])
    assert initialisation.record["encoder_weights"]["path"] == str(path)


def test_tiles_differ_from_the_whole_image_everywhere():
    """Attention is global: a tile's prediction differs from the whole image's even at the
    tile's centre (what a convolutional model would predict alike)."""
    model = get_model("segformer", num_classes=3)
    assert not model.position_dependent() and model.tile_period() == 32
    image = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 64, 3)), jnp.float32)
    variables = model.init(jax.random.key(0), image)
    whole, tile = model.apply(variables, image), model.apply(variables, image[:, :, :32])
    centre = (slice(None), slice(8, 24), slice(8, 24))
    difference = np.abs(whole[centre] - tile[centre]).max()
    assert difference > 1e-3 * np.abs(whole).max()
