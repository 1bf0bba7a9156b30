import jax
import jax.numpy as jnp
import pytest

from jaxseg.models.encoders import get_encoder
from jaxseg.run.state import count_params


def _shapes(encoder, size=64):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(encoder.init, jax.random.key(0), x)
    features = jax.eval_shape(lambda v, x: encoder.apply(v, x), variables, x)
    return variables, features


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("vgg16", {"include_fc": False}, 14_714_688),  # the 13 convolutions
        ("resnet18", {}, 11_176_512),
        ("resnet34", {}, 21_284_672),
        ("resnet50", {}, 23_508_032),
    ],
)
def test_parameter_counts_match_torchvision(name, options, expected):
    variables, _ = _shapes(get_encoder(name, **options))
    assert count_params(variables["params"]) == expected


@pytest.mark.parametrize(
    "name, options",
    [
        ("vgg16", {}),
        ("vgg16", {"include_fc": False}),
        ("resnet18", {}),
        ("resnet50", {"output_stride": 16}),
        ("resnet34", {"output_stride": 8}),
        ("unet", {"base_features": 8, "depth": 3}),
    ],
)
def test_declared_channels_and_strides_match_the_features(name, options):
    encoder = get_encoder(name, **options)
    _, features = _shapes(encoder)
    channels, strides = encoder.feature_channels(), encoder.feature_strides()
    assert set(features) == set(channels) == set(strides)
    for key, feature in features.items():
        assert feature.shape[1] == feature.shape[2] == 64 // strides[key], key
        assert feature.shape[3] == channels[key], key


def test_vgg16_names_and_fc_layers():
    encoder = get_encoder("vgg16")
    variables, features = _shapes(encoder)
    assert variables["params"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)
    assert variables["params"]["fc7"]["kernel"].shape == (1, 1, 4096, 4096)
    assert features["pool3"].shape[1] == 8 and features["pool4"].shape[1] == 4
    assert features["stride32"].shape == features["fc7"].shape


def test_resnet_dilation_keeps_resolution():
    strides = get_encoder("resnet50", output_stride=8).feature_strides()
    assert (strides["layer2"], strides["layer3"], strides["layer4"]) == (8, 8, 8)
    variables, _ = _shapes(get_encoder("resnet50", output_stride=8))
    dilated = variables["params"]["layer4_1"]["conv2_conv"]["kernel"]
    assert dilated.shape == (3, 3, 512, 512)  # same weights, only the dilation changes
    assert count_params(variables["params"]) == 23_508_032


def test_bad_encoder_name_and_option():
    with pytest.raises(ValueError, match=r"unknown encoder 'vgg19'; available: \["):
        get_encoder("vgg19")
    with pytest.raises(ValueError, match=r"encoder 'resnet50' has no option\(s\) \['stride'\]"):
        get_encoder("resnet50", stride=8)
    with pytest.raises(ValueError, match=r"output_stride 4 is not one of \(8, 16, 32\)"):
        get_encoder("resnet50", output_stride=4).feature_strides()


def test_feature_at_names_a_stride_by_its_alias_unless_features_share_it():
    vgg = get_encoder("vgg16")
    assert (vgg.feature_at(32), vgg.feature_at(16, "first"), vgg.feature_at(8, "first")) == (
        "fc7",
        "pool4",
        "pool3",
    )
    assert vgg.feature_at(8) == "conv4_3"
    resnet = get_encoder("resnet18")
    assert [resnet.feature_at(s) for s in (2, 4, 8, 16, 32)] == [
        "stride2",
        "stride4",
        "stride8",
        "stride16",
        "stride32",
    ]
    assert get_encoder("vgg16", include_fc=False).feature_strides()["stride32"] == 32
    with pytest.raises(ValueError, match="no feature at stride 64"):
        resnet.feature_at(64)


def test_require_names_the_missing_features_and_what_there_is():
    with pytest.raises(ValueError, match=r"FCN: encoder ResNet has no feature\(s\) \['pool4'\]"):
        get_encoder("resnet18").require(["stride8", "pool4"], "FCN")
