"""torchvision ImageNet weights <-> jaxseg encoder variables (VGG16, ResNet-18/34/50), and
transformers SegFormer checkpoints <-> jaxseg SegFormer / MiT variables (section at the end:
a Hub model.safetensors, e.g. nvidia/segformer-b0-finetuned-ade-512-512's, reads without
torch; `load_encoder_weights(path, "mit_b0")` takes an ImageNet nvidia/mit-b0 checkpoint).
Whole models (torchvision DeepLabV3, smp DeepLabV3+, SegFormer) read by `model_variables`, or
by `load_for_finetuning` (config `init.model_weights`), which leaves a classifier for another
number of classes freshly initialised (the last section).

Getting the real weights (needs internet and torch once, on any machine)::

    import torch, torchvision, safetensors.torch
    model = torchvision.models.vgg16(weights="IMAGENET1K_V1")  # or resnet18/34/50
    safetensors.torch.save_file(model.state_dict(), "vgg16.safetensors")

A downloaded `.pth` (e.g. from ~/.cache/torch/hub/checkpoints/) converts in one line:
`safetensors.torch.save_file(torch.load(p), out)`. jaxseg reads `.safetensors` and
`.npz` without torch (`.pth`/`.pt` only where torch is installed); then
`load_encoder_weights("vgg16.safetensors", "vgg16").variables` is the encoder's
{"params", "batch_stats"} subtree, the "encoder" entry of a model's variables.

These weights expect RGB images scaled to 0-1 and standardised with the ImageNet
mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225), which is what
`SegmentationInfo.normalize` does by default (the same statistics on the 0-255
scale, jaxseg/data/info.py). Caffe's VGG16, which the FCN paper used, expects BGR
minus a mean instead: its weights are not these.

Names: ResNet's "layer3_5/conv2_conv/kernel" is torchvision's "layer3.5.conv2.weight",
"conv2_bn" is "bn2" (scale/bias/mean/var = weight/bias/running_mean/running_var),
"stem_conv"/"stem_bn" are "conv1"/"bn1", "downsample_conv"/"downsample_bn" are
"downsample.0"/"downsample.1". VGG16's conv{b}_{i} are "features.N" and fc6/fc7
are the classifier's Linear layers "classifier.0"/"classifier.3" as 7x7 and 1x1
convolutions (FCN). Conv kernels go from OIHW to HWIO. torchvision's 1000-way
classifier ("fc", "classifier.6") and "num_batches_tracked" are ignored. fc7
equals torchvision's classifier[:5] where pool5 is 7x7 (224x224 input,
fc6_padding="VALID"); on other sizes it slides over pool5 as in FCN, where
torchvision would resample pool5 to 7x7 (its adaptive average pool).
"""

import dataclasses
import functools
import hashlib
import os
import pathlib
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
import safetensors.numpy

from jaxseg.errors import JaxsegError
from jaxseg.models.encoders import get_encoder
from jaxseg.models.encoders.vgg import VGG16_BLOCKS

TORCHVISION_ENCODERS = ("vgg16", "resnet18", "resnet34", "resnet50")
# transformers' MiT (SegFormer) encoders, read from SegFormer or mit-bX checkpoints.
MIT_ENCODERS = ("mit_b0", "mit_b1", "mit_b2")
PRETRAINED_ENCODERS = TORCHVISION_ENCODERS + MIT_ENCODERS
SUFFIXES = (".safetensors", ".npz", ".pth", ".pt", ".bin")
MAX_LISTED = 8  # names listed per kind of mismatch in an error; the count says how many more

_LEAVES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}
# torchvision's ImageNet classifiers, which the encoders do not have.
_CLASSIFIERS = {"vgg16": ("classifier.6.",), "resnet": ("fc.",)}
# A mit-bX ImageNet checkpoint's classifier; a SegFormer checkpoint's decoder.
_CLASSIFIERS["mit"] = ("classifier.", "decode_head.")
_NAMING = {"vgg16": "torchvision", "resnet": "torchvision", "mit": "transformers checkpoint"}


class WeightsError(JaxsegError):
    """A weights file that cannot be read, or whose tensors do not fit the encoder."""

    heading = "weights error"


