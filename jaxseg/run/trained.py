"""workdir -> TrainedRun: a trained model from its checkpoint alone (each checkpoint carries
its config and dataset info), for evaluation, prediction and export."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxseg.config import config_from_dict, import_modules
from jaxseg.data import load_dataset
from jaxseg.data.info import SegmentationInfo
from jaxseg.errors import RunError
from jaxseg.inference import network
from jaxseg.models import SegmentationModel
from jaxseg.models.platforms import xla_options
from jaxseg.run.build import CHECKPOINTS, build_model
from jaxseg.run.built import init_input_shape
from jaxseg.run.checkpoint import Checkpointer


@dataclasses.dataclass
class TrainedRun:
    """A trained model loaded from a run's checkpoint (`load_run`)."""

    workdir: str
    step: int
    config: ml_collections.ConfigDict
    info: SegmentationInfo
    model: SegmentationModel
    variables: dict  # {"params", "batch_stats"}

    @functools.cached_property
    def _probabilities(self):
        return jax.jit(
            functools.partial(predict_probabilities, self.model, self.info),
            compiler_options=xla_options(),
        )

    def predict(self, images) -> np.ndarray:
        """Class probabilities (N, H, W, C) float32 of uint8 (N, H, W, 3) images, at the
        input size; normalisation and the model's input padding happen inside."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"predict takes uint8 (N, H, W, 3) images; got {images.dtype} {images.shape}"
            )
        return np.asarray(self._probabilities(self.variables, images))


def predict_probabilities(model: SegmentationModel, info: SegmentationInfo, variables, images):
    """Softmax of the model on uint8 images of any size: padded as the model needs (mirrored),
    predicted, cropped back to the input size. Traceable (jit per input shape)."""
    height, width = images.shape[1:3]
    pads = model.input_padding(height, width)
    if pads:
        image_pads, crop = pads
    else:
        multiple = model.input_multiple()
        image_pads = ((0, -height % multiple), (0, -width % multiple))
        crop = ((0, 0), (0, 0))
    mode = "reflect" if min(height, width) > max(p for side in image_pads for p in side) else "edge"
    padded = jnp.pad(images, ((0, 0), *image_pads, (0, 0)), mode=mode)
    probabilities = network.probabilities(model, info, variables, padded)
    top, left = crop[0][0], crop[1][0]
    return probabilities[:, top : top + height, left : left + width]


def load_run(workdir: str, step: int | None = None) -> TrainedRun:
    """Loads the model variables of a run's checkpoint (the latest, or `step`).

    Needs neither the dataset nor a config file: each checkpoint carries the
    config and dataset info it was trained with. Opens the checkpoints read-only
    and changes nothing in `workdir`.

    Raises:
      RunError: `workdir` is not a run.
      CheckpointError: no checkpoint, no checkpoint at `step` (the error lists the
        saved steps), or a checkpoint whose parameters do not fit its config.
    """
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        raise RunError(f"{workdir}: no such run directory")
    if not os.path.isdir(os.path.join(workdir, CHECKPOINTS)):
        raise RunError(
            f"{workdir} is not a jaxseg run: it has no {CHECKPOINTS}/ directory"
            " (train.py --workdir creates one)"
        )
    checkpointer = Checkpointer(os.path.join(workdir, CHECKPOINTS), read_only=True)
    try:
        step = checkpointer.check_step(step)
        config, info = _saved_config_and_info(workdir, checkpointer.meta(step))
        import_modules(config)  # the run's own models, losses, ... (config.imports)
        model = build_model(config.model, info.num_classes)
        abstract = jax.eval_shape(
            model.init, jax.random.key(0, impl="rbg"), jnp.zeros((1, *init_input_shape(model)))
        )
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = {
            key: jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                abstract.get(key, {}),
            )
            for key in ("params", "batch_stats")
        }
        variables = checkpointer.restore_variables(
            step, abstract, f"The model was built from the config saved with step {step}."
        )
    finally:
        checkpointer.close()
    return TrainedRun(workdir, step, config, info, model, variables)


def _saved_config_and_info(workdir: str, meta: dict | None):
    """(config, info) from a checkpoint's record; older checkpoints: config.json + the dataset."""
    if meta is not None:
        return config_from_dict(meta["config"]), SegmentationInfo.from_dict(meta["info"])
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise RunError(f"{workdir}: its checkpoints carry no config, and there is no config.json")
    with open(path) as f:
        fields = json.load(f)
    fields.pop("warnings", None)  # what the run was warned of, not a config key
    config = config_from_dict(fields)
    _, info = load_dataset(config.data.name, **config.data.options)
    return config, info
