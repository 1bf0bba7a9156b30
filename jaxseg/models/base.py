"""The two contracts models are built on.

Encoders. An encoder maps (N, H, W, C) images to a dict of feature maps and
declares each feature's stride and channels once, in forward order, without
running (`feature_specs`). The dict also holds "stride{s}", the deepest
feature at 1/s resolution, which is what a decoder consumes by stride.
`Encoder.require` is the one place that checks the features a decoder asks
for.

Models. A segmentation model states what input it takes, so that the input
pipeline, evaluation and tiled inference ask the model instead of testing
for a class: `input_multiple` (input sides must be multiples of it),
`input_padding` (how to pad an image so that the output covers it, for
models whose output is smaller than their input: the original U-Net),
`tile_period` (shifting the input by a multiple of it shifts the prediction
by as much: tiles on that grid predict what the whole image would),
`position_dependent` (the prediction at a pixel depends on where the pixel
lies in the input, so the model cannot be applied tile by tile) and
`global_context` (every pixel's prediction depends on the whole input, so
padding or tiling changes it everywhere).

Every model also takes `dtype` and `remat` (keyword-only fields of the base class, so every
model config has them). `dtype` is the compute type: the model casts its input to it, and
every layer computes in the type of its input (`dtype=x.dtype`), while parameters, batch
norm statistics and the scores the model returns are float32 (softmax, loss and metrics
follow in float32). `remat`: jaxseg/models/remat.py.
"""

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from jaxseg.errors import ConfigError, ModelInputError
from jaxseg.models.layers import check_divisible
from jaxseg.models.remat import check_remat
from jaxseg.models.upsample import resize

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

Pads = tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))


class FeatureSpec(NamedTuple):
    stride: int
    channels: int


class CaffeAlignment(NamedTuple):
    """An encoder's Caffe form: the options that give it (padded first conv, ceil-mode
    pooling, ...) and the crop offsets Caffe computed for the maps FCN fuses: skip
    features by name, the final upsampled map by the stride it is upsampled from."""

    options: dict
    skip_offsets: dict
    final_offsets: dict