@dataclasses.dataclass(frozen=True)
class LoadedWeights:
    """Variables read from a weights file, with the file's identity for the record."""

    variables: dict
    sha256: str
    path: str
    report: dict = dataclasses.field(default_factory=dict)  # what was read (fine-tuning)


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """One encoder variable: where it lives in jaxseg, its torchvision name and layout."""

    collection: str
    path: tuple[str, ...]
    shape: tuple[int, ...]  # jaxseg's
    torch_name: str
    # "conv" (OIHW <-> HWIO), "linear" ((O, C*H*W) <-> HWIO), "dense" ((O, I) <-> (I, O))
    # or "vector"
    layout: str

    @property
    def torch_shape(self) -> tuple[int, ...]:
        if self.layout == "conv":
            height, width, channels, out = self.shape
            return (out, channels, height, width)
        if self.layout == "linear":
            height, width, channels, out = self.shape
            return (out, channels * height * width)
        if self.layout == "dense":
            return self.shape[::-1]
        return self.shape

    def to_jaxseg(self, array: np.ndarray) -> np.ndarray:
        if self.layout == "linear":
            # PyTorch flattens (C, H, W): fc6's input index is c*49 + h*7 + w.
            height, width, channels, out = self.shape
            array = array.reshape(out, channels, height, width)
        if self.layout in ("conv", "linear"):
            array = array.transpose(2, 3, 1, 0)
        if self.layout == "dense":
            array = array.T
        return np.asarray(array, np.float32)

    def to_torch(self, array: np.ndarray) -> np.ndarray:
        array = np.asarray(array, np.float32)
        if self.layout in ("conv", "linear"):
            array = array.transpose(3, 2, 0, 1)
        if self.layout == "dense":
            array = array.T
        if self.layout == "linear":
            array = array.reshape(self.torch_shape)
        return np.ascontiguousarray(array)


def _family(encoder_name: str) -> str:
    if encoder_name not in PRETRAINED_ENCODERS:
        raise WeightsError(
            f"no pretrained weights for encoder {encoder_name!r};"
            f" supported: {list(PRETRAINED_ENCODERS)}"
        )
    if encoder_name in MIT_ENCODERS:
        return "mit"
    return "vgg16" if encoder_name == "vgg16" else "resnet"


def _vgg16_modules() -> dict[str, str]:
    """{"conv1_1": "features.0", ...}: torchvision's `features` is Conv2d, ReLU, ..., MaxPool2d."""
    modules, index = {}, 0
    for block, (_, convs) in enumerate(VGG16_BLOCKS, start=1):
        for conv in range(1, convs + 1):
            modules[f"conv{block}_{conv}"] = f"features.{index}"
            index += 2  # the conv and its ReLU
        index += 1  # the max-pool
    return modules | {"fc6": "classifier.0", "fc7": "classifier.3"}


def _resnet_module(path: tuple[str, ...]) -> str:
    """torchvision's module for a jaxseg path: ("layer3_5", "conv2_bn") -> "layer3.5.bn2"."""
    stem = {("stem_conv",): "conv1", ("stem_bn",): "bn1"}
    if path in stem:
        return stem[path]
    block, layer = path
    stage, index = block.rsplit("_", 1)
    prefix, kind = layer.rsplit("_", 1)
    if prefix == "downsample":
        module = {"conv": "downsample.0", "bn": "downsample.1"}[kind]
    else:
        module = prefix if kind == "conv" else prefix.replace("conv", "bn")
    return f"{stage}.{index}.{module}"


def _mit_module(path: tuple[str, ...]) -> str:
    """transformers' checkpoint name of a MiT module: ("block2_1", "attention", "query") ->
    "segformer.encoder.block.1.1.attention.self.query" (jaxseg counts stages from 1)."""
    head, *rest = path
    kind, stage = head.rstrip("0123456789_"), head[len(head.rstrip("0123456789_")) :]
    if kind == "patch_embed":
        module = f"patch_embeddings.{int(stage) - 1}." + ".".join(rest)
    elif kind == "norm" and not rest:
        module = f"layer_norm.{int(stage) - 1}"
    elif kind == "block":
        stage, index = stage.split("_")
        inner = {
            ("attention", "output"): "attention.output.dense",
            ("mlp", "dwconv"): "mlp.dwconv.dwconv",
        }.get(tuple(rest))
        if inner is None and rest[0] == "attention":
            inner = "attention.self." + ".".join(rest[1:])
        module = f"block.{int(stage) - 1}.{index}." + (inner or ".".join(rest))
    else:
        raise ValueError(f"not a MiT module: {path}")
    return f"segformer.encoder.{module}"


def _options_key(encoder_options) -> tuple:
    return tuple(sorted(dict(encoder_options or {}).items()))


@functools.lru_cache(maxsize=32)
def _tensors(encoder_name: str, options_key: tuple) -> tuple[_Tensor, ...]:
    """Every variable of the encoder (its own `init`, shapes only) with its torchvision name."""
    family = _family(encoder_name)
    encoder = get_encoder(encoder_name, **dict(options_key))
    # 224x224 gives VGG16's unpadded fc6 its 7x7 input; eval_shape allocates nothing.
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: encoder.init(jax.random.key(0), x, train=False), images)
    vgg16_modules = _vgg16_modules()
    tensors = []
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(dict(shapes.get(collection, {})))[0]
        for key_path, leaf in flat:
            path = tuple(key.key for key in key_path)
            *module_path, leaf_name = path
            try:
                if family == "vgg16":
                    module = vgg16_modules[module_path[0]]
                elif family == "mit":
                    module = _mit_module(tuple(module_path))
                else:
                    module = _resnet_module(tuple(module_path))
                torch_name = f"{module}.{_LEAVES[leaf_name]}"
            except (KeyError, ValueError) as error:
                raise ValueError(
                    f"{encoder_name}: no torchvision name for variable {collection}/"
                    + "/".join(path)
                ) from error
            layout = _layout(leaf, leaf_name, module)
            tensors.append(_Tensor(collection, path, tuple(leaf.shape), torch_name, layout))
    return tuple(tensors)


