"""Runs started from a reference library's weights through the config: whole models
(`init.model_weights`: torchvision DeepLabV3, smp DeepLabV3+, transformers SegFormer), fine-
tuned to another number of classes, and encoders alone (`init.encoder_weights`: a MiT, a
ResNet). The files are made here with numpy in the references' names and layouts."""

import json

import jax
import numpy as np
import pytest
from helpers import tiny_config
from torchvision_random import random_torchvision_state_dict

from jaxseg.config import model_config
from jaxseg.errors import ConfigError
from jaxseg.models import get_model, pretrained
from jaxseg.run import load_run
from jaxseg.run.build import build_model
from jaxseg.run.initialise import load_initialisation
from jaxseg.train.loop import train_and_evaluate

# Small versions of each model (ResNet-18 and MiT-B0 have no width options).
TINY = {
    "deeplabv3": {"encoder": "resnet18", "output_stride": 16, "channels": 8},
    "deeplabv3plus": {"encoder": "resnet18", "channels": 8},
    "segformer": {"encoder": "mit_b0", "decoder_hidden_size": 16},
}
FILE_CLASSES = 7  # the reference model's; the shapes dataset has 5
DATA_CLASSES = 5
# Tensors the reference files hold that the jaxseg models have no use for.
EXTRAS = {
    "deeplabv3": {"aux_classifier.4.weight": (FILE_CLASSES, 8, 1, 1)},
    "deeplabv3plus": {"classification_head.3.weight": (FILE_CLASSES, 512)},
    "segformer": {},
}


def _reference_state_dict(name: str, **changes) -> dict[str, np.ndarray]:
    """Random weights of a `FILE_CLASSES`-class reference model, as its library saves them
    (batch counters and unused heads included)."""
    model = get_model(name, num_classes=FILE_CLASSES, **TINY[name] | changes)
    shapes = pretrained.model_reference_shapes(model, pretrained.REFERENCE_LAYOUTS[name])
    state_dict = random_torchvision_state_dict(shapes | EXTRAS[name], seed=19)
    for tensor in list(state_dict):
        if tensor.endswith(".running_mean"):
            counter = tensor.removesuffix("running_mean") + "num_batches_tracked"
            state_dict[counter] = np.array(1000, np.int64)
    return state_dict


def _config(data_dir, name: str, **overrides):
    config = tiny_config(data_dir, **{"train.num_steps": 2, **overrides})
    config.model = model_config(name, **TINY[name])
    return config


def _flat(tree, prefix=()) -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        return {k: v for key in tree for k, v in _flat(tree[key], (*prefix, key)).items()}
    return {"/".join(prefix): np.asarray(tree)}


def _with_imagenet_classifier(state_dict: dict, name: str, features: int) -> dict:
    """`state_dict` plus a 1000-way ImageNet classifier `name` (weights of ones): what a
    classification checkpoint carries beside its encoder."""
    return state_dict | {
        f"{name}.weight": np.ones((1000, features), np.float32),
        f"{name}.bias": np.ones(1000, np.float32),
    }


def _initialised(config, model) -> tuple[dict, dict]:
    """The variables and report `config.init` gives `model`; what it leaves fresh is zero."""
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, 64, 64, 3), np.float32), train=False)
    )
    zeros = jax.tree.map(lambda leaf: np.zeros(leaf.shape, leaf.dtype), dict(shapes))
    return load_initialisation(config, model).apply(zeros)


