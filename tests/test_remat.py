"""Rematerialisation (model option `remat`): the same parameters, the same function, less memory."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_precision import perturbed_variables

from jaxseg.errors import ConfigError
from jaxseg.models import get_model
from jaxseg.models.remat import REMAT_MODES, compiler_options

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
TREES = json.loads((FIXTURES / "param_trees.json").read_text())


@pytest.mark.parametrize("remat", [m for m in REMAT_MODES if m != "none"])
def test_every_model_builds_the_pinned_tree_with_remat(remat):
    from fixtures.make_fixtures import variable_tree

    for case, pinned in sorted(TREES.items()):
        model = get_model(pinned["model"], num_classes=5, **{**pinned["options"], "remat": remat})
        assert variable_tree(model, pinned["input_side"]) == pinned["variables"], case


# Small models that take every checkpointed stage: U-Net levels and decoder blocks, ResNet
# stem and blocks, VGG16 blocks (with dropout in fc6/fc7 through FCN-32s).
SMALL = [
    ("unet", {"base_features": 4, "depth": 2}, 16),
    ("unet", {"encoder": "resnet18"}, 32),
    ("unet", {"encoder": "vgg16", "encoder_options": {"include_fc": False}}, 32),
    ("hypercolumn", {"encoder": "resnet18", "location_grid": 2}, 32),
]


def _loss_and_grads(model, variables, images):
    def loss_fn(params):
        logits, updates = model.apply(
            {**variables, "params": params},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(2)},
        )
        return jnp.mean(logits**2), (logits, updates)

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(variables["params"])


@pytest.mark.parametrize("name, options, side", SMALL)
def test_remat_computes_the_same_function_and_gradients(name, options, side):
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, side, side, 3)), jnp.float32)
    plain = get_model(name, num_classes=3, **options)
    variables = perturbed_variables(plain, images)
    (_, (want_logits, want_stats)), want_grads = _loss_and_grads(plain, variables, images)
    for remat in ("blocks", "convs"):
        model = get_model(name, num_classes=3, remat=remat, **options)
        (_, (logits, stats)), grads = _loss_and_grads(model, variables, images)
        # Equal up to float rounding: XLA fuses the recomputed stages differently.
        jax.tree.map(_assert_close, (logits, grads, stats), (want_logits, want_grads, want_stats))


def _assert_close(got, want, tolerance=1e-4):
    """|got - want| within `tolerance` x the largest |want| of the array."""
    got, want = np.asarray(got), np.asarray(want)
    assert np.abs(got - want).max() <= tolerance * np.abs(want).max() + 1e-12


def _train_step_temporaries(remat: str) -> int:
    model = get_model("unet", num_classes=2, base_features=8, depth=3, remat=remat)
    images = jnp.zeros((4, 64, 64, 3))
    labels = jnp.zeros((4, 64, 64), jnp.int32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images[:1])

    def step(variables, images, labels):
        def loss_fn(params):
            logits, _ = model.apply(
                {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        return jax.grad(loss_fn)(variables["params"])

    lowered = jax.jit(step).lower(variables, images, labels)
    compiled = lowered.compile(compiler_options(remat, jax.default_backend()))
    return compiled.memory_analysis().temp_size_in_bytes


def test_blocks_cut_the_temporaries_of_a_train_step():
    """Checks the mechanism, on CPU included (where it needs `compiler_options`)."""
    assert _train_step_temporaries("blocks") < 0.7 * _train_step_temporaries("none")


def test_an_unknown_remat_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model.remat='layers'.*'none', 'blocks', 'convs'"):
        get_model("fcn8s", num_classes=3, remat="layers")


def test_the_pmap_form_says_it_cannot_take_the_remat_options(caplog):
    from jaxseg.run.build import step_options
    from jaxseg.run.parallel import PmapParallel

    layout = PmapParallel(1)
    with caplog.at_level("WARNING"):
        layout.compile_train(lambda state, batch, rng: (state, {}), compiler_options("none", "cpu"))
        # jaxseg's CPU options alone go unsaid: they change speed, not what remat promises.
        layout.compile_train(lambda state, batch, rng: (state, {}), step_options("none"))
        assert not caplog.records
        layout.compile_train(
            lambda state, batch, rng: (state, {}), compiler_options("blocks", "cpu")
        )
        layout.compile_train(lambda state, batch, rng: (state, {}), step_options("blocks"))
    assert caplog.text.count("model.remat saves no memory in the pmap form") == 2