def _layout(leaf, leaf_name: str, module: str) -> str:
    if leaf_name != "kernel":
        return "vector"
    if len(leaf.shape) == 2:
        return "dense"
    return "linear" if module.startswith("classifier.") else "conv"


def _ignored(encoder_name: str, tensors: tuple[_Tensor, ...], name: str) -> bool:
    """Whether a file's tensor is one the encoder has no use for (classifier, batch counter)."""
    if name.endswith(".num_batches_tracked"):
        return True
    classifier = _CLASSIFIERS[_family(encoder_name)]
    if encoder_name == "vgg16" and not any(t.layout == "linear" for t in tensors):
        classifier = ("classifier.",)  # include_fc=False: fc6 and fc7 are unused too
    return name.startswith(classifier)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def torchvision_shapes(encoder_name: str, encoder_options=None) -> dict[str, tuple[int, ...]]:
    """The torchvision tensors an encoder reads, by name, with their torchvision shapes.

    Args:
      encoder_name: "vgg16", "resnet18", "resnet34" or "resnet50".
      encoder_options: the encoder's options (`get_encoder(name, **options)`).

    Returns:
      {torchvision name: shape}, without the ignored classifier and batch counters.
    """
    tensors = _tensors(encoder_name, _options_key(encoder_options))
    return {tensor.torch_name: tensor.torch_shape for tensor in tensors}


def encoder_variables(
    encoder_name: str, state_dict: dict, encoder_options=None, source: str = ""
) -> dict:
    """The encoder's variables from a torchvision-named state dict, every tensor checked.

    Args:
      encoder_name: "vgg16", "resnet18", "resnet34" or "resnet50".
      state_dict: {torchvision name: array}, e.g. `read_state_dict(path)`; a whole
        torchvision segmentation model's ("backbone.") or smp model's ("encoder.") gives
        its ResNet.
      encoder_options: the encoder's options; VGG16 with include_fc=False ignores
        the classifier tensors.
      source: where `state_dict` came from (a file name), for error messages.

    Returns:
      {"params": ..., "batch_stats": ...} nested dicts of float32 numpy arrays
      ("batch_stats" is empty for VGG16), as the encoder's `init` returns them;
      float32 inputs come back as (transposed) views of `state_dict`'s arrays.

    Raises:
      WeightsError: listing the missing, unexpected, wrongly shaped and
        non-float tensors, with counts.
    """
    tensors = _tensors(encoder_name, _options_key(encoder_options))
    if _family(encoder_name) == "mit":
        state_dict = checkpoint_names(state_dict)
    else:
        state_dict = _encoder_part(state_dict, tensors[0].torch_name)
    return _variables_from(
        tensors,
        state_dict,
        lambda name: _ignored(encoder_name, tensors, name),
        f"encoder {encoder_name!r} (options {dict(encoder_options or {})};"
        f" {_NAMING[_family(encoder_name)]} names)",
        source,
    )


def _encoder_part(state_dict: dict, first: str) -> dict:
    """The encoder's tensors of a whole model's state dict (torchvision's "backbone.", smp's
    "encoder."), without their prefix; `state_dict` itself when it holds `first` (the
    encoder's first tensor) or no model's encoder."""
    for prefix in ("backbone.", "encoder."):
        if first not in state_dict and prefix + first in state_dict:
            return {
                name.removeprefix(prefix): value
                for name, value in state_dict.items()
                if name.startswith(prefix)
            }
    return state_dict


def _variables_from(tensors, state_dict: dict, ignored, what: str, source: str) -> dict:
    """{"params", "batch_stats"} from a state dict, every tensor checked by name and shape.

    Args:
      tensors: the _Tensor of every variable.
      state_dict: {reference name: array}.
      ignored: name -> whether a tensor the variables have no use for may be in the file.
      what: what the tensors should fit, for the error ("encoder 'resnet18' (...)").
      source: where `state_dict` came from, for the error.

    Raises:
      WeightsError: listing the missing, unexpected, wrongly shaped and non-float
        tensors, with counts.
    """
    expected = {tensor.torch_name: tensor for tensor in tensors}
    missing = sorted(name for name in expected if name not in state_dict)
    unexpected = sorted(name for name in state_dict if name not in expected and not ignored(name))
    wrong_shape, not_float = [], []
    for name, tensor in sorted(expected.items()):
        if name not in state_dict:
            continue
        value = np.asarray(state_dict[name])
        if value.shape != tensor.torch_shape:
            wrong_shape.append(f"{name} {value.shape} (expected {tensor.torch_shape})")
        elif value.dtype.kind != "f":
            not_float.append(f"{name} {value.dtype}")
    problems = [
        f"{len(names)} {kind}: {_listed(names)}"
        for kind, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("with the wrong shape", wrong_shape),
            ("not floating point", not_float),
        )
        if names
    ]
    if problems:
        raise WeightsError(
            f"{source or 'state dict'}: the tensors do not fit {what}: " + "; ".join(problems)
        )
    variables = {"params": {}, "batch_stats": {}}
    for tensor in tensors:
        node = variables[tensor.collection]
        for key in tensor.path[:-1]:
            node = node.setdefault(key, {})
        node[tensor.path[-1]] = tensor.to_jaxseg(np.asarray(state_dict[tensor.torch_name]))
    return variables


