"""What a fresh run starts from: its random initialisation, pretrained encoder weights
(`init.encoder_weights`), or the variables of another run (`init.from_run`).

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


@dataclasses.dataclass(frozen=True)
class Initialisation:
    """Variables to put into a freshly initialised model, and where they come from."""

    record: dict  # what the checkpoints and the log say about it
    encoder: dict | None = None  # {"params", "batch_stats"} of the encoder
    source: dict | None = None  # another run's {"params", "batch_stats"}

    def apply(self, variables: dict) -> tuple[dict, dict]:
        """(variables with these copied in, a report of what was copied)."""
        variables = jax.tree.map(np.asarray, dict(variables))
        if self.encoder is not None:
            for collection, values in self.encoder.items():
                if values:
                    variables[collection] = {**variables[collection], "encoder": values}
            return variables, self.record
        return _copy_matching(variables, self.source, self.record)


def load_initialisation(config) -> Initialisation | None:
    """Reads and checks what `config.init` names; None when it names nothing."""
    weights, from_run = config.init.encoder_weights, config.init.from_run
    if weights and from_run:
        raise ConfigError("set init.encoder_weights or init.from_run, not both")
    if weights:
        encoder = config.model.get("encoder")
        if encoder not in pretrained.PRETRAINED_ENCODERS:
            raise ConfigError(
                f"init.encoder_weights needs a model whose encoder is one of"
                f" {list(pretrained.PRETRAINED_ENCODERS)}; model {config.model.name!r} has encoder"
                f" {encoder!r}"
            )
        loaded = pretrained.load_encoder_weights(
            weights, encoder, dict(config.model.get("encoder_options") or {})
        )
        record = {"encoder_weights": {"path": loaded.path, "sha256": loaded.sha256}}
        return Initialisation(record, encoder=loaded.variables)
    if from_run:
        from jaxseg.run import load_run

        source = load_run(from_run)
        record = {"from_run": {"workdir": source.workdir, "step": source.step}}
        variables = jax.tree.map(np.asarray, source.variables)
        return Initialisation(record, source=variables)
    return None


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
    report = {**record, "copied": copied, "initialised": initialised, "mismatched": mismatched}
    return result, report
