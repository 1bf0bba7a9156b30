"""Input pipeline: random-access source -> shuffle -> joint augmentation -> batches (grain).

Determinism: example k of the infinite training stream is a pure function of
(seed, k): the shuffle is a seeded permutation per epoch and each example's
augmentation draws from a generator seeded by (seed, k). Global batch g holds
examples [g * B, (g + 1) * B), whatever the number of processes; process p
reads and augments only its contiguous chunk of every global batch. Resuming
at step s therefore sees exactly the batches an uninterrupted run would.

The training stream is therefore restored from one number, its position (the
index of the next example: `get_state()` gives {"position": k}), not from
grain's iterator state: a run resumed with another batch size or number of
workers continues at the same example, skipping and repeating none.

Worker processes (`num_workers` > 0) ignore SIGINT and SIGTERM (the trainer
handles them, then stops the workers) from the moment they start, and exit by
themselves when the trainer is gone, however it ended (a `kill -9` included).
"""

import contextlib
import dataclasses
import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing import resource_tracker

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
) -> "TrainStream":
    """The infinite stream of this process's training batches (dicts of numpy arrays).

    Each example is augmented, then padded as the model asks (`input_padding`).
    `batches(stream, state)` iterates it from a saved position.
    """
    if len(source) == 0:
        raise DataError("the training split is empty")
    local_batch_size(loader.global_batch_size, process_count)  # checks divisibility
    examples = (
        grain.MapDataset.source(source)
        .seed(seed)
        .shuffle()
        .repeat()  # reshuffles every epoch
        .random_map(
            functools.partial(
                _augment_example, augment_config=augment_config, input_padding=input_padding
            )
        )
    )
    return TrainStream(examples, loader, process_index, process_count)


@dataclasses.dataclass(frozen=True)
class TrainStream:
    """The training examples in stream order, batched from any example position.

    Example k is augmented with a generator drawn from (seed, k) by grain,
    whatever slice it is read through, so starting at position k gives the
    same batches as an iterator that has gone through k examples.
    """

    examples: grain.MapDataset  # infinite: shuffled, repeated, augmented
    loader: LoaderConfig
    process_index: int = 0
    process_count: int = 1

    def iterator(self, position: int = 0) -> "TrainIterator":
        """Batches of examples [position + g * B, position + (g + 1) * B), B the global batch
        size; this process reads its contiguous part of each."""
        local_batch = local_batch_size(self.loader.global_batch_size, self.process_count)
        dataset = (
            self.examples[position:].batch(
                local_batch, drop_remainder=True, batch_fn=_stack_training_examples
            )
        )[self.process_index :: self.process_count]
        return TrainIterator(iter(_to_iter(dataset, self.loader)), position, self.loader)

    def __iter__(self):
        return self.iterator()


class TrainIterator(Iterator[dict]):
    """Training batches and the stream position; `get_state()` is what a checkpoint keeps."""

    def __init__(self, batch_iterator, position: int, loader: LoaderConfig):
        self._batches, self.position, self._loader = batch_iterator, position, loader

    def __next__(self) -> dict:
        batch = next(self._batches)
        self.position += self._loader.global_batch_size
        return batch

    def get_state(self) -> dict:
        return {"position": self.position}


def _stack_training_examples(examples: Sequence[dict]) -> dict:
    shapes = sorted({e["mask"].shape for e in examples})
    if len(shapes) > 1:
        raise DataError(
            f"training images of different sizes {shapes} in one batch; set"
            " data.augment.crop_size=(H, W) so that every example has one size"
        )
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


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
) -> "Batches":
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


def _to_iter(dataset: grain.MapDataset, loader: LoaderConfig) -> "Batches":
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
            ),
            worker_init_fn=_start_worker,
        )
    return Batches(iter_dataset, shield_workers=loader.num_workers > 0)


# What a trainer handles itself (jaxseg.preemption) and its workers must survive.
_TRAINER_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclasses.dataclass(frozen=True)
class Batches:
    """A grain dataset to iterate; with worker processes, each pass starts them shielded.

    grain starts its workers (from threads it starts) while an iterator is created and
    serves its first batch. Both happen here with SIGINT and SIGTERM blocked in this thread,
    so those threads and the workers they spawn inherit the block until `_start_worker`
    ignores the signals: a worker takes seconds to start (it imports the trainer's modules),
    and one killed by an early Ctrl-C would fail the trainer before it could save. A signal
    that arrives meanwhile stays pending and reaches the trainer once the first batch is in.
    (CPython's multiprocessing resource tracker starts its process the same way, then
    unblocks both signals in the thread that started it: it is started first, here.)
    """

    dataset: grain.IterDataset
    shield_workers: bool = False

    def __iter__(self) -> Iterator[dict]:
        if not self.shield_workers:
            return iter(self.dataset)
        return _ShieldedStart(self.dataset)


class _ShieldedStart(Iterator[dict]):
    """A grain iterator created, and its first batch taken, with the trainer's signals
    blocked (see `Batches`); everything else is the grain iterator's own."""

    def __init__(self, dataset: grain.IterDataset):
        resource_tracker.ensure_running()
        with _trainer_signals_blocked():
            self._iterator = iter(dataset)
        self._started = False

    def __next__(self) -> dict:
        if self._started:
            return next(self._iterator)
        with _trainer_signals_blocked():
            batch = next(self._iterator)
        self._started = True
        return batch

    def __getattr__(self, name):  # get_state, set_state, close
        if name == "_iterator":  # not created (yet)
            raise AttributeError(name)
        return getattr(self._iterator, name)


@contextlib.contextmanager
def _trainer_signals_blocked():
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: nothing is inherited to block
        yield
        return
    blocked_before = signal.pthread_sigmask(signal.SIG_BLOCK, _TRAINER_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked_before)


def _start_worker(worker_index: int, worker_count: int) -> None:
    """Runs first in each grain worker process: signals are the trainer's to handle, and the
    worker ends when the trainer does."""
    del worker_index, worker_count
    # Ctrl-C reaches the whole process group; a worker that died of it would fail the
    # trainer's next batch before the trainer could save.
    for signum in _TRAINER_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked since the worker started (`Batches`)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _TRAINER_SIGNALS)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()


def _exit_with_parent(parent_pid: int, poll_seconds: float = 1.0) -> None:
    """Ends this process once `parent_pid` is no longer its parent (grain does not watch
    for it: after a kill -9 of the trainer its workers would run on, holding memory)."""
    while os.getppid() == parent_pid:
        time.sleep(poll_seconds)
    os._exit(0)


def batches(dataset, state: dict | None = None) -> Iterator[dict]:
    """An iterator over a `TrainStream` from a saved `state` ({"position": k}), or over
    evaluation `Batches`."""
    if isinstance(dataset, TrainStream):
        return dataset.iterator(0 if state is None else state["position"])
    iterator = iter(dataset)
    if state is not None:
        iterator.set_state(state)
    return iterator
