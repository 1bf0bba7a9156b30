"""The ISBI 2012 challenge scores on hand-made segmentations."""

import numpy as np
import pytest

from jaxseg.evaluation.membrane_scores import isbi_scores, scores, thin_borders


def _two_cells(width=12):
    """Two cells side by side, separated by a 2-pixel membrane."""
    cells = np.ones((1, 8, width), bool)
    cells[:, :, 5:7] = False
    return cells


def test_a_perfect_proposal_scores_one_at_some_threshold():
    cells = _two_cells()
    result = isbi_scores(np.where(cells, 0.9, 0.1), cells)
    assert result["v_rand"] == pytest.approx(1.0) and result["v_info"] == pytest.approx(1.0)
    assert 0.1 <= result["v_rand_threshold"] < 0.9


def test_a_merge_and_a_split_are_scored_as_the_formulas_say():
    true = np.array([1, 1, 2, 2])
    merged = scores(true, np.array([5, 5, 5, 5]))
    # p = (1/2, 1/2): sum p^2 = 1/2; s = (1): 1; t = (1/2, 1/2): 1/2
    assert merged["v_rand_split"] == pytest.approx(1.0)  # nothing split
    assert merged["v_rand_merge"] == pytest.approx(0.5)
    assert merged["v_rand"] == pytest.approx(2 / 3)
    assert merged["v_info"] == pytest.approx(0.0, abs=1e-12)  # I = 0
    split = scores(true, np.array([1, 3, 2, 4]))
    assert split["v_rand_split"] == pytest.approx(0.5)
    assert split["v_rand_merge"] == pytest.approx(1.0)  # nothing merged
    # I = H(T) = log 2, H(S) = log 4: split I/H(S) = 1/2, merge I/H(T) = 1
    assert split["v_info_split"] == pytest.approx(0.5)
    assert split["v_info_merge"] == pytest.approx(1.0)
    assert split["v_info"] == pytest.approx(np.log(2) / (0.5 * np.log(2) + 0.5 * np.log(4)))


def test_thinning_hands_membrane_pixels_to_neighbouring_cells():
    segments = np.array([[1, 1, 0, 0, 2, 2]])
    grown = thin_borders(segments, np.ones((1, 6), bool))
    assert (grown > 0).all() and set(grown[0, :2]) == {1} and set(grown[0, 4:]) == {2}
    assert (thin_borders(np.zeros((2, 2), int), np.ones((2, 2), bool)) == 1).all()


def test_a_missing_membrane_merges_cells_and_lowers_v_rand():
    cells = _two_cells()
    leaky = np.where(cells, 0.9, 0.1)
    leaky[:, 3:5, 5:7] = 0.8  # a gap in the membrane: the two cells touch
    perfect = isbi_scores(np.where(cells, 0.9, 0.1), cells)["v_rand"]
    assert isbi_scores(leaky, cells, thresholds=(0.5,))["v_rand"] < perfect
    # at a threshold above the gap's probability the cells are separate again
    assert isbi_scores(leaky, cells)["v_rand"] == pytest.approx(1.0)
