"""Parameter paths are an API: every model builds exactly the variable tree pinned in
tests/fixtures/param_trees.json (written by tests/fixtures/make_fixtures.py before the
models were restructured), and a run checkpointed by that older code still restores."""

import json
import pathlib

import pytest

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
TREES = json.loads((FIXTURES / "param_trees.json").read_text())


@pytest.mark.parametrize("case", sorted(TREES))
def test_variable_tree_is_unchanged(case):
    from fixtures.make_fixtures import variable_tree

    from jaxseg.models import get_model

    pinned = TREES[case]
    model = get_model(pinned["model"], num_classes=5, **pinned["options"])
    assert variable_tree(model, pinned["input_side"]) == pinned["variables"]


def test_every_registered_model_is_pinned():
    from jaxseg.models import model_names

    assert set(model_names()) <= {case["model"] for case in TREES.values()}


OS8 = {"encoder": "resnet18", "encoder_options": {"output_stride": 8}}


@pytest.mark.parametrize(
    "name, options, multiple, period, padded, position_dependent, global_context",
    [
        ("unet", {"base_features": 4}, 16, 16, False, False, False),
        ("unet", {"encoder": "resnet18"}, 32, 32, False, False, False),
        ("unet_original", {"base_features": 4}, 1, 16, True, False, False),
        ("fcn8s", {}, 32, 32, False, False, False),
        ("fcn8s", {"alignment": "caffe"}, 1, 32, False, False, False),
        ("fcn8s", OS8, 8, 8, False, False, False),
        ("hypercolumn", {}, 32, 32, False, False, False),
        ("hypercolumn", {"location_grid": 2}, 32, 32, False, True, False),
        # Tiles may be used, though image pooling and global attention make them (and any
        # padding) change the prediction everywhere, not only near the tile's edges.
        ("deeplabv3", {"encoder": "resnet18"}, 8, 8, False, False, True),
        ("deeplabv3plus", {}, 16, 16, False, False, True),
        ("segformer", {}, 32, 32, False, False, True),
    ],
)
def test_models_declare_their_input_needs(
    name, options, multiple, period, padded, position_dependent, global_context
):
    from jaxseg.models import get_model

    model = get_model(name, num_classes=3, **options)
    assert model.input_multiple() == multiple
    assert model.tile_period() == period
    assert (model.input_padding(64, 70) is not None) == padded
    assert model.position_dependent() == position_dependent
    assert model.global_context() == global_context