def torchvision_state_dict(encoder_name: str, variables, encoder_options=None) -> dict:
    """The inverse of `encoder_variables`: jaxseg encoder variables -> torchvision names.

    Args:
      encoder_name: "vgg16", "resnet18", "resnet34" or "resnet50".
      variables: the encoder's {"params", "batch_stats"} (dicts or FrozenDicts of
        numpy or jax arrays), e.g. a model's variables' "encoder" entries.
      encoder_options: the encoder's options.

    Returns:
      {torchvision name: contiguous float32 numpy array}, loadable with
      `torchvision.models.<name>().load_state_dict(..., strict=False)` (it has
      no classifier and no batch counters).

    Raises:
      WeightsError: a variable is missing or has the wrong shape.
    """
    tensors = _tensors(encoder_name, _options_key(encoder_options))
    return _state_dict(tensors, variables, f"encoder {encoder_name!r}")


def _state_dict(tensors, variables, target: str) -> dict:
    """`tensors` taken from `variables`, by their reference names; WeightsError naming what
    is missing or misshapen."""
    state_dict, problems = {}, []
    for tensor in tensors:
        node, where = variables.get(tensor.collection, {}), "/".join(tensor.path)
        try:
            for key in tensor.path:
                node = node[key]
        except (KeyError, TypeError):
            problems.append(f"{tensor.collection}/{where} missing")
            continue
        if tuple(np.shape(node)) != tensor.shape:
            problems.append(
                f"{tensor.collection}/{where} {np.shape(node)} (expected {tensor.shape})"
            )
            continue
        state_dict[tensor.torch_name] = tensor.to_torch(np.asarray(node))
    if problems:
        raise WeightsError(
            f"variables do not fit {target}: {len(problems)} problems: {_listed(problems)}"
        )
    return state_dict