class Encoder(nn.Module):
    """Base class of encoders; subclasses implement `feature_specs` and
    `__call__(x, train, frozen_bn=False, remat="none")` (`frozen_bn`: batch norm uses and
    keeps its running statistics even in training, as when fine-tuning with small batches;
    `remat`: each stage checkpointed, jaxseg/models/remat.py). They compute in the dtype of
    `x`."""

    def feature_specs(self) -> dict[str, FeatureSpec]:
        """{paper name: (stride, channels)} of every feature, in forward order."""
        raise NotImplementedError

    def _aliases(self) -> dict[str, str]:
        """{"stride{s}": the deepest feature at stride s}."""
        return {f"stride{spec.stride}": name for name, spec in self.feature_specs().items()}

    def feature_strides(self) -> dict[str, int]:
        specs = self.feature_specs()
        strides = {name: spec.stride for name, spec in specs.items()}
        return strides | {alias: specs[name].stride for alias, name in self._aliases().items()}

    def feature_channels(self) -> dict[str, int]:
        specs = self.feature_specs()
        channels = {name: spec.channels for name, spec in specs.items()}
        return channels | {alias: specs[name].channels for alias, name in self._aliases().items()}

    def strides(self) -> list[int]:
        """The distinct strides of the features, finest first."""
        return sorted({spec.stride for spec in self.feature_specs().values()})

    def max_stride(self) -> int:
        return self.strides()[-1]

    def feature_at(self, stride: int, which: str = "deepest") -> str:
        """The first or deepest feature at `stride`, by its unambiguous name.

        A feature alone at its stride is named "stride{s}"; where several share
        a stride (VGG16's pool4 and conv5_3), by its paper name.
        """
        names = [n for n, spec in self.feature_specs().items() if spec.stride == stride]
        if not names:
            raise ValueError(f"{type(self).__name__} has no feature at stride {stride}")
        if len(names) == 1:
            return f"stride{stride}"
        return names[0] if which == "first" else names[-1]

    def require(self, names, owner: str) -> None:
        """Raises ValueError if any of `names` is not a feature of this encoder."""
        strides = self.feature_strides()
        missing = [n for n in names if n not in strides]
        if missing:
            raise ValueError(
                f"{owner}: encoder {type(self).__name__} has no feature(s) {missing};"
                f" it has {sorted(strides)}"
            )

    def caffe_alignment(self) -> "CaffeAlignment | None":
        """How this encoder reproduces a reference Caffe net (FCN's alignment="caffe"), or
        None when it has no Caffe form."""
        return None

    def with_aliases(self, features: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
        """`features` (by paper name) plus the "stride{s}" aliases; ends every `__call__`."""
        return features | {alias: features[name] for alias, name in self._aliases().items()}


class SegmentationModel(nn.Module):
    """Base class of models: encoder -> decoder -> head, with the wiring written once.

    `__call__` checks the input (an NHWC float batch of a size the model takes), builds the
    encoder by registered name (`encoder`, `encoder_options` and what the model itself sets,
    `model_encoder_options`), casts to the compute dtype, runs the encoder, the model's
    `decode` and `head`, resizes the scores to the output size when the decoder stopped
    short of it, and returns float32 scores. A model writes `decode` (and `head` when its
    classifier is not a 1x1 conv) and declares its input needs; see `UNet` for the smallest.

    Input convention: `model.apply` takes float images normalised as the dataset's
    `SegmentationInfo.normalize` does (integer images are refused); `TrainedRun.predict`
    and the prediction tools take uint8 images and normalise them.

    Subclasses declare `num_classes`, `encoder`, `encoder_options` and `encoder_frozen_bn`.

    Attributes:
      dtype: compute type, "float32", "bfloat16" or "float16" (float16 trains with dynamic
        loss scaling: jaxseg/run/loss_scale.py); parameters stay float32.
      remat: "none", "blocks" or "convs" (jaxseg/models/remat.py).
    """

    dtype: str = dataclasses.field(default="float32", kw_only=True)
    remat: str = dataclasses.field(default="none", kw_only=True)

    def __post_init__(self):
        # Checked when the model is built, before anything is traced.
        if self.dtype not in COMPUTE_DTYPES:
            raise ConfigError(
                f"model.dtype={self.dtype!r} is not allowed; allowed: {tuple(COMPUTE_DTYPES)}"
            )
        check_remat(self.remat)
        num_classes = getattr(self, "num_classes", 1)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(
                f"{type(self).__name__}: num_classes={num_classes!r} is not allowed; it must be"
                " an integer >= 1 (the number of classes the model scores)"
            )
        super().__post_init__()
        if self.parent is None:  # built as a top-level model (apply's clones have a scope)
            self.check_options()
            if "encoder" in self.__dataclass_fields__:  # a model may write its own __call__
                self.required_features(self.build_encoder(detached=True))

    # What a model writes.

    def check_options(self) -> None:
        """Raises ConfigError for an option value the model does not allow."""

    def model_encoder_options(self) -> dict:
        """Encoder options the model sets from its own fields (U-Net's "unet" encoder: its
        width and depth); they are not `encoder_options` keys."""
        return {}

    def required_features(self, encoder: "Encoder") -> tuple[str, ...]:
        """The encoder features `decode` consumes, checked against the encoder."""
        return ()

    def decode(self, features: dict, encoder: "Encoder", input_size, train: bool) -> jnp.ndarray:
        """The decoder: encoder features (and the input's (height, width)) -> what `head`
        classifies."""
        raise NotImplementedError

    def head(self, x: jnp.ndarray) -> jnp.ndarray:
        """Per-pixel class scores of the decoder's output: a 1x1 conv ("classifier")."""
        return nn.Conv(self.num_classes, (1, 1), dtype=x.dtype, name="classifier")(x)

    def score_resize_method(self) -> str:
        """How scores coarser than the output are resized to it (`upsample.resize`)."""
        return "bilinear"

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """The size of the scores for an input of (height, width): the input's, except for
        models with `input_padding`."""
        return height, width

    def check_size(self, height: int, width: int) -> None:
        """Raises ModelInputError for an input size the model cannot take."""
        check_divisible(height, width, self.input_multiple(), type(self).__name__)

    # The wiring, written once.

    def build_encoder(self, detached: bool = False) -> "Encoder":
        """The encoder by registered name: the model's submodule "encoder", or, `detached`,
        a free-standing copy whose declared features can be read outside `apply`."""
        from jaxseg.models.encoders import ENCODERS, build_encoder
        from jaxseg.registry import option_parameters

        options = dict(self.encoder_options or {})
        supplied = self.model_encoder_options()
        defaults = option_parameters(ENCODERS.get(self.encoder))
        # A value equal to the encoder's default is what configs saved before the model set
        # the option held: not a clash.
        clash = sorted(
            k
            for k in set(options) & set(supplied)
            if options[k] != supplied[k] and options[k] != defaults[k].default
        )
        if clash:
            raise ConfigError(
                f"{type(self).__name__}: encoder_options {clash} are set by the model's own"
                f" options for encoder {self.encoder!r}; set those instead"
            )
        return build_encoder(self.encoder, options | supplied, detached=detached)

    def check_input(self, x) -> tuple[int, int]:
        """(height, width) of an NHWC float batch; ModelInputError for anything else."""
        name = type(self).__name__
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) != 4:
            hint = " (one image? add a batch axis: x[None])" if len(shape) == 3 else ""
            raise ModelInputError(
                f"{name} takes NHWC batches (N, H, W, C); got an array of shape {shape}{hint}"
            )
        if shape[1] <= 4 and shape[3] > 4:
            raise ModelInputError(
                f"{name} takes NHWC batches (N, H, W, C); shape {shape} looks channel-first"
                " (NCHW): transpose it with x.transpose(0, 2, 3, 1)"
            )
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise ModelInputError(
                f"{name} takes float images normalised as the dataset's info does"
                f" (info.normalize(images)); got {x.dtype}. TrainedRun.predict and"
                " jaxseg.inference take uint8 images and normalise them"
            )
        try:
            self.check_size(*shape[1:3])
        except ModelInputError:
            raise
        except ValueError as e:
            raise ModelInputError(str(e)) from e
        return shape[1], shape[2]

    @nn.compact
    def __call__(self, x, train: bool = False):
        height, width = self.check_input(x)
        encoder = self.build_encoder()
        features = encoder(
            self.compute_input(x), train, frozen_bn=self.encoder_frozen_bn, remat=self.remat
        )
        scores = self.head(self.decode(features, encoder, (height, width), train))
        out_height, out_width = self.output_size(height, width)
        if scores.shape[1:3] != (out_height, out_width):
            scores = resize(scores, out_height, out_width, self.score_resize_method())
        return scores.astype(jnp.float32)

    def compute_input(self, x: jnp.ndarray) -> jnp.ndarray:
        """`x` in the compute dtype: what the encoder starts from."""
        return x.astype(COMPUTE_DTYPES[self.dtype])

    # The input contract.

    def input_multiple(self) -> int:
        """Input sides must be multiples of this (1: any size)."""
        return 1

    def input_padding(self, height: int, width: int) -> tuple[Pads, Pads] | None:
        """(image_pads, label_pads) that make the output cover a (height x width) image, for
        models whose output is smaller than their input; None when output = input."""
        return None

    def tile_period(self) -> int:
        """The input shift that leaves the computation unchanged (its pooling grid)."""
        return self.input_multiple()

    def position_dependent(self) -> bool:
        """True if a pixel's prediction depends on its absolute position in the input."""
        return False

    def global_context(self) -> bool:
        """True if every pixel's prediction depends on the whole input (image pooling,
        global attention): padding an image then changes its prediction everywhere, not
        only within the receptive field of the padding."""
        return False
