import numpy as np
import pytest
import scipy.ndimage as ndi

from jaxseg.data.weights import unet_weight_map


def _two_cells(gap=4):
    instances = np.zeros((40, 60), np.int32)
    instances[10:30, 5:25] = 1
    instances[10:30, 25 + gap : 45 + gap] = 2
    return (instances > 0).astype(np.int32), instances


def _reference(mask, instances, class_weights, w0, sigma):
    """The formula with full distance transforms, no windows."""
    distances = np.sort(
        np.stack(
            [ndi.distance_transform_edt(instances != i) for i in range(1, instances.max() + 1)]
        ),
        axis=0,
    )
    border = w0 * np.exp(-((distances[0] + distances[1]) ** 2) / (2 * sigma**2))
    return np.asarray(class_weights)[mask] + np.where(mask == 0, border, 0)


def test_matches_the_formula():
    mask, instances = _two_cells()
    got = unet_weight_map(mask, instances, (0.5, 2.0), w0=10, sigma=5)
    expected = _reference(mask, instances, (0.5, 2.0), 10, 5)
    np.testing.assert_allclose(got, expected, atol=1e-2)  # windows drop terms < 1e-3 w0


def test_gap_between_touching_cells_weighs_most():
    mask, instances = _two_cells(gap=4)
    weights = unet_weight_map(mask, instances, (1.0, 1.0), w0=10, sigma=5)
    gap_centre = weights[20, 26:29].mean()  # d1 = d2 ~ 1.5-2 px
    assert gap_centre == pytest.approx(1 + 10 * np.exp(-(4**2) / 50), rel=0.15)
    assert weights[0, 0] == pytest.approx(1.0, abs=1e-3)  # far background: class weight only
    np.testing.assert_allclose(weights[instances > 0], 1.0)  # the border term is for background


def test_ignored_pixels_weigh_zero_and_single_cell_has_no_border_term():
    mask, instances = _two_cells()
    instances[instances == 2] = 0
    mask = (instances > 0).astype(np.int32)
    mask[0, :5] = 255
    weights = unet_weight_map(mask, instances, (1.0, 3.0))
    assert (weights[0, :5] == 0).all()
    np.testing.assert_allclose(weights[mask == 0], 1.0)  # d2 is infinite everywhere