def read_state_dict(path) -> dict[str, np.ndarray]:
    """A file's tensors by name: `.safetensors`, `.npz`, or `.pth`/`.pt` where torch is installed.

    Args:
      path: the weights file.

    Returns:
      {name: numpy array} (torch tensors converted; bfloat16 to float32).

    Raises:
      FileNotFoundError: no such file.
      WeightsError: another kind of file, or a truncated or corrupt one.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise WeightsError(
            f"{path}: not a weights file (its suffix {suffix!r} is not one of {list(SUFFIXES)})"
        )
    try:
        if suffix == ".safetensors":
            return safetensors.numpy.load_file(path)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
    except Exception as error:  # each format raises its own kinds for a damaged file
        raise WeightsError(
            f"{path}: cannot read it as {suffix} (truncated or corrupt?): {error}"
        ) from error
    return _read_torch(path)


def _read_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
    try:
        import torch  # optional: only .pth/.pt files need it
    except ImportError as error:
        raise WeightsError(
            f"{path}: reading {path.suffix} files needs torch, which is not installed; convert"
            " it where torch is: `import torch, safetensors.torch;"
            f" safetensors.torch.save_file(torch.load({str(path)!r}),"
            f" {str(path.with_suffix('.safetensors'))!r})`"
        ) from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors for a bad file
        raise WeightsError(f"{path}: cannot read it with torch.load: {error}") from error
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise WeightsError(
            f"{path}: holds a {type(loaded).__name__}, not a state dict of tensors"
            " (save `model.state_dict()`)"
        )
    return {
        name: (tensor.float() if tensor.is_floating_point() else tensor).numpy()
        for name, tensor in loaded.items()
    }


def file_sha256(path) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_encoder_weights(path, encoder_name: str, encoder_options=None) -> LoadedWeights:
    """Reads a torchvision weights file into an encoder's variables.

    Args:
      path: `.safetensors`, `.npz`, or `.pth`/`.pt` (with torch installed).
      encoder_name: "vgg16", "resnet18", "resnet34" or "resnet50".
      encoder_options: the encoder's options (as the model passes them).

    Returns:
      LoadedWeights: `variables` ({"params", "batch_stats"} of float32 numpy
      arrays), the file's `sha256` and `path`, for the run's record.

    Raises:
      WeightsError: the file cannot be read or its tensors do not fit (named).
    """
    state_dict = read_state_dict(path)
    variables = encoder_variables(encoder_name, state_dict, encoder_options, source=str(path))
    return LoadedWeights(variables=variables, sha256=file_sha256(path), path=str(path))


def save_safetensors(path, state_dict: dict) -> None:
    """Writes {name: array} as safetensors, atomically (a temporary file, then a rename).

    Args:
      path: the file to write.
      state_dict: {name: numpy-convertible array}, e.g. `torchvision_state_dict(...)`.
    """
    path = pathlib.Path(path)
    arrays = {name: np.ascontiguousarray(value) for name, value in state_dict.items()}
    partial = path.with_name(path.name + ".partial")
    safetensors.numpy.save_file(arrays, partial)
    os.replace(partial, path)


# Whole models: torchvision's DeepLabV3 and segmentation_models_pytorch's DeepLabV3+.
# {layout: (the reference's prefix of the encoder, of ASPP, {jaxseg module: reference
# module} for the rest, prefixes of reference tensors the model has no use for)}.
MODEL_LAYOUTS = {
    "torchvision_deeplabv3": (
        "backbone.",
        "classifier.0.",
        {"head_conv": "classifier.1", "head_bn": "classifier.2", "classifier": "classifier.4"},
        ("aux_classifier.",),  # the pretrained COCO weights' auxiliary FCN head
    ),
    "smp_deeplabv3plus": (
        "encoder.",
        "decoder.aspp.0.",
        {
            "aspp_conv_depthwise": "decoder.aspp.1.0",
            "aspp_conv_pointwise": "decoder.aspp.1.1",
            "aspp_conv_bn": "decoder.aspp.2",
            "low_level_conv": "decoder.block1.0",
            "low_level_bn": "decoder.block1.1",
            "fuse_depthwise": "decoder.block2.0.0",
            "fuse_pointwise": "decoder.block2.0.1",
            "fuse_bn": "decoder.block2.1",
            "classifier": "segmentation_head.0",
        },
        ("classification_head.",),
    ),
}
# transformers' SegformerForSemanticSegmentation (its modules: _segformer_module below).
SEGFORMER_LAYOUT = "transformers_segformer"
# The layout of each model's whole-model files, by model name (config `init.model_weights`).
REFERENCE_LAYOUTS = {
    "deeplabv3": "torchvision_deeplabv3",
    "deeplabv3plus": "smp_deeplabv3plus",
    "segformer": SEGFORMER_LAYOUT,
}


def _aspp_module(module: str) -> str:
    """The reference's ASPP module (after its prefix) of a jaxseg ASPP submodule:
    "branch2_conv" -> "convs.2.0", separable "branch2_depthwise" -> "convs.2.0.0",
    "pooling_bn" -> "convs.4.2" (after the pooling), "project_conv" -> "project.0"."""
    branch, kind = module.split("_", 1)
    if branch == "project":
        return {"conv": "project.0", "bn": "project.1"}[kind]
    if branch == "pooling":
        return {"conv": "convs.4.1", "bn": "convs.4.2"}[kind]
    index = int(branch.removeprefix("branch"))
    sub = {"conv": "0", "depthwise": "0.0", "pointwise": "0.1", "bn": "1"}[kind]
    return f"convs.{index}.{sub}"


def _model_module(layout: str, path: tuple[str, ...]) -> str:
    if layout == SEGFORMER_LAYOUT:
        return _segformer_module(path)
    encoder_prefix, aspp_prefix, modules, _ = MODEL_LAYOUTS[layout]
    if path[0] == "encoder":
        return encoder_prefix + _resnet_module(tuple(path[1:]))
    if path[0] == "aspp":
        (module,) = path[1:]
        return aspp_prefix + _aspp_module(module)
    (module,) = path
    return modules[module]


def _check_layout(layout: str) -> None:
    known = [*MODEL_LAYOUTS, SEGFORMER_LAYOUT]
    if layout not in known:
        raise WeightsError(f"unknown weights layout {layout!r}; known: {known}")


def _model_ignored(layout: str):
    """name -> whether a reference file's tensor is one the model has no use for (batch
    counters, torchvision's auxiliary head, smp's classification head)."""
    prefixes = MODEL_LAYOUTS[layout][3] if layout in MODEL_LAYOUTS else ()
    return lambda name: name.endswith(".num_batches_tracked") or name.startswith(prefixes)


def _reference_names(state_dict: dict, layout: str) -> dict:
    """A state dict under the names `layout` uses (transformers 5's renamed back)."""
    return checkpoint_names(state_dict) if layout == SEGFORMER_LAYOUT else state_dict


def _model_tensors(model, layout: str) -> tuple[_Tensor, ...]:
    """Every variable of a model (shapes from its `init`) with its name in `layout`."""
    _check_layout(layout)
    side = 4 * model.input_multiple()
    images = jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    tensors = []
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(dict(shapes.get(collection, {})))[0]
        for key_path, leaf in flat:
            path = tuple(key.key for key in key_path)
            *module_path, leaf_name = path
            try:
                module = _model_module(layout, tuple(module_path))
                torch_name = f"{module}.{_LEAVES[leaf_name]}"
            except (KeyError, ValueError) as error:
                raise WeightsError(
                    f"{type(model).__name__}: no {layout} name for variable {collection}/"
                    + "/".join(path)
                ) from error
            layout_kind = "vector"
            if leaf_name == "kernel":  # SegFormer's Linear layers: 2-D; convolutions: 4-D
                layout_kind = "dense" if len(leaf.shape) == 2 else "conv"
            tensors.append(_Tensor(collection, path, tuple(leaf.shape), torch_name, layout_kind))
    return tuple(tensors)


def model_reference_shapes(model, layout: str) -> dict[str, tuple[int, ...]]:
    """The reference tensors a whole model reads, by name, with the reference's shapes.

    Args:
      model: a jaxseg model, e.g. `get_model("deeplabv3", num_classes=21)`.
      layout: "torchvision_deeplabv3" (torchvision's `deeplabv3_resnet50` and its ResNet
        variants), "smp_deeplabv3plus" (segmentation_models_pytorch's `DeepLabV3Plus`
        on a ResNet encoder) or "transformers_segformer" (transformers'
        `SegformerForSemanticSegmentation` checkpoint names); `REFERENCE_LAYOUTS` gives
        each model's.

    Returns:
      {reference name: shape}, without the ignored tensors and batch counters.
    """
    return {tensor.torch_name: tensor.torch_shape for tensor in _model_tensors(model, layout)}


def model_variables(model, state_dict: dict, layout: str, source: str = "") -> dict:
    """A whole model's variables from a reference state dict, every tensor checked.

    Args:
      model: the jaxseg model the weights are for (its options fix every shape).
      state_dict: {reference name: array}, e.g. `read_state_dict(path)`.
      layout: see `model_reference_shapes`.
      source: where `state_dict` came from (a file name), for error messages.

    Returns:
      {"params": ..., "batch_stats": ...} nested dicts of float32 numpy arrays, as the
      model's `init` returns them.

    Raises:
      WeightsError: listing the missing, unexpected, wrongly shaped and non-float
        tensors, with counts (the same report as `encoder_variables`).
    """
    return _variables_from(
        _model_tensors(model, layout),
        _reference_names(state_dict, layout),
        _model_ignored(layout),
        f"model {type(model).__name__} ({layout} names)",
        source,
    )


def model_reference_state_dict(model, variables, layout: str) -> dict:
    """The inverse of `model_variables`: jaxseg model variables -> reference names.

    Args:
      model: the jaxseg model.
      variables: its {"params", "batch_stats"}.
      layout: see `model_reference_shapes`.

    Returns:
      {reference name: contiguous float32 numpy array}.

    Raises:
      WeightsError: a variable is missing or has the wrong shape.
    """
    return _state_dict(_model_tensors(model, layout), variables, f"model {type(model).__name__}")


def load_model_weights(path, model, layout: str) -> LoadedWeights:
    """Reads a whole model's reference weights file (torchvision DeepLabV3, smp DeepLabV3+,
    transformers SegFormer), every tensor checked (`load_for_finetuning` allows another
    number of classes).

    Args:
      path: `.safetensors`, `.npz`, or `.pth`/`.pt` (with torch installed).
      model: the jaxseg model.
      layout: see `model_reference_shapes`.

    Returns:
      LoadedWeights: the model's `variables`, the file's `sha256` and `path`.

    Raises:
      WeightsError: the file cannot be read or its tensors do not fit (named).
    """
    variables = model_variables(model, read_state_dict(path), layout, source=str(path))
    return LoadedWeights(variables=variables, sha256=file_sha256(path), path=str(path))


# SegFormer: transformers checkpoints (SegformerForSemanticSegmentation) <-> jaxseg models.

# transformers >= 5 names its modules differently from its checkpoint files (it renames on
# loading: transformers/conversion_mapping.py, "SegformerModel"); its `model.state_dict()`
# read back into the checkpoint names, which `save_pretrained` and the Hub's files use.
_TRANSFORMERS_5_NAMES = (
    (
        r"^(segformer\.)?stages\.(\d+)\.patch_embeddings\.",
        r"segformer.encoder.patch_embeddings.\2.",
    ),
    (r"^(segformer\.)?stages\.(\d+)\.blocks\.", r"segformer.encoder.block.\2."),
    (r"^(segformer\.)?stages\.(\d+)\.layer_norm\.", r"segformer.encoder.layer_norm.\2."),
    # a bare SegformerModel's (not smp's "encoder.conv1" and the like)
    (r"^encoder\.(?=patch_embeddings\.|block\.|layer_norm\.)", "segformer.encoder."),
    (r"\.attention\.q_proj\.", ".attention.self.query."),
    (r"\.attention\.k_proj\.", ".attention.self.key."),
    (r"\.attention\.v_proj\.", ".attention.self.value."),
    (r"\.attention\.sequence_reduction\.sequence_reduction\.", ".attention.self.sr."),
    (r"\.attention\.sequence_reduction\.layer_norm\.", ".attention.self.layer_norm."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".mlp.dense1."),
    (r"\.mlp\.fc2\.", ".mlp.dense2."),
    (r"\.layernorm_before\.", ".layer_norm_1."),
    (r"\.layernorm_after\.", ".layer_norm_2."),
    (r"^decode_head\.linear_projections\.", "decode_head.linear_c."),
)
_DECODER_MODULES = {
    "linear_fuse": "decode_head.linear_fuse",
    "batch_norm": "decode_head.batch_norm",
    "classifier": "decode_head.classifier",
}


def checkpoint_names(state_dict: dict) -> dict:
    """A SegFormer state dict under the checkpoint files' names ("segformer.encoder.block.0.0
    .attention.self.query.weight"), whichever transformers version named it (>= 5 names
    modules "segformer.stages.0.blocks.0.attention.q_proj"); other names are kept."""
    renamed = {}
    for name, value in state_dict.items():
        for pattern, replacement in _TRANSFORMERS_5_NAMES:
            name = re.sub(pattern, replacement, name)
        renamed[name] = value
    return renamed


def _segformer_module(path: tuple[str, ...]) -> str:
    """The checkpoint name of a jaxseg SegFormer module: ("linear_c2",) -> "decode_head.
    linear_c.1.proj", ("encoder", "block1_0", "mlp", "dense1") -> "segformer.encoder...."."""
    if path[0] == "encoder":
        return _mit_module(path[1:])
    if path[0].startswith("linear_c") and len(path) == 1:
        return f"decode_head.linear_c.{int(path[0][len('linear_c') :]) - 1}.proj"
    return _DECODER_MODULES[".".join(path)]


@functools.lru_cache(maxsize=16)
def _segformer_tensors(options_key: tuple) -> tuple[_Tensor, ...]:
    """Every variable of a SegFormer (shapes only) with its transformers checkpoint name."""
    from jaxseg.models import get_model

    options = dict(options_key)
    if options.get("encoder", "mit_b0") not in MIT_ENCODERS:
        raise WeightsError(
            f"transformers SegFormer weights need a MiT encoder ({list(MIT_ENCODERS)});"
            f" got encoder {options['encoder']!r}"
        )
    model = get_model("segformer", **options)
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    tensors = []
    for collection in ("params", "batch_stats"):
        flat = jax.tree_util.tree_flatten_with_path(dict(shapes.get(collection, {})))[0]
        for key_path, leaf in flat:
            *module_path, leaf_name = (key.key for key in key_path)
            module = _segformer_module(tuple(module_path))
            torch_name = f"{module}.{_LEAVES[leaf_name]}"
            path = (*module_path, leaf_name)
            layout = _layout(leaf, leaf_name, module)
            tensors.append(_Tensor(collection, path, tuple(leaf.shape), torch_name, layout))
    return tuple(tensors)


def _segformer_options(model_options) -> tuple:
    return tuple(
        sorted(
            (k, tuple(sorted(dict(v).items())) if isinstance(v, Mapping) else v)
            for k, v in dict(model_options).items()
            if k not in ("dtype", "remat", "name")  # these do not change the variables
        )
    )


def segformer_shapes(model_options) -> dict[str, tuple[int, ...]]:
    """{checkpoint name: shape} of the tensors a SegFormer with `model_options` reads."""
    return {
        t.torch_name: t.torch_shape for t in _segformer_tensors(_segformer_options(model_options))
    }


def segformer_variables(state_dict: dict, model_options, source: str = "") -> dict:
    """A SegFormer's variables from a transformers SegformerForSemanticSegmentation state
    dict, every tensor checked.

    Args:
      state_dict: {name: array}: a checkpoint's (`read_state_dict` of a model.safetensors or
        pytorch_model.bin) or a transformers >= 5 `model.state_dict()`.
      model_options: the model's options (`get_model("segformer", **model_options)`):
        encoder, decoder_hidden_size...; num_classes, when absent, is the checkpoint's.
      source: where `state_dict` came from (a file name), for error messages.

    Returns:
      {"params": ..., "batch_stats": ...} of float32 numpy arrays, as the model's `init`.

    Raises:
      WeightsError: listing the missing, unexpected, wrongly shaped and non-float tensors.
    """
    state_dict = checkpoint_names(state_dict)
    classifier = state_dict.get("decode_head.classifier.bias")
    if classifier is not None and "num_classes" not in model_options:
        model_options = {"num_classes": int(np.shape(classifier)[0]), **model_options}
    key = _segformer_options(model_options)
    target = f"model 'segformer' (options {dict(key)}; transformers checkpoint names)"
    return _variables_from(
        _segformer_tensors(key),
        state_dict,
        lambda name: name.endswith(".num_batches_tracked"),
        target,
        source,
    )


def segformer_state_dict(variables, model_options) -> dict:
    """The inverse of `segformer_variables`: a jaxseg SegFormer's variables -> {checkpoint
    name: float32 array}, loadable by transformers (`from_pretrained` of a directory with the
    model's config.json and this as model.safetensors; batch counters are not included)."""
    tensors = _segformer_tensors(_segformer_options(model_options))
    return _state_dict(tensors, variables, "model 'segformer'")


def load_segformer_weights(path, model_options=None) -> LoadedWeights:
    """Reads a transformers SegFormer checkpoint into a jaxseg SegFormer's variables.

    Args:
      path: model.safetensors (or .npz) without torch; pytorch_model.bin (.pth, .pt) with it.
      model_options: the model's options; decoder_hidden_size must match the checkpoint's,
        and num_classes too when given (an ADE20K model has 150 classes).

    Returns:
      LoadedWeights: the model's {"params", "batch_stats"}, the file's sha256 and path.

    Raises:
      WeightsError: the file cannot be read or its tensors do not fit (named).
    """
    state_dict = read_state_dict(path)
    variables = segformer_variables(state_dict, dict(model_options or {}), source=str(path))
    return LoadedWeights(variables=variables, sha256=file_sha256(path), path=str(path))


# Fine-tuning a whole model from a reference library's file (config `init.model_weights`).

# (a tensor only that kind of file holds, what it is, its layout or "encoder"): to say what
# a file that does not fit is. A SegFormer file also holds a MiT encoder: it comes first.
_FILE_KINDS = (
    ("classifier.0.convs.0.0.weight", "a torchvision DeepLabV3's", "torchvision_deeplabv3"),
    ("decoder.aspp.0.convs.0.0.weight", "an smp DeepLabV3+'s", "smp_deeplabv3plus"),
    ("decode_head.linear_fuse.weight", "a transformers SegFormer's", SEGFORMER_LAYOUT),
    ("segformer.encoder.patch_embeddings.0.proj.weight", "a MiT encoder's", "encoder"),
    ("layer1.0.conv1.weight", "a torchvision ResNet's", "encoder"),
    ("features.0.weight", "a torchvision VGG16's", "encoder"),
)


def _file_kind(state_dict: dict, layout: str) -> str:
    """ "; the names are <another kind of file>'s ..." when they say so, else ""."""
    names = checkpoint_names(state_dict)  # transformers 5's MiT names too
    for name, kind, kind_layout in _FILE_KINDS:
        if name not in names:
            continue
        if kind_layout == layout:
            return ""
        model = {v: k for k, v in REFERENCE_LAYOUTS.items()}.get(kind_layout)
        use = f"model {model!r}" if model else "init.encoder_weights (an encoder alone)"
        return f"; the names are {kind}: a file for {use}"
    return ""


def _other_classes(tensors, state_dict: dict) -> tuple[_Tensor, ...]:
    """The classifier's tensors when the file's classify into another number of classes:
    each in the file with a shape that differs in the class dimension alone (the first of
    the reference's); () otherwise, when the usual checks apply to them."""
    classifier = [tensor for tensor in tensors if tensor.path[:-1] == ("classifier",)]

    def other_classes(tensor: _Tensor) -> bool:
        shape, expected = np.shape(state_dict.get(tensor.torch_name, ())), tensor.torch_shape
        return len(shape) == len(expected) and shape[1:] == expected[1:] and shape != expected

    return tuple(classifier) if classifier and all(map(other_classes, classifier)) else ()


def load_for_finetuning(path, model, layout: str) -> LoadedWeights:
    """Reads a reference library's whole-model file into `model`'s variables to fine-tune
    it, every tensor checked as `model_variables` does, except that a classifier for another
    number of classes is left out: the model keeps its own, freshly initialised.

    Args:
      path: `.safetensors`, `.npz`, or `.pth`/`.pt`/`.bin` (with torch installed).
      model: the jaxseg model (the run's, with its number of classes).
      layout: the file's, `REFERENCE_LAYOUTS[model name]`.

    Returns:
      LoadedWeights: `variables` (without the classifier when it was left out), the file's
      `sha256` and `path`, and `report`: {"layout", "reference_names": {variable: the
      file's name}, "mismatched": the left-out classifier's tensors with both shapes,
      "ignored": the file's tensors the model has no use for, batch counters aside}.

    Raises:
      WeightsError: the file cannot be read, or its tensors do not fit (each named, with
        what the file looks like when it is another model's or an encoder's).
    """
    state_dict = _reference_names(read_state_dict(path), layout)
    tensors = _model_tensors(model, layout)
    left_out = _other_classes(tensors, state_dict)
    kept = tuple(tensor for tensor in tensors if tensor not in left_out)
    left_out_names = {tensor.torch_name for tensor in left_out}
    ignored = _model_ignored(layout)
    try:
        variables = _variables_from(
            kept,
            state_dict,
            lambda name: name in left_out_names or ignored(name),
            f"model {type(model).__name__} ({layout} names)",
            str(path),
        )
    except WeightsError as error:
        raise WeightsError(f"{error}{_file_kind(state_dict, layout)}") from None
    report = {
        "layout": layout,
        "reference_names": {_label(tensor): tensor.torch_name for tensor in kept},
        "mismatched": [
            f"{_label(tensor)} ({tensor.torch_name}):"
            f" {tuple(np.shape(state_dict[tensor.torch_name]))} -> {tensor.torch_shape}"
            for tensor in left_out
            if tensor.torch_name in state_dict
        ],
        "ignored": sorted(
            name
            for name in state_dict
            if ignored(name) and not name.endswith(".num_batches_tracked")
        ),
    }
    return LoadedWeights(variables, file_sha256(path), str(path), report)


def _label(tensor: _Tensor) -> str:
    """ "params/encoder/stem_conv/kernel": a variable as the init report names it."""
    return "/".join((tensor.collection, *tensor.path))
