"""Input pipeline: random-access source -> shuffle -> joint augmentation -> batches (grain).

Determinism: example k of the infinite training stream is a pure function of
(seed, k): the shuffle is a seeded permutation per epoch and each example's
augmentation draws from a generator seeded by (seed, k). Global batch g holds
examples [g * B, (g + 1) * B), whatever the number of processes; process p
reads and augments only its contiguous chunk of every global batch. Resuming
at step s therefore sees exactly the batches an uninterrupted run would.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence

import grain
import numpy as np
from absl import flags

from jaxseg.data.transforms import (
    AugmentConfig,
    augment,
    pad_for_model,
    pad_to_multiple,
    pad_to_size,
)
from jaxseg.errors import ConfigError, DataError

# A model's input contract (jaxseg.models.base.SegmentationModel.input_padding):
# (height, width) -> (image_pads, label_pads), or None when it needs no padding.
InputPadding = Callable[[int, int], tuple | None]


@dataclasses.dataclass(frozen=True)
class LoaderConfig:
    """How batches are read.

    Attributes:
      global_batch_size: examples per step over all processes.
      num_threads: reader threads per process.
      num_workers: worker processes (0 = augment in the main process's threads).
      prefetch: batches buffered per worker.
    """

    global_batch_size: int
    num_threads: int = 2
    num_workers: int = 0
    prefetch: int = 4


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    if global_batch_size % process_count:
        raise ConfigError(
            f"batch size {global_batch_size} is not divisible by the {process_count} processes"
        )
    return global_batch_size // process_count


def to_example(record: Mapping[str, np.ndarray]) -> dict:
    """Keeps image (H, W, 3) uint8, mask (H, W) and the optional weight of a source record."""
    mask = np.asarray(record["mask"])
    if mask.ndim == 3:
        mask = mask[..., 0]
    example = {"image": np.asarray(record["image"], np.uint8), "mask": mask.astype(np.int32)}
    if "weight" in record:
        example["weight"] = np.asarray(record["weight"], np.float32)
    return example


def _augment_example(record, rng, augment_config, input_padding):
    example = augment(to_example(record), rng, augment_config)
    return pad_for_model(example, input_padding, augment_config.ignore_label)


def train_dataset(
    source: Sequence,
    augment_config: AugmentConfig,
    loader: LoaderConfig,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    input_padding: InputPadding | None = None,
) -> grain.IterDataset:
    """The infinite stream of this process's training batches (dicts of numpy arrays).

    Each example is augmented, then padded as the model asks (`input_padding`).
    """
    if len(source) == 0:
        raise DataError("the training split is empty")
    local_batch = local_batch_size(loader.global_batch_size, process_count)
    dataset = (
        grain.MapDataset.source(source)
        .seed(seed)
        .shuffle()
        .repeat()  # reshuffles every epoch
        .random_map(
            functools.partial(
                _augment_example, augment_config=augment_config, input_padding=input_padding
            )
        )
        .batch(local_batch, drop_remainder=True)
    )[process_index::process_count]
    return _to_iter(dataset, loader)


def eval_dataset(
    source: Sequence,
    loader: LoaderConfig,
    ignore_label: int,
    multiple: int = 1,
    process_index: int = 0,
    process_count: int = 1,
    input_padding: InputPadding | None = None,
    limit: int = 0,
    pad_to: tuple[int, int] | None = None,
) -> grain.IterDataset:
    """One pass over `source` in order, in global batches.

    The last global batch is completed with blank examples whose mask is all
    `ignore_label`, so every process gets the same number of full batches and
    the blanks count in no metric. Images are padded (bottom/right, mask with
    `ignore_label`) to a multiple of `multiple`, or to `pad_to` (H, W) when the
    images differ in size, then as the model asks (`input_padding`). `limit` > 0
    evaluates only the first `limit` examples.
    """
    if len(source) == 0:
        raise DataError("the evaluation split is empty")
    global_batch = loader.global_batch_size
    local_batch = local_batch_size(global_batch, process_count)
    num_examples = min(len(source), limit) if limit > 0 else len(source)
    num_padded = -(-num_examples // global_batch) * global_batch
    first = to_example(source[0])

    def load(index):
        if index < num_examples:
            example = to_example(source[index])
        else:  # a blank: zeros, and a mask (hence the metrics) all ignored
            example = {key: np.zeros_like(value) for key, value in first.items()}
            example["mask"] = np.full_like(first["mask"], ignore_label)
        if pad_to:
            example = pad_to_size(example, *pad_to, ignore_label)
        example = pad_to_multiple(example, multiple, ignore_label)
        return pad_for_model(example, input_padding, ignore_label)

    dataset = (
        grain.MapDataset.range(num_padded)
        .map(load)
        .batch(local_batch, drop_remainder=True, batch_fn=_stack_same_size)
    )[process_index::process_count]
    return _to_iter(dataset, loader)


def _stack_same_size(examples: Sequence[dict]) -> dict:
    shapes = sorted({e["mask"].shape for e in examples})
    if len(shapes) > 1:
        raise ConfigError(
            f"evaluation images of different sizes {shapes} in one batch; set"
            f" data.eval_pad_to=(H, W) to the largest size, or data.eval_batch_size to the"
            " number of devices"
        )
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def _to_iter(dataset: grain.MapDataset, loader: LoaderConfig) -> grain.IterDataset:
    iter_dataset = dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=loader.num_threads, prefetch_buffer_size=loader.prefetch)
    )
    if loader.num_workers > 0:
        if not flags.FLAGS.is_parsed():
            raise ConfigError(
                "data.num_workers > 0 starts grain worker processes, which read absl flags, but"
                " the flags are not parsed: run under absl.app.run (as train.py does) or call"
                " absl.flags.FLAGS.mark_as_parsed() first"
            )
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=loader.num_workers, per_worker_buffer_size=loader.prefetch
            )
        )
    return iter_dataset


def batches(iter_dataset: grain.IterDataset, state: dict | None = None) -> Iterator[dict]:
    """An iterator over `iter_dataset`, restored to `state` (from `get_state()`) if given."""
    iterator = iter(iter_dataset)
    if state is not None:
        iterator.set_state(state)
    return iterator
