"""What a fresh run starts from: its random initialisation, pretrained encoder weights
(`init.encoder_weights`), a reference library's whole model (`init.model_weights`), or the
variables of another run (`init.from_run`); at most one of the three.

Everything is read and checked before a run writes anything, so a bad file
never leaves a half-made workdir. A resumed run starts from its checkpoint
instead, whatever these settings say.
"""

import dataclasses

import jax
import numpy as np

from jaxseg.errors import ConfigError
from jaxseg.models import pretrained
from jaxseg.run.optim import parameter_path
from jaxseg.run.trained import load_run

SOURCES = ("encoder_weights", "model_weights", "from_run")  # the keys of `config.init`


@dataclasses.dataclass(frozen=True)
class Initialisation:
    """Variables to put into a freshly initialised model, and where they come from."""

    record: dict  # what the checkpoints and the log say about it
    source: dict  # {"params", "batch_stats"}: a file's (encoder or model) or another run's

    def apply(self, variables: dict) -> tuple[dict, dict]:
        """(variables with these copied in, a report of what was copied)."""
        variables = jax.tree.map(np.asarray, dict(variables))
        return _copy_matching(variables, self.source, self.record)


def load_initialisation(config, model) -> Initialisation | None:
    """Reads and checks what `config.init` names for `model` (the run's); None when it names
    nothing. ConfigError naming the key and the file for a file that does not fit."""
    given = [key for key in SOURCES if config.init[key]]
    if len(given) > 1:
        raise ConfigError(
            f"set one of init.{', init.'.join(SOURCES)}, not several; got "
            + ", ".join(f"init.{key}={config.init[key]!r}" for key in given)
        )
    if not given:
        return None
    key = given[0]
    if key == "from_run":
        source = load_run(config.init.from_run)
        record = {"from_run": {"workdir": source.workdir, "step": source.step}}
        return Initialisation(record, jax.tree.map(np.asarray, source.variables))
    try:
        if key == "encoder_weights":
            return _encoder_weights(config, config.init.encoder_weights)
        return _model_weights(config, model, config.init.model_weights)
    except (pretrained.WeightsError, FileNotFoundError) as error:
        raise ConfigError(f"init.{key}: {error}") from error


def _encoder_weights(config, path: str) -> Initialisation:
    encoder = config.model.get("encoder")
    if encoder not in pretrained.PRETRAINED_ENCODERS:
        raise ConfigError(
            f"init.encoder_weights needs a model whose encoder is one of"
            f" {list(pretrained.PRETRAINED_ENCODERS)}; model {config.model.name!r} has encoder"
            f" {encoder!r}"
        )
    loaded = pretrained.load_encoder_weights(
        path, encoder, dict(config.model.get("encoder_options") or {})
    )
    record = {"encoder_weights": {"path": loaded.path, "sha256": loaded.sha256}}
    # The encoder's variables are the "encoder" entries of the model's.
    source = {collection: {"encoder": values} for collection, values in loaded.variables.items()}
    return Initialisation(record, source)


def _model_weights(config, model, path: str) -> Initialisation:
    layout = pretrained.REFERENCE_LAYOUTS.get(config.model.name)
    if layout is None:
        raise ConfigError(
            f"init.model_weights: no reference library's file is known for model"
            f" {config.model.name!r}; it reads {_layouts()} (init.encoder_weights takes an"
            " encoder's weights, init.from_run another jaxseg run)"
        )
    loaded = pretrained.load_for_finetuning(path, model, layout)
    record = {
        "model_weights": {"path": loaded.path, "sha256": loaded.sha256, "layout": layout},
        **{key: value for key, value in loaded.report.items() if key != "layout"},
    }
    return Initialisation(record, loaded.variables)


def _layouts() -> str:
    return ", ".join(
        f"{layout} files for model {name!r}"
        for name, layout in pretrained.REFERENCE_LAYOUTS.items()
    )


def _copy_matching(variables: dict, source: dict, record: dict) -> tuple[dict, dict]:
    """Copies every variable of `source` whose collection, path and shape match."""
    copied, mismatched, initialised = [], [], []
    result = {}
    for collection, tree in variables.items():
        available = {
            parameter_path(path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(source.get(collection, {}))[0]
        }

        def take(path, leaf, collection=collection, available=available):
            name = parameter_path(path)
            other = available.get(name)
            label = f"{collection}/{name}"
            if other is None:
                initialised.append(label)
                return leaf
            if other.shape != leaf.shape:
                mismatched.append(f"{label}: {tuple(other.shape)} -> {tuple(leaf.shape)}")
                return leaf
            copied.append(label)
            return np.asarray(other, leaf.dtype)

        result[collection] = jax.tree_util.tree_map_with_path(take, tree)
    # A file's classifier for other classes was left out of `source` and is in the record.
    mismatched = record.get("mismatched", []) + mismatched
    report = {**record, "copied": copied, "initialised": initialised, "mismatched": mismatched}
    return result, report
