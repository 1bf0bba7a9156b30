"""Writes tests/fixtures/deeplab/: reference DeepLab logits for tests/test_deeplab.py.

The references are torchvision's `deeplabv3_resnet50` (output stride 8, its default;
and the same head at output stride 16 on a ResNet-50 dilated as
`replace_stride_with_dilation=[False, False, True]`, rates (6, 12, 18)) and
segmentation_models_pytorch's `DeepLabV3Plus` on ResNet-18 and ResNet-50. Their weights
come from tests/torchvision_random.py (numpy only, seeded), so only inputs and logits are
committed; the test recreates the weights and loads them through
jaxseg.models.pretrained. Run in the torch venv (not a jaxseg dependency):

    /work/torchvenv/bin/python tools/deeplab_goldens.py

Per case it writes {case}.npz: the uint8 input image (NHWC) and the NHWC logits at every
SUBSAMPLE-th pixel ("logits"); goldens.json holds the cases, the real state-dict names and
shapes, the reference parameter counts, weight fingerprints and the versions used.
"""

import json
import pathlib
import sys

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "deeplab"
sys.path.insert(0, str(REPO / "tests"))

from torchvision_random import random_torchvision_state_dict, weights_fingerprint  # noqa: E402

SEED = 0
NUM_CLASSES = 5
SUBSAMPLE = 4  # logits kept at rows and columns 0, 4, 8, ... (float32, for the 1e-4 check)
IMAGENET_MEAN = np.asarray((0.485 * 255, 0.456 * 255, 0.406 * 255), np.float32)
IMAGENET_STD = np.asarray((0.229 * 255, 0.224 * 255, 0.225 * 255), np.float32)


def torchvision_deeplabv3_os8():
    return torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=NUM_CLASSES, aux_loss=False
    )


def torchvision_deeplabv3_os16():
    resnet = torchvision.models.resnet50(
        weights=None, replace_stride_with_dilation=[False, False, True]
    )
    backbone = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
    return DeepLabV3(backbone, DeepLabHead(2048, NUM_CLASSES, atrous_rates=(6, 12, 18)), None)


def smp_deeplabv3plus(encoder):
    return lambda: smp.DeepLabV3Plus(
        encoder_name=encoder, encoder_weights=None, classes=NUM_CLASSES
    )


# case: (reference constructor, jaxseg model + options, weights format, input (height, width)).
# The sizes make some atrous taps land inside the map (rate 12 at output stride 8 needs a
# map wider than 12, ...), not square so that a swapped height/width shows.
CASES = {
    "deeplabv3_resnet50_os8": (
        torchvision_deeplabv3_os8,
        "deeplabv3",
        {"encoder": "resnet50", "output_stride": 8},
        "torchvision",
        (72, 112),
    ),
    "deeplabv3_resnet50_os16": (
        torchvision_deeplabv3_os16,
        "deeplabv3",
        {"encoder": "resnet50", "output_stride": 16},
        "torchvision",
        (112, 144),
    ),
    "deeplabv3plus_resnet18": (
        smp_deeplabv3plus("resnet18"),
        "deeplabv3plus",
        {"encoder": "resnet18"},
        "smp",
        (224, 240),
    ),
    "deeplabv3plus_resnet50": (
        smp_deeplabv3plus("resnet50"),
        "deeplabv3plus",
        {"encoder": "resnet50"},
        "smp",
        (64, 96),
    ),
}


def state_dict_shapes(model) -> dict[str, list[int]]:
    return {
        name: list(tensor.shape)
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    cases, shapes, fingerprints, parameters = {}, {}, {}, {}
    for index, (case, (build, model, options, weights, size)) in enumerate(CASES.items()):
        reference = build().eval()
        shapes[case] = state_dict_shapes(reference)
        parameters[case] = sum(p.numel() for p in reference.parameters())
        state_dict = random_torchvision_state_dict(shapes[case], SEED)
        fingerprints[case] = weights_fingerprint(state_dict).tolist()
        tensors = {name: torch.from_numpy(value) for name, value in state_dict.items()}
        reference.load_state_dict(tensors, strict=True)
        image = np.random.default_rng([SEED, index]).integers(0, 256, (1, *size, 3), np.uint8)
        normalised = (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
        x = torch.from_numpy(normalised).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            logits = reference(x)
        logits = logits["out"] if isinstance(logits, dict) else logits
        logits = logits.permute(0, 2, 3, 1).numpy()
        np.savez(
            OUT / f"{case}.npz",
            image=image,
            logits=np.ascontiguousarray(logits[:, ::SUBSAMPLE, ::SUBSAMPLE]),
        )
        cases[case] = {"model": model, "options": options, "weights": weights, "size": size}
        print(
            f"{case:26s} {parameters[case]:>11,d} parameters, logits {logits.shape}"
            f" max|a| {np.abs(logits).max():.3g} mean|a| {np.abs(logits).mean():.3g}"
        )
    metadata = {
        "generated_by": "tools/deeplab_goldens.py",
        "versions": {
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "segmentation_models_pytorch": smp.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "num_classes": NUM_CLASSES,
        "subsample": SUBSAMPLE,
        "cases": cases,
        "parameters": parameters,
        "state_dicts": shapes,
        "fingerprints": fingerprints,
    }
    (OUT / "goldens.json").write_text(json.dumps(metadata, indent=1) + "\n")
    total = sum(path.stat().st_size for path in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
