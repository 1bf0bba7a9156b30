"""Writes tests/fixtures/torchvision/: real torchvision activations for the weights parity test.

tests/test_pretrained.py loads the same random weights into jaxseg's encoders
through jaxseg.models.pretrained and compares its features with these. The
weights come from tests/torchvision_random.py (numpy only, seeded), so only
the activations are committed. torch is not a jaxseg dependency: run this in a
separate venv (written with torch 2.14.1+cu130, torchvision 0.29.1+cu130,
numpy 2.4.6, on CPU; the versions are recorded in goldens.json):

    python3 -m venv /work/torchvenv
    /work/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy safetensors
    /work/torchvenv/bin/python tools/torchvision_goldens.py

Per case it writes {case}.npz: the uint8 input image (NHWC) and, per feature,
the NHWC activation at a deterministic subset of channels ("{feature}") and
those channel indices ("{feature}.channels"); goldens.json holds the cases,
the real torchvision state-dict names and shapes, and fingerprints of the
random weights.
"""

import json
import pathlib
import sys

import numpy as np
import torch
import torchvision

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "torchvision"
sys.path.insert(0, str(REPO / "tests"))

from torchvision_random import random_torchvision_state_dict, weights_fingerprint  # noqa: E402

SEED = 0
# Channels kept per stored map: float32 is needed for the 1e-4 tolerance (float16 has
# ~5e-4 resolution), so the size is cut by storing a spread of channels instead.
MAX_CHANNELS = 16
# jaxseg/data/info.py: ImageNet mean/std on the 0-255 scale, applied in float32.
IMAGENET_MEAN = np.asarray((0.485 * 255, 0.456 * 255, 0.406 * 255), np.float32)
IMAGENET_STD = np.asarray((0.229 * 255, 0.224 * 255, 0.225 * 255), np.float32)

RESNET_FEATURES = ("stem", "layer1", "layer2", "layer3", "layer4")
VGG16_FEATURES = tuple(
    name
    for block, convs in enumerate((2, 2, 3, 3, 3), 1)
    for name in (f"conv{block}_{convs}", f"pool{block}")
)
# case: jaxseg encoder + options, the torchvision model + kwargs, input (height, width).
# 64x96 (not square) so that a swapped height/width shows; 224x224 makes pool5 7x7 for fc6.
CASES = {
    "resnet18": ("resnet18", {}, "resnet18", {}, (64, 96), RESNET_FEATURES),
    "resnet34": ("resnet34", {}, "resnet34", {}, (64, 96), RESNET_FEATURES),
    "resnet50": ("resnet50", {}, "resnet50", {}, (64, 96), RESNET_FEATURES),
    "resnet50_os8": (
        "resnet50",
        {"output_stride": 8},
        "resnet50",
        {"replace_stride_with_dilation": [False, True, True]},
        (64, 96),
        RESNET_FEATURES,
    ),
    "vgg16": ("vgg16", {"include_fc": False}, "vgg16", {}, (64, 96), VGG16_FEATURES),
    "vgg16_fc7": ("vgg16", {"fc6_padding": "VALID"}, "vgg16", {}, (224, 224), ("fc7",)),
}


def torchvision_shapes(architecture: str) -> dict[str, list[int]]:
    """The real model's state-dict names and shapes, without the integer batch counters."""
    model = getattr(torchvision.models, architecture)(weights=None)
    return {
        name: list(tensor.shape)
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }


def build_model(architecture: str, kwargs: dict, state_dict: dict[str, np.ndarray]):
    """The torchvision model in eval mode with every weight and statistic from `state_dict`."""
    model = getattr(torchvision.models, architecture)(weights=None, **kwargs)
    tensors = {name: torch.from_numpy(value) for name, value in state_dict.items()}
    # strict: every parameter and running statistic is replaced (a missing
    # num_batches_tracked is filled in by BatchNorm and unused in eval mode).
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def resnet_features(model, x) -> dict[str, torch.Tensor]:
    features = {"stem": model.relu(model.bn1(model.conv1(x)))}
    x = model.maxpool(features["stem"])
    for layer in range(1, 5):
        x = getattr(model, f"layer{layer}")(x)
        features[f"layer{layer}"] = x
    return features


def vgg16_features(model, x) -> dict[str, torch.Tensor]:
    """conv{b}_{last} (after its ReLU) and pool{b}, named as jaxseg's VGG16 names them."""
    features, block, convs = {}, 1, 0
    for module in model.features:
        if isinstance(module, torch.nn.MaxPool2d):
            features[f"conv{block}_{convs}"] = x
            x = module(x)
            features[f"pool{block}"] = x
            block, convs = block + 1, 0
        else:
            convs += isinstance(module, torch.nn.Conv2d)
            x = module(x)
    return features


def vgg16_fc7(model, x) -> dict[str, torch.Tensor]:
    """classifier[:5] = fc6, ReLU, Dropout, fc7, ReLU: FCN's fc7 at one position."""
    fc7 = model.classifier[:5](torch.flatten(model.avgpool(model.features(x)), 1))
    return {"fc7": fc7[:, :, None, None]}


def spread_channels(channels: int) -> np.ndarray:
    return np.unique(np.linspace(0, channels - 1, min(channels, MAX_CHANNELS)).round()).astype(
        np.int32
    )


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    architectures = sorted({case[2] for case in CASES.values()})
    shapes = {architecture: torchvision_shapes(architecture) for architecture in architectures}
    fingerprints = {}
    cases_json = {}
    for index, (case, (encoder, options, architecture, kwargs, size, names)) in enumerate(
        CASES.items()
    ):
        state_dict = random_torchvision_state_dict(shapes[architecture], SEED)
        fingerprints[architecture] = weights_fingerprint(state_dict).tolist()
        model = build_model(architecture, kwargs, state_dict)
        image = np.random.default_rng([SEED, index]).integers(0, 256, (1, *size, 3), np.uint8)
        normalised = (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
        x = torch.from_numpy(normalised).permute(0, 3, 1, 2).contiguous()
        extract = resnet_features if architecture.startswith("resnet") else vgg16_features
        extract = vgg16_fc7 if names == ("fc7",) else extract
        with torch.no_grad():
            features = extract(model, x)
        arrays = {"image": image}
        for name in names:
            activation = features[name].permute(0, 2, 3, 1).numpy()
            channels = spread_channels(activation.shape[-1])
            arrays[name] = np.ascontiguousarray(activation[..., channels])
            arrays[f"{name}.channels"] = channels
            print(
                f"{case:13s} {name:7s} {tuple(activation.shape)!s:20s}"
                f" max|a| {np.abs(activation).max():.3g}"
                f" mean|a| {np.abs(activation).mean():.3g}"
            )
        np.savez(OUT / f"{case}.npz", **arrays)
        cases_json[case] = {
            "encoder": encoder,
            "encoder_options": options,
            "torchvision": architecture,
            "torchvision_kwargs": kwargs,
            "features": list(names),
        }
    metadata = {
        "generated_by": "tools/torchvision_goldens.py",
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "cases": cases_json,
        "state_dicts": shapes,
        "fingerprints": fingerprints,
    }
    (OUT / "goldens.json").write_text(json.dumps(metadata, indent=1) + "\n")
    total = sum(path.stat().st_size for path in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
