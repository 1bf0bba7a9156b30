import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxseg.models import get_model
from jaxseg.models.hypercolumn import grid_interpolation_weights


def test_grid_weights_interpolate_between_cell_centres():
    weights = grid_interpolation_weights(12, 3)  # cells of 4 pixels, centres at 2, 6, 10
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(weights[0], [1, 0, 0])  # before the first centre: first alone
    np.testing.assert_allclose(weights[11], [0, 0, 1])
    np.testing.assert_allclose(weights[5], [0.125, 0.875, 0])  # pixel centre 5.5 between 2 and 6
    np.testing.assert_allclose(grid_interpolation_weights(7, 1), 1.0)


def _abstract(model, size=64):
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    return variables, jax.eval_shape(lambda v, x: model.apply(v, x), variables, x)


@pytest.mark.parametrize("fusion", ["sum", "concat"])
@pytest.mark.parametrize("grid", [1, 3])
def test_shapes_and_classifier_size(fusion, grid):
    model = get_model(
        "hypercolumn", num_classes=4, projection_features=32, fusion=fusion, location_grid=grid
    )
    variables, out = _abstract(model)
    assert out.shape == (1, 64, 64, 4)
    classifier = variables["params"]["classifier"]["kernel"]
    assert classifier.shape == (1, 1, 32 * (3 if fusion == "concat" else 1), 4 * grid * grid)
    assert set(variables["params"]) >= {"project_pool2", "project_conv4_3", "project_fc7"}


def test_location_specific_classifiers_depend_on_position():
    """With K x K classifiers, a spatially constant input gets a position-dependent output."""
    model = get_model(
        "hypercolumn", num_classes=2, encoder="resnet18", projection_features=8, location_grid=2
    )
    x = jnp.ones((1, 64, 64, 3))
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)
    params = dict(variables["params"])
    bias = np.zeros(2 * 2 * 2, np.float32)
    bias[0] = 5.0  # classifier (0, 0), class 0: the top-left cell
    params["classifier"] = {
        "kernel": jnp.zeros_like(params["classifier"]["kernel"]),
        "bias": jnp.asarray(bias),
    }
    out = jax.jit(model.apply)({**variables, "params": params}, x)
    assert float(out[0, 0, 0, 0]) == pytest.approx(5.0, abs=1e-4)
    assert float(out[0, 63, 63, 0]) == pytest.approx(0.0, abs=1e-4)
    assert 0 < float(out[0, 32, 32, 0]) < 5


def test_unknown_feature_and_bad_fusion():
    with pytest.raises(ValueError, match=r"has no feature\(s\) \['conv9'\]"):
        _abstract(get_model("hypercolumn", num_classes=2, features=("conv9",)))
    with pytest.raises(ValueError, match="fusion 'max' is not one of"):
        _abstract(get_model("hypercolumn", num_classes=2, fusion="max"))
