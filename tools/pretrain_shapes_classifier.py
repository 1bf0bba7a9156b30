"""Pretrains a ResNet-18 or VGG16 encoder as a classifier and saves it as torchvision weights.

    python tools/pretrain_shapes_classifier.py --output runs/pretrain/resnet18_shapes.safetensors

No ImageNet weights can be downloaded on the machines jaxseg is developed on, so this
builds a classification task that needs the same features a segmenter does: which of
the four shapes (disc, square, triangle, ring) a built-in shapes image shows (a
multi-label task, like naming the objects of a photograph; a shape counts when it
covers at least 1% of the image).
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
from jaxseg.run import build_run

_OUTPUT = flags.DEFINE_string("output", None, "The .safetensors file to write.", required=True)
_ENCODER = flags.DEFINE_enum(
    "encoder", "resnet18", list(pretrained.TORCHVISION_ENCODERS), "The encoder."
)
_STEPS = flags.DEFINE_integer("steps", 1500, "Training steps.")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Images per step.")
_SIZE = flags.DEFINE_integer("image_size", 64, "Side of the shapes images.")
_SEED = flags.DEFINE_integer("seed", 1, "Seed of the pretraining dataset and the model.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data directory (default: TFDS's).")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 4000, "Training images.")
_NUM_VALIDATION = flags.DEFINE_integer("num_validation", 500, "Validation images.")
SHAPE_CLASSES = 4  # disc, square, triangle, ring (class 0 is the background)
VISIBLE = 0.01  # a shape is present when it covers at least this fraction of the image


class Classifier(nn.Module):
    """An encoder, global average pooling of its deepest feature, a linear classifier."""

    encoder: str

    @nn.compact
    def __call__(self, x, train: bool = False):
        encoder = get_encoder(self.encoder, name="encoder")
        features = encoder(x, train)[f"stride{encoder.max_stride()}"]
        return nn.Dense(SHAPE_CLASSES, name="classifier")(features.mean(axis=(1, 2)))


def shapes_present(masks):
    """(N, 4) 0/1: which shapes cover at least VISIBLE of each (N, H, W) mask."""
    counts = jax.nn.one_hot(masks, 1 + SHAPE_CLASSES).sum(axis=(1, 2))  # ignore label: zeros
    return (counts[:, 1:] >= VISIBLE * masks.shape[1] * masks.shape[2]).astype(jnp.float32)


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
            labels = shapes_present(masks)
            loss = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
            return loss, (updates, jnp.mean((logits > 0) == (labels > 0)))

        (loss, (updates, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        changes, opt_state = tx.update(grads, opt_state, params)
        batch_stats = updates.get("batch_stats", batch_stats)
        return optax.apply_updates(params, changes), batch_stats, opt_state, loss, accuracy

    @jax.jit
    def predict(params, batch_stats, images):
        logits = model.apply(
            {"params": params, "batch_stats": batch_stats}, run.info.normalize(images)
        )
        return logits > 0

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
            print(f"step {step}: loss {loss:.4f}, batch label accuracy {float(accuracy):.3f},"
                  f" {rates[-1]:.1f} img/s", flush=True)  # fmt: skip

    validation = run.source("validation")
    correct, exact, present = 0, 0, np.zeros(SHAPE_CLASSES)
    for first in range(0, len(validation), 100):
        indices = range(first, min(first + 100, len(validation)))
        examples = [to_example(validation[i]) for i in indices]
        images = np.stack([e["image"] for e in examples])
        labels = shapes_present(jnp.asarray(np.stack([e["mask"] for e in examples]))) > 0
        right = predict(params, batch_stats, images) == labels
        correct += int(right.sum())
        exact += int(right.all(axis=-1).sum())
        present += np.asarray(labels).sum(axis=0)
    accuracy = correct / (len(validation) * SHAPE_CLASSES)
    # What answering each label's more frequent value always would score: the bar to beat.
    frequency = present / len(validation)
    majority = float(np.maximum(frequency, 1 - frequency).mean())
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
        "validation_accuracy": accuracy,  # per shape label
        "validation_exact_match": exact / len(validation),  # all four labels right
        "validation_majority_baseline": majority,
        "median_images_per_second": statistics.median(rates) if rates else None,
        "minutes": (time.perf_counter() - start) / 60,
        "sha256": pretrained.file_sha256(_OUTPUT.value),
    }
    with open(os.path.splitext(_OUTPUT.value)[0] + ".json", "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    app.run(main)
