"""Pretrains a ResNet-18 or VGG16 encoder as a classifier and saves it as torchvision weights.

    python tools/pretrain_shapes_classifier.py --output runs/pretrain/resnet18_shapes.safetensors

No ImageNet weights can be downloaded on the machines jaxseg is developed on, so this
builds a classification task that needs the same features a segmenter does: which
shape (disc, square, triangle, ring) covers the most pixels of a built-in shapes image.
It trains on a shapes dataset of its own seed (different images from those the
segmentation configs use), with the configs' flip/scale augmentation, an encoder plus
global average pooling and a linear classifier, and writes the encoder alone in
torchvision's layout (jaxseg.models.pretrained), so a run starts from it exactly as
from real ImageNet weights: --config.init.encoder_weights=<file>. Prints and saves
(next to the file, .json) the validation accuracy.
"""

import json
import os
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags, logging

from jaxseg.config import base_config, use_shapes_data
from jaxseg.data.pipeline import to_example
from jaxseg.models import pretrained
from jaxseg.models.encoders import get_encoder
from jaxseg.train.setup import build_run

_OUTPUT = flags.DEFINE_string("output", None, "The .safetensors file to write.", required=True)
_ENCODER = flags.DEFINE_enum("encoder", "resnet18", list(pretrained.ENCODERS), "The encoder.")
_STEPS = flags.DEFINE_integer("steps", 1500, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per step.")
_SIZE = flags.DEFINE_integer("image_size", 64, "Side of the shapes images.")
_SEED = flags.DEFINE_integer("seed", 1, "Seed of the pretraining dataset and the model.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data directory (default: TFDS's).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 4000, "Training images.")
_NUM_VALIDATION = flags.DEFINE_integer("num_validation", 500, "Validation images.")
SHAPE_CLASSES = 4  # disc, square, triangle, ring (class 0, background, is never dominant)


class Classifier(nn.Module):
    """An encoder, global average pooling of its deepest feature, a linear classifier."""

    encoder: str

    @nn.compact
    def __call__(self, x, train: bool = False):
        encoder = get_encoder(self.encoder, name="encoder")
        features = encoder(x, train)[f"stride{encoder.max_stride()}"]
        return nn.Dense(SHAPE_CLASSES, name="classifier")(features.mean(axis=(1, 2)))


def dominant_shape(masks):
    """(N,) index 0..3 of the shape class with the most pixels of each (N, H, W) mask."""
    counts = jax.nn.one_hot(masks, 1 + SHAPE_CLASSES).sum(axis=(1, 2))  # ignore label: zeros
    return jnp.argmax(counts[:, 1:], axis=-1)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    config = base_config()
    use_shapes_data(
        config,
        image_size=_SIZE.value,
        seed=_SEED.value,
        data_dir=_DATA_DIR.value,
        num_train=_NUM_TRAIN.value,
        num_validation=_NUM_VALIDATION.value,
    )
    config.data.batch_size = _BATCH.value
    config.train.num_devices = 1
    config.seed = _SEED.value
    run = build_run(config)  # the shapes data, its augmentation and normalisation
    model = Classifier(_ENCODER.value)
    rng = jax.random.key(_SEED.value, impl="rbg")
    variables = jax.jit(model.init)(rng, jnp.zeros((1, _SIZE.value, _SIZE.value, 3)))
    warmup = min(100, _STEPS.value // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, warmup, max(_STEPS.value, warmup + 1))
    tx = optax.adamw(schedule, weight_decay=1e-4)
    params, batch_stats, opt_state = variables["params"], variables.get("batch_stats", {}), None
    opt_state = tx.init(params)
    dropout = jax.random.key(_SEED.value)

    @jax.jit
    def train_step(params, batch_stats, opt_state, images, masks, step):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                run.info.normalize(images),
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.fold_in(dropout, step)},
            )
            labels = dominant_shape(masks)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, (updates, jnp.mean(jnp.argmax(logits, -1) == labels))

        (loss, (updates, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        changes, opt_state = tx.update(grads, opt_state, params)
        batch_stats = updates.get("batch_stats", batch_stats)
        return optax.apply_updates(params, changes), batch_stats, opt_state, loss, accuracy

    @jax.jit
    def predict(params, batch_stats, images):
        logits = model.apply(
            {"params": params, "batch_stats": batch_stats}, run.info.normalize(images)
        )
        return jnp.argmax(logits, -1)

    batches = run.train_batches()
    start, rates, last = time.perf_counter(), [], time.perf_counter()
    for step in range(1, _STEPS.value + 1):
        batch = next(batches)
        params, batch_stats, opt_state, loss, accuracy = train_step(
            params, batch_stats, opt_state, batch["image"], batch["mask"], step
        )
        if step % 50 == 0:
            loss = float(loss)  # waits for the device
            rates.append(50 * _BATCH.value / (time.perf_counter() - last))
            last = time.perf_counter()
            print(f"step {step}: loss {loss:.4f}, batch accuracy {float(accuracy):.3f},"
                  f" {rates[-1]:.1f} img/s", flush=True)  # fmt: skip

    validation = run.source("validation")
    correct = 0
    for first in range(0, len(validation), 100):
        examples = [
            to_example(validation[i]) for i in range(first, min(first + 100, len(validation)))
        ]
        images = np.stack([e["image"] for e in examples])
        labels = dominant_shape(jnp.asarray(np.stack([e["mask"] for e in examples])))
        correct += int((predict(params, batch_stats, images) == labels).sum())
    accuracy = correct / len(validation)
    encoder = {"params": params["encoder"], "batch_stats": batch_stats.get("encoder", {})}
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    pretrained.save_safetensors(
        _OUTPUT.value, pretrained.torchvision_state_dict(_ENCODER.value, encoder)
    )
    record = {
        "encoder": _ENCODER.value,
        "steps": _STEPS.value,
        "batch_size": _BATCH.value,
        "image_size": _SIZE.value,
        "dataset_seed": _SEED.value,
        "validation_accuracy": accuracy,
        "median_images_per_second": statistics.median(rates) if rates else None,
        "minutes": (time.perf_counter() - start) / 60,
        "sha256": pretrained.file_sha256(_OUTPUT.value),
    }
    with open(os.path.splitext(_OUTPUT.value)[0] + ".json", "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    app.run(main)