# One tensor per kind of layout, by hand: conv OIHW -> HWIO, linear (O, I) -> (I, O), vectors.
SPOT_CHECKS = {
    "deeplabv3": [
        ("params/encoder/stem_conv/kernel", "backbone.conv1.weight", (2, 3, 1, 0)),
        ("params/aspp/branch1_conv/kernel", "classifier.0.convs.1.0.weight", (2, 3, 1, 0)),
        ("batch_stats/head_bn/var", "classifier.2.running_var", None),
    ],
    "deeplabv3plus": [
        (
            "params/encoder/layer4_1/conv2_conv/kernel",
            "encoder.layer4.1.conv2.weight",
            (2, 3, 1, 0),
        ),
        ("params/fuse_pointwise/kernel", "decoder.block2.0.1.weight", (2, 3, 1, 0)),
        ("batch_stats/low_level_bn/mean", "decoder.block1.1.running_mean", None),
    ],
    "segformer": [
        (
            "params/encoder/block2_1/attention/query/kernel",
            "segformer.encoder.block.1.1.attention.self.query.weight",
            (1, 0),
        ),
        ("params/linear_fuse/kernel", "decode_head.linear_fuse.weight", (2, 3, 1, 0)),
        ("batch_stats/batch_norm/var", "decode_head.batch_norm.running_var", None),
    ],
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_run_fine_tunes_a_reference_model_for_other_classes(name, data_dir, tmp_path, capsys):
    state_dict = _reference_state_dict(name)
    path = tmp_path / "reference.safetensors"
    pretrained.save_safetensors(path, state_dict)
    layout = pretrained.REFERENCE_LAYOUTS[name]
    config = _config(data_dir, name, **{"init.model_weights": str(path)})

    # What the config loads: every variable the file's, but the classifier, left fresh.
    model = build_model(config.model, DATA_CLASSES)
    variables, report = _initialised(config, model)
    reference = get_model(name, num_classes=FILE_CLASSES, **TINY[name])
    expected = _flat(pretrained.model_variables(reference, state_dict, layout))
    got = _flat(variables)
    fresh = ["params/classifier/bias", "params/classifier/kernel"]
    assert sorted(got) == sorted(expected)
    for label in expected:
        if label in fresh:
            assert got[label].shape[-1] == DATA_CLASSES and not got[label].any(), label
        else:
            assert np.array_equal(got[label], expected[label]), label
    for label, tensor, axes in SPOT_CHECKS[name]:
        value = state_dict[tensor] if axes is None else state_dict[tensor].transpose(axes)
        assert np.array_equal(got[label], value), label
        assert report["reference_names"][label] == tensor
    assert report["initialised"] == fresh and sorted(report["copied"]) == sorted(
        set(expected) - set(fresh)
    )
    assert [line.split(" ")[0] for line in report["mismatched"]] == fresh
    assert f": ({FILE_CLASSES},) -> ({DATA_CLASSES},)" in report["mismatched"][0]
    assert report["ignored"] == sorted(EXTRAS[name])  # batch counters are not listed

    # Trained two steps, everything but the classifier frozen: the file's parameters stay.
    config.optim.freeze = "^(?!classifier/)"
    workdir = tmp_path / "run"
    train_and_evaluate(config, str(workdir))
    written = json.loads((workdir / "init_report.json").read_text())
    record = {"path": str(path), "sha256": pretrained.file_sha256(path), "layout": layout}
    assert written["model_weights"] == record
    assert written["initialised"] == fresh and written["mismatched"] == report["mismatched"]
    meta = json.loads((workdir / "checkpoints" / "2" / "meta" / "metadata").read_text())
    assert meta["init"] == {"model_weights": record}
    trained = _flat({"params": load_run(str(workdir)).variables["params"]})
    for label, value in trained.items():
        if label not in fresh:
            assert np.array_equal(value, expected[label]), label
    assert trained["params/classifier/kernel"].shape[-1] == DATA_CLASSES
    out = capsys.readouterr().out
    assert f"Initialised from {layout} weights {path}" in out
    assert "2 left at their initialisation, 2 of another shape" in out


@pytest.mark.parametrize("name", sorted(TINY))
def test_torch_files_load_as_their_safetensors(name, data_dir, tmp_path):
    """torchvision's and smp's .pth, transformers' pytorch_model.bin: read with torch."""
    torch = pytest.importorskip("torch", reason="reading .pth/.bin files needs torch")
    state_dict = _reference_state_dict(name)
    safetensors_file = tmp_path / "model.safetensors"
    pretrained.save_safetensors(safetensors_file, state_dict)
    torch_file = tmp_path / ("pytorch_model.bin" if name == "segformer" else "model.pth")
    torch.save({key: torch.from_numpy(value) for key, value in state_dict.items()}, torch_file)
    model = build_model(model_config(name, **TINY[name]), FILE_CLASSES)
    loaded = [
        _initialised(_config(data_dir, name, **{"init.model_weights": str(path)}), model)
        for path in (safetensors_file, torch_file)
    ]
    from_safetensors, from_torch = (_flat(variables) for variables, _ in loaded)
    assert sorted(from_torch) == sorted(from_safetensors)
    for label, value in from_safetensors.items():
        assert np.array_equal(from_torch[label], value), label
    assert loaded[1][1]["initialised"] == [] and loaded[1][1]["mismatched"] == []


def _init_error(config, model=None) -> str:
    model = model or build_model(config.model, DATA_CLASSES)
    with pytest.raises(ConfigError) as raised:
        load_initialisation(config, model)
    return str(raised.value)


def test_bad_model_weights_name_the_file_and_the_tensors(data_dir, tmp_path):
    deeplab = tmp_path / "deeplabv3plus.safetensors"
    pretrained.save_safetensors(deeplab, _reference_state_dict("deeplabv3plus"))
    missing = tmp_path / "absent.safetensors"
    message = _init_error(
        _config(data_dir, "deeplabv3plus", **{"init.model_weights": str(missing)})
    )
    assert message == f"init.model_weights: weights file {missing} does not exist"
    # another model's file
    message = _init_error(_config(data_dir, "segformer", **{"init.model_weights": str(deeplab)}))
    assert message.startswith(f"init.model_weights: {deeplab}: the tensors do not fit model")
    assert "missing: decode_head.batch_norm.bias" in message
    assert "unexpected: classification_head.3.weight, decoder.aspp.0.convs.0.0.weight" in message
    assert message.endswith("the names are an smp DeepLabV3+'s: a file for model 'deeplabv3plus'")
    # the same model with other widths: each misshapen tensor named, not a fresh classifier
    wider = _config(data_dir, "deeplabv3plus", **{"init.model_weights": str(deeplab)})
    wider.model.channels = 16
    message = _init_error(wider)
    assert "with the wrong shape: decoder.aspp.0.convs.0.0.weight (8, 512, 1, 1)" in message
    shapes = [
        pretrained.model_reference_shapes(build_model(config.model, classes), "smp_deeplabv3plus")
        for config, classes in ((wider, DATA_CLASSES), (_config(data_dir, "deeplabv3plus"), 7))
    ]
    misshapen = [name for name in shapes[0] if shapes[0][name] != shapes[1][name]]
    assert "segmentation_head.0.weight" in misshapen  # counted, not left out as fresh
    assert f"{len(misshapen)} with the wrong shape: " in message
    # an encoder's file
    resnet = tmp_path / "resnet18.safetensors"
    encoder = {
        k.removeprefix("encoder."): v for k, v in _reference_state_dict("deeplabv3plus").items()
    }
    pretrained.save_safetensors(resnet, {k: v for k, v in encoder.items() if k.startswith("layer")})
    message = _init_error(_config(data_dir, "deeplabv3", **{"init.model_weights": str(resnet)}))
    assert message.endswith("a file for init.encoder_weights (an encoder alone)")


def test_model_weights_need_a_model_with_a_reference_and_one_source(data_dir, tmp_path):
    message = _init_error(tiny_config(data_dir, **{"init.model_weights": "any.safetensors"}))
    assert "no reference library's file is known for model 'unet'" in message
    assert "smp_deeplabv3plus files for model 'deeplabv3plus'" in message
    both = _config(
        data_dir,
        "deeplabv3plus",
        **{"init.model_weights": "a.safetensors", "init.encoder_weights": "b.safetensors"},
    )
    assert _init_error(both) == (
        "set one of init.encoder_weights, init.model_weights, init.from_run, not several; got"
        " init.encoder_weights='b.safetensors', init.model_weights='a.safetensors'"
    )


def test_bad_model_weights_are_refused_before_the_run_directory_exists(data_dir, tmp_path):
    segformer = tmp_path / "segformer.safetensors"
    pretrained.save_safetensors(segformer, _reference_state_dict("segformer"))
    config = _config(data_dir, "deeplabv3", **{"init.model_weights": str(segformer)})
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError, match=f"init.model_weights: {segformer}: "):
        train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_encoder_weights_of_a_segformer_config_from_an_imagenet_mit(data_dir, tmp_path):
    """transformers' nvidia/mit-b0 (SegformerForImageClassification): the encoder and a
    1000-way classifier, which is ignored; the decoder starts fresh."""
    state_dict = _reference_state_dict("segformer")
    mit = {k: v for k, v in state_dict.items() if k.startswith("segformer.encoder.")}
    imagenet = _with_imagenet_classifier(mit, "classifier", 256)
    path = tmp_path / "model.safetensors"
    pretrained.save_safetensors(path, imagenet)
    config = _config(data_dir, "segformer", **{"init.encoder_weights": str(path)})
    variables, report = _initialised(config, build_model(config.model, DATA_CLASSES))
    reference = get_model("segformer", num_classes=FILE_CLASSES, **TINY["segformer"])
    expected = _flat(pretrained.model_variables(reference, state_dict, "transformers_segformer"))
    got = _flat(variables)
    encoder = sorted(label for label in expected if label.startswith("params/encoder/"))
    assert sorted(report["copied"]) == encoder
    assert "params/linear_fuse/kernel" in report["initialised"]
    for label in encoder:
        assert np.array_equal(got[label], expected[label]), label
    assert not got["params/linear_fuse/kernel"].any()
    assert report["encoder_weights"]["sha256"] == pretrained.file_sha256(path)


