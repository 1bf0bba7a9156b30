"""Writes tests/fixtures/segformer/: real transformers SegFormer logits for the parity test.

tests/test_segformer.py loads the same random weights into jaxseg's SegFormer through
jaxseg.models.pretrained and compares its stride-4 logits and stage features with these.
The weights come from tests/torchvision_random.py (numpy only, seeded, by tensor name), so
only activations are committed. torch is not a jaxseg dependency: run this in a separate
venv (written with torch 2.14.1, transformers 5.25.0, numpy 2.4.6, on CPU; the versions
are recorded in goldens.json):

    /work/torchvenv/bin/pip install torch transformers safetensors numpy
    /work/torchvenv/bin/python tools/segformer_goldens.py

Per case the random weights are written as a checkpoint directory (config.json +
model.safetensors, named as `save_pretrained` names them, which is how the Hub's
nvidia/segformer-* files name them) and read back with `from_pretrained`, so the goldens
also pin transformers' own loading of those names. {case}.npz holds the uint8 input image
(NHWC), the NHWC logits at stride 4 ("logits") and each stage's NHWC map at a spread of
channels ("stage{i}", "stage{i}.channels"); goldens.json the cases, the checkpoint's tensor
names and shapes, fingerprints of the random weights, parameter counts, and the names the
model's own `state_dict()` gives the same tensors (transformers >= 5 renames them).
"""

import json
import pathlib
import sys
import tempfile

import numpy as np
import safetensors.numpy
import torch
import transformers

REPO = pathlib.Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "segformer"
sys.path.insert(0, str(REPO / "tests"))

from torchvision_random import random_torchvision_state_dict, weights_fingerprint  # noqa: E402

SEED = 0
NUM_LABELS = 5
MAX_CHANNELS = 16
# jaxseg/data/info.py: ImageNet mean/std on the 0-255 scale, applied in float32.
IMAGENET_MEAN = np.asarray((0.485 * 255, 0.456 * 255, 0.406 * 255), np.float32)
IMAGENET_STD = np.asarray((0.229 * 255, 0.224 * 255, 0.225 * 255), np.float32)

# SegformerConfig of nvidia/mit-b0 and nvidia/mit-b2 (the rest are SegformerConfig's defaults).
CONFIGS = {
    "mit_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "mit_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}
# case: encoder, input (height, width); 64x96 (not square) so that a swapped height/width shows.
CASES = {"segformer_b0": ("mit_b0", (64, 96)), "segformer_b2": ("mit_b2", (64, 96))}


def spread_channels(channels: int) -> np.ndarray:
    return np.unique(np.linspace(0, channels - 1, min(channels, MAX_CHANNELS)).round()).astype(
        np.int32
    )


def checkpoint_names(config) -> dict[str, np.ndarray]:
    """The tensors `save_pretrained` writes for a fresh model: the checkpoint's names."""
    with tempfile.TemporaryDirectory() as directory:
        transformers.SegformerForSemanticSegmentation(config).save_pretrained(directory)
        return safetensors.numpy.load_file(f"{directory}/model.safetensors")


def load_random(config, saved: dict[str, np.ndarray], state_dict: dict[str, np.ndarray]):
    """The model read by `from_pretrained` from a checkpoint holding `state_dict`."""
    with tempfile.TemporaryDirectory() as directory:
        config.save_pretrained(directory)
        counters = {n: v for n, v in saved.items() if n.endswith("num_batches_tracked")}
        safetensors.numpy.save_file(
            state_dict | counters, f"{directory}/model.safetensors", metadata={"format": "pt"}
        )
        model, info = transformers.SegformerForSemanticSegmentation.from_pretrained(
            directory, output_loading_info=True
        )
    problems = {kind: names for kind, names in info.items() if names}
    if problems:
        raise RuntimeError(f"from_pretrained did not take every tensor: {problems}")
    return model.eval()


def module_names(model, state_dict: dict[str, np.ndarray]) -> dict[str, str]:
    """{name in `model.state_dict()`: checkpoint name}, matched by value (every random
    tensor differs): how this transformers version renames the checkpoint's tensors."""
    by_value = {value.tobytes(): name for name, value in state_dict.items()}
    return {
        name: by_value[tensor.numpy().tobytes()]
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }


def parameter_count(config) -> int:
    model = transformers.SegformerForSemanticSegmentation(config)
    return sum(p.numel() for p in model.parameters())


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    cases_json, shapes, fingerprints, counts, renamed = {}, {}, {}, {}, {}
    for index, (case, (encoder, size)) in enumerate(CASES.items()):
        config = transformers.SegformerConfig(**CONFIGS[encoder], num_labels=NUM_LABELS)
        saved = checkpoint_names(config)
        shapes[encoder] = {
            name: list(value.shape)
            for name, value in saved.items()
            if not name.endswith("num_batches_tracked")
        }
        state_dict = random_torchvision_state_dict(shapes[encoder], SEED)
        fingerprints[encoder] = weights_fingerprint(state_dict).tolist()
        model = load_random(config, saved, state_dict)
        renamed[encoder] = module_names(model, state_dict)
        image = np.random.default_rng([SEED, index]).integers(0, 256, (1, *size, 3), np.uint8)
        normalised = (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
        x = torch.from_numpy(normalised).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            output = model(x, output_hidden_states=True)
        arrays = {"image": image, "logits": output.logits.permute(0, 2, 3, 1).numpy()}
        for stage, hidden in enumerate(output.hidden_states, start=1):
            activation = hidden.permute(0, 2, 3, 1).numpy()
            channels = spread_channels(activation.shape[-1])
            arrays[f"stage{stage}"] = np.ascontiguousarray(activation[..., channels])
            arrays[f"stage{stage}.channels"] = channels
        for name, value in arrays.items():
            if not name.endswith((".channels", "image")):
                print(f"{case} {name:7s} {value.shape!s:18s} max|a| {np.abs(value).max():.3g}")
        np.savez(OUT / f"{case}.npz", **arrays)
        cases_json[case] = {"encoder": encoder, "num_labels": NUM_LABELS, "size": list(size)}
        counts[encoder] = {
            str(labels): parameter_count(
                transformers.SegformerConfig(**CONFIGS[encoder], num_labels=labels)
            )
            for labels in (NUM_LABELS, 150)
        }
    metadata = {
        "generated_by": "tools/segformer_goldens.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "configs": CONFIGS,
        "cases": cases_json,
        "state_dicts": shapes,
        "fingerprints": fingerprints,
        "parameter_counts": counts,
        "module_names": renamed,
    }
    (OUT / "goldens.json").write_text(json.dumps(metadata, indent=1) + "\n")
    total = sum(path.stat().st_size for path in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
