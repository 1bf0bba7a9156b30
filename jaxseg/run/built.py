"""The Run that `build_run` (build.py) makes: what a config needs to train or evaluate, with
its data streams and its fresh train state.
"""

import dataclasses
import functools
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
import optax

from jaxseg.data.info import SegmentationInfo
from jaxseg.data.pipeline import LoaderConfig, batches, eval_dataset, train_dataset
from jaxseg.data.transforms import AugmentConfig
from jaxseg.errors import DataError
from jaxseg.models import SegmentationModel
from jaxseg.run import parallel
from jaxseg.run.state import TrainState, create_train_state
from jaxseg.run.step import variables_of
from jaxseg.run.task import Task


def init_input_shape(model: SegmentationModel, side: int = 64) -> tuple[int, int, int]:
    """An (H, W, 3) input the model takes, to initialise it. Parameter shapes and initial
    values do not depend on the input size of these fully convolutional models."""
    multiple = model.input_multiple()
    side = -(-side // multiple) * multiple
    pads = model.input_padding(side, side)
    if pads:
        side += sum(pads[0][0])
    return (side, side, 3)


def run_record(config, info: SegmentationInfo) -> dict:
    """What every checkpoint carries so that it can be loaded on its own."""
    return {"config": config.to_dict(), "info": info.to_dict()}


@dataclasses.dataclass
class Run:
    """Everything a config needs to train or evaluate, built once by `build_run`.

    The compiled steps: `train_step(state, batch, rng) -> (state, metric sums)` and
    `eval_step(variables, batch) -> metric sums`, batches placed by `layout.put_batch`.
    """

    config: ml_collections.ConfigDict
    sources: dict[str, Sequence]
    info: SegmentationInfo
    model: SegmentationModel
    layout: parallel.MeshParallel | parallel.PmapParallel
    optimizer: optax.GradientTransformation
    task: Task
    train_step: object
    eval_step: object

    @property
    def shard(self) -> dict:
        return dict(process_index=jax.process_index(), process_count=jax.process_count())

    def source(self, split: str, key: str = "split"):
        """The dataset split; DataError listing the splits there are."""
        if split not in self.sources:
            raise DataError(
                f"{key}={split!r} is not a split of dataset {self.config.data.name!r};"
                f" its splits: {sorted(self.sources)}"
            )
        return self.sources[split]

    def _init(self, rng):
        return create_train_state(rng, self.model, self.optimizer, init_input_shape(self.model))

    @functools.cached_property
    def abstract_state(self) -> TrainState:
        # Init draws one random tensor per layer: XLA on CPU compiles that in a
        # fraction of the time with RBG keys than with threefry.
        return jax.eval_shape(self._init, jax.random.key(self.config.seed, impl="rbg"))

    def init_state(self, initialisation=None) -> TrainState:
        """A fresh state, placed; with an `Initialisation` (jaxseg/run/initialise.py) its
        variables copied in. Returns the state, or (state, report) with an initialisation."""
        rng = jax.random.key(self.config.seed, impl="rbg")
        if initialisation is None:
            return self.layout.init_state(self._init, rng)
        state = jax.jit(self._init)(rng)
        variables, report = initialisation.apply(variables_of(state))
        state = state.replace(
            params=variables["params"],
            batch_stats=variables["batch_stats"],
            opt_state=self.optimizer.init(variables["params"]),
        )
        return self.layout.place(state), report

    @property
    def step_rng(self):
        """Dropout's base key (threefry: its bits do not depend on how the batch is sharded)."""
        return jax.random.key(self.config.seed)

    def loader(self, batch_size: int) -> LoaderConfig:
        data = self.config.data
        return LoaderConfig(batch_size, data.num_threads, data.num_workers, data.prefetch)

    def augment_config(self) -> AugmentConfig:
        options = dict(self.config.data.augment)
        options.update(
            crop_size=tuple(options["crop_size"]), scale_range=tuple(options["scale_range"])
        )
        return AugmentConfig(**options, ignore_label=self.info.ignore_label)

    def train_batches(self, data_state: dict | None = None):
        """The training batch iterator, restored to `data_state` (from a checkpoint) if given."""
        source = self.source(self.config.data.train_split, "data.train_split")
        augment, loader = self.augment_config(), self.loader(self.config.data.batch_size)
        dataset = train_dataset(
            source,
            augment,
            loader,
            self.config.seed,
            input_padding=self.model.input_padding,
            **self.shard,
        )
        return batches(dataset, data_state)

    def eval_batches(self, split: str):
        """One pass over `split` in global batches, padded as the data and the model need."""
        data, source = self.config.data, self.source(split)
        return eval_dataset(
            source,
            self.loader(data.eval_batch_size),
            self.info.ignore_label,
            int(np.lcm(data.eval_pad_multiple, self.model.input_multiple())),
            input_padding=self.model.input_padding,
            limit=data.eval_examples,
            pad_to=tuple(data.eval_pad_to) or None,
            **self.shard,
        )

    def record(self) -> dict:
        return run_record(self.config, self.info)
