"""Seeded random torchvision state dicts, numpy only (shared by the parity test and the goldens).

tools/torchvision_goldens.py runs this in a torch venv without jax to fill the
real torchvision models; tests/test_pretrained.py recreates the same tensors
without torch. Each tensor has its own generator seeded by (seed, crc32 of its
name), so a tensor's values do not depend on which other tensors are asked for.
"""

import re
import zlib

import numpy as np


def random_torchvision_state_dict(
    shapes: dict[str, tuple[int, ...]], seed: int
) -> dict[str, np.ndarray]:
    """float32 tensors for torchvision names, scaled so that activations neither explode nor vanish.

    Conv/linear weights are He-normal (std sqrt(2 / fan_in)), biases and
    running means N(0, 0.1^2), batch-norm weights and running variances
    uniform in [0.5, 1.5]. The last batch norm of each ResNet residual branch
    (the highest "bn{k}" of a block) has its weight scaled by 0.2: running
    statistics that do not match the activations do not normalise them, so
    undamped branches double the variance at every block (1e5 by layer4).

    Args:
      shapes: {torchvision name: shape}, without `num_batches_tracked`.
      seed: the seed every tensor's generator starts from.

    Returns:
      {torchvision name: float32 array of that shape}.
    """
    last_bn = _last_residual_batch_norms(shapes)
    state_dict = {}
    for name, shape in shapes.items():
        shape = tuple(shape)
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        if name.endswith("running_var") or (name.endswith(".weight") and len(shape) == 1):
            value = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            if name.rsplit(".", 1)[0] in last_bn:
                value *= np.float32(0.2)
        elif name.endswith(".weight"):
            fan_in = int(np.prod(shape[1:]))
            value = rng.standard_normal(shape, dtype=np.float32)
            value *= np.float32(np.sqrt(2.0 / fan_in))
        elif name.endswith((".bias", "running_mean")):
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
        else:
            raise ValueError(f"no rule to randomise torchvision tensor {name!r} of shape {shape}")
        state_dict[name] = value
    return state_dict


def _last_residual_batch_norms(shapes) -> set[str]:
    """ "layer2.0.bn3"-style module names: the highest bn{k} of each ResNet block."""
    last = {}
    for name in shapes:
        # Optionally prefixed: a whole model's backbone ("backbone.", smp's "encoder.").
        match = re.fullmatch(r"((?:\w+\.)?layer\d+\.\d+)\.bn(\d+)\.weight", name)
        if match:
            block, index = match.group(1), int(match.group(2))
            last[block] = max(last.get(block, 0), index)
    return {f"{block}.bn{index}" for block, index in last.items()}


def weights_fingerprint(state_dict: dict[str, np.ndarray]) -> np.ndarray:
    """float64 sums of every tensor in name order: tells a changed numpy generator from a bug."""
    return np.array([state_dict[name].sum(dtype=np.float64) for name in sorted(state_dict)])
