"""Mixed precision (model option `dtype`) and float16's dynamic loss scaling.

XLA:CPU has no fast bfloat16/float16 convolutions: these tests check correctness only.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_config

from jaxseg.errors import ConfigError
from jaxseg.models import get_model
from jaxseg.models.unet import unet_input_size
from jaxseg.run import build_run, load_run
from jaxseg.run.loss_scale import LossScale, apply_scaled_gradients
from jaxseg.run.state import LossScaledTrainState, TrainState
from jaxseg.run.step import variables_of
from jaxseg.train.loop import train_and_evaluate

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
TREES = json.loads((FIXTURES / "param_trees.json").read_text())


def _equations(jaxpr):
    """Every equation of a jaxpr and of the jaxprs inside it (cond, checkpoint, jit)."""
    for equation in jaxpr.eqns:
        yield equation
        for value in equation.params.values():
            for inner in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(inner, "jaxpr", inner)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


@pytest.mark.parametrize("case", sorted(TREES))
def test_every_conv_and_matmul_computes_in_the_model_dtype(case):
    """Every model path (encoders, upsamplers, heads, the location grid, resizes), traced
    without running: no float32 operand left in a convolution or a matmul, float32 scores."""
    pinned = TREES[case]
    model = get_model(pinned["model"], num_classes=5, dtype="bfloat16", **pinned["options"])
    images = jnp.zeros((1, pinned["input_side"], pinned["input_side"], 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}

    def forward(variables, images):
        return model.apply(
            variables,
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(0)},
        )

    jaxpr = jax.make_jaxpr(forward)(variables, images)
    products = [
        eq
        for eq in _equations(jaxpr.jaxpr)
        if eq.primitive.name in ("conv_general_dilated", "dot_general")
    ]
    assert products
    for equation in products:
        assert {str(v.aval.dtype) for v in equation.invars} == {"bfloat16"}, equation
    scores, updates = jax.eval_shape(forward, variables, images)
    assert scores.dtype == jnp.float32
    assert {leaf.dtype for leaf in jax.tree.leaves(updates)} <= {jnp.dtype(jnp.float32)}


# Every registered model, small. ResNet-18 stands in for VGG16 (same FCN and Hypercolumn
# code, a fraction of the parameters); the VGG16 path is traced in the test above.
SMALL = [
    ("fcn32s", {"encoder": "resnet18"}, 32),
    ("fcn16s", {"encoder": "resnet18"}, 32),
    ("fcn8s", {"encoder": "resnet18"}, 32),
    ("fcn8s", {"encoder": "resnet18", "upsample": "resize"}, 32),
    ("hypercolumn", {"encoder": "resnet18", "location_grid": 2}, 32),
    ("unet", {"base_features": 8, "depth": 2}, 32),
    ("unet", {"base_features": 8, "depth": 2, "upsample": "resize"}, 32),
    ("unet_original", {"base_features": 8, "depth": 2}, unet_input_size(20, 2)),
]
# Largest |scores - float32 scores| / largest |float32 scores| (inference mode, and training
# mode for the U-Nets). Measured:
# bfloat16 0.010-0.025, float16 0.0011-0.0044.
TOLERANCE = {"bfloat16": 0.06, "float16": 0.01}


def perturbed_variables(model, images):
    """Initial variables with every parameter perturbed, so that zero-initialised score
    layers give non-zero scores. The initialisation is jitted with RBG keys (XLA:CPU compiles
    a threefry draw per layer slowly, and eager initialisation is slower still); the noise
    is drawn by numpy (a draw per leaf in XLA doubled the compile time)."""
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)
    noise = np.random.default_rng(1)
    params = jax.tree.map(
        lambda p: np.asarray(p) + 0.05 * noise.standard_normal(p.shape, np.float32),
        variables["params"],
    )
    return {**variables, "params": jax.device_put(params)}


def _scores(model, variables, images, train: bool):
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    return apply(variables, images, train=train, mutable="batch_stats")[0]


@pytest.mark.parametrize("name, options, side", SMALL)
def test_low_precision_scores_are_close_to_float32(name, options, side):
    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, side, side, 3)), jnp.float32)
    variables = perturbed_variables(get_model(name, num_classes=4, **options), images)
    # Training mode (batch statistics) too where the batch norm sees enough values: ResNet's
    # 1x1 layer4 maps at batch 2 normalise two numbers, where any rounding is magnified.
    modes = [False, True] if name.startswith("unet") else [False]
    for train in modes:
        want = _scores(get_model(name, num_classes=4, **options), variables, images, train)
        for dtype, tolerance in TOLERANCE.items():
            model = get_model(name, num_classes=4, dtype=dtype, **options)
            got = _scores(model, variables, images, train)
            assert got.dtype == jnp.float32
            error = float(jnp.abs(got - want).max() / jnp.abs(want).max())
            assert error < tolerance, (dtype, train, error)
            assert float((got.argmax(-1) == want.argmax(-1)).mean()) > 0.97, (dtype, train)


def test_an_unknown_dtype_is_a_config_error(data_dir):
    with pytest.raises(ConfigError, match=r"model.dtype='float64'.*'float32', 'bfloat16'"):
        get_model("unet", num_classes=2, dtype="float64")
    config = tiny_config(data_dir)
    config.model.dtype = "half"
    with pytest.raises(ConfigError, match="model.dtype='half'"):
        build_run(config)


def _train_on_one_batch(data_dir, dtype: str, steps: int):
    """(losses, final state) of `steps` steps of the tiny config on its first batch."""
    config = tiny_config(data_dir)
    config.model.dtype = dtype
    config.optim.schedule = "constant"
    run = build_run(config)
    batch = run.layout.put_batch(next(run.train_batches()))
    state, losses = run.init_state(), []
    for _ in range(steps):
        state, metrics = run.train_step(state, batch, run.step_rng)
        losses.append(float(metrics["loss_sum"] / metrics["loss_weight"]))
    return losses, state


def test_bfloat16_training_lowers_the_loss(data_dir):
    losses, state = _train_on_one_batch(data_dir, "bfloat16", 8)
    assert type(state) is TrainState  # no loss scale: the checkpoint tree of float32
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert {leaf.dtype for leaf in jax.tree.leaves(variables_of(state))} == {jnp.dtype(jnp.float32)}


def test_float16_training_runs_with_a_loss_scale(data_dir):
    losses, state = _train_on_one_batch(data_dir, "float16", 8)
    assert isinstance(state, LossScaledTrainState)
    assert all(np.isfinite(losses)) and losses[-1] < 0.8 * losses[0], losses
    assert float(state.loss_scale.scale) >= 1.0
    assert int(state.step) == 8


def test_a_float16_run_checkpoints_its_loss_scale_and_resumes(data_dir, tmp_path):
    overrides = {"model.dtype": "float16", "train.num_steps": 2, "train.log_every": 1}
    train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path))
    overrides["train.num_steps"] = 3
    train_and_evaluate(tiny_config(data_dir, **overrides), str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        steps = [r["step"] for r in map(json.loads, f) if r["split"] == "train"]
    assert steps == [1, 2, 3]
    trained = load_run(str(tmp_path))
    assert trained.step == 3 and trained.model.dtype == "float16"


def _scaled_state(period=3):
    params = {"w": jnp.ones((3,))}
    return LossScaledTrainState.create(
        apply_fn=None,
        params=params,
        batch_stats={"mean": jnp.zeros((3,))},
        tx=optax.sgd(0.1),
        loss_scale=LossScale.create(initial=8.0, period=period),
    )


def test_the_loss_scale_skips_an_overflowing_step_and_lowers_the_scale():
    state = _scaled_state()
    step = jax.jit(apply_scaled_gradients)
    stats = {"mean": jnp.ones((3,))}
    # Gradients of the loss scaled by 8: 8 * (1, 2, 3) unscale to (1, 2, 3).
    state = step(state, {"w": 8.0 * jnp.array([1.0, 2.0, 3.0])}, stats)
    np.testing.assert_allclose(state.params["w"], 1 - 0.1 * np.array([1.0, 2.0, 3.0]))
    assert (float(state.loss_scale.scale), int(state.loss_scale.good_steps)) == (8.0, 1)
    before = state
    for bad in (jnp.inf, jnp.nan):
        state = step(state, {"w": jnp.array([1.0, bad, 3.0])}, {"mean": jnp.full((3,), 7.0)})
        # Nothing moves but the step counter and the scale.
        np.testing.assert_array_equal(state.params["w"], before.params["w"])
        np.testing.assert_array_equal(state.batch_stats["mean"], before.batch_stats["mean"])
        assert int(state.loss_scale.good_steps) == 0
    assert float(state.loss_scale.scale) == 2.0  # 8 / 2 / 2
    assert int(state.step) == 3


def test_the_loss_scale_grows_after_a_period_of_finite_steps_and_stays_at_least_one():
    state = _scaled_state(period=3)
    step = jax.jit(apply_scaled_gradients)
    grads, stats = {"w": jnp.ones((3,))}, {"mean": jnp.zeros((3,))}
    scales = []
    for _ in range(6):
        state = step(state, grads, stats)
        scales.append(float(state.loss_scale.scale))
    assert scales == [8.0, 8.0, 16.0, 16.0, 16.0, 32.0]
    for _ in range(8):
        state = step(state, {"w": jnp.full((3,), jnp.inf)}, stats)
    assert float(state.loss_scale.scale) == 1.0