@pytest.mark.parametrize("source", ["imagenet", "torchvision_deeplabv3", "smp_deeplabv3plus"])
def test_encoder_weights_of_a_deeplab_config_from_a_resnet(source, data_dir, tmp_path):
    """An ImageNet ResNet-18 (its "fc." ignored), or the ResNet of a whole torchvision
    ("backbone.") or smp ("encoder.") model, initialises a DeepLabV3+'s encoder."""
    whole = _reference_state_dict(
        "deeplabv3" if source == "torchvision_deeplabv3" else "deeplabv3plus"
    )
    prefix = "backbone." if source == "torchvision_deeplabv3" else "encoder."
    resnet = {k.removeprefix(prefix): v for k, v in whole.items() if k.startswith(prefix)}
    state_dict = whole if source != "imagenet" else _with_imagenet_classifier(resnet, "fc", 512)
    path = tmp_path / "resnet18.safetensors"
    pretrained.save_safetensors(path, state_dict)
    config = _config(data_dir, "deeplabv3plus", **{"init.encoder_weights": str(path)})
    variables, report = _initialised(config, build_model(config.model, DATA_CLASSES))
    got = _flat(variables)
    expected = _flat(pretrained.encoder_variables("resnet18", resnet))
    assert sorted(report["copied"]) == sorted(
        f"{k.split('/')[0]}/encoder/{k.split('/', 1)[1]}" for k in expected
    )
    for label, value in expected.items():
        collection, rest = label.split("/", 1)
        assert np.array_equal(got[f"{collection}/encoder/{rest}"], value), label
    stem = state_dict[f"{'' if source == 'imagenet' else prefix}conv1.weight"]
    assert np.array_equal(got["params/encoder/stem_conv/kernel"], stem.transpose(2, 3, 1, 0))
    assert "params/aspp/branch0_conv/kernel" in report["initialised"]
