"""The ISBI 2012 EM segmentation challenge's scores (Arganda-Carreras et al. 2015,
"Crowdsourcing the creation of image segmentation algorithms for connectomics").

Cell membranes separate cells; a segmentation is judged by the cells it splits
and merges, not by its pixels. For a threshold t, the pixels whose cell
probability exceeds t form the proposal's cells: its 4-connected components.
Its membrane pixels are then given to the neighbouring cells by growing them
one pixel at a time ("border thinning"), until no membrane pixel remains inside
the ground truth's cells, and the scores are computed on the ground truth's
cell pixels only ("foreground-restricted"), over all slices together:

  with p_ij the fraction of those pixels in proposed cell i and true cell j,
  s_i = sum_j p_ij, t_j = sum_i p_ij,
  V_Rand = sum p_ij^2 / (0.5 sum t_j^2 + 0.5 sum s_i^2)
  V_Info = I(S; T) / (0.5 H(T) + 0.5 H(S))

Both are 1 for a perfect segmentation, the harmonic means of a "split" part,
which only cells the proposal splits lower (sum p_ij^2 / sum t_j^2, I / H(S)),
and a "merge" part, which only cells it merges lower (sum p_ij^2 / sum s_i^2,
I / H(T)). Each score is maximised over the thresholds.
"""

import numpy as np
import scipy.ndimage as ndi

THRESHOLDS = tuple(np.round(np.arange(0.0, 1.0, 0.1), 1))


def thin_borders(segments: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """Grows the labelled segments (0 = border) one pixel per pass into the border pixels,
    until no border pixel lies in `foreground`."""
    segments = segments.copy()
    if segments.max() == 0:  # no segment at all: the whole slice is one
        segments[:] = 1
        return segments
    while (unassigned := (segments == 0) & foreground).any():
        zeros = segments == 0
        segments[zeros] = ndi.maximum_filter(segments, size=3)[zeros]
        if not ((segments == 0) & foreground).sum() < unassigned.sum():
            break  # cannot happen with a segment in the slice; guards the loop
    return segments


def _contingency(true_segments, proposed_segments) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p_ij, t_j, s_i) as fractions, over pairs of flattened label arrays."""
    pairs = np.stack([true_segments, proposed_segments]).astype(np.int64)
    _, counts = np.unique(pairs, axis=1, return_counts=True)
    _, true_counts = np.unique(true_segments, return_counts=True)
    _, proposed_counts = np.unique(proposed_segments, return_counts=True)
    total = counts.sum()
    return counts / total, true_counts / total, proposed_counts / total


def _entropy(p: np.ndarray) -> float:
    return float(-np.sum(p * np.log(p)))


def scores(true_segments, proposed_segments) -> dict:
    """V_Rand and V_Info (and their split/merge parts) of labelled segments on the same
    (foreground) pixels."""
    joint, true_part, proposed_part = _contingency(true_segments, proposed_segments)
    agreement = float(np.sum(joint**2))
    rand_split = agreement / float(np.sum(true_part**2))
    rand_merge = agreement / float(np.sum(proposed_part**2))
    h_true, h_proposed, h_joint = _entropy(true_part), _entropy(proposed_part), _entropy(joint)
    information = h_true + h_proposed - h_joint
    info_split = information / h_proposed if h_proposed else 1.0  # one proposed cell: no split
    info_merge = information / h_true if h_true else 1.0  # one true cell: nothing to merge
    return {
        "v_rand": 2 / (1 / rand_split + 1 / rand_merge),
        "v_rand_split": rand_split,
        "v_rand_merge": rand_merge,
        "v_info": information / (0.5 * h_true + 0.5 * h_proposed) if h_true + h_proposed else 1.0,
        "v_info_split": info_split,
        "v_info_merge": info_merge,
    }


def isbi_scores(cell_probabilities, true_cells, thresholds=THRESHOLDS) -> dict:
    """The challenge's maximal V_Rand and V_Info (after thinning) over `thresholds`.

    Args:
      cell_probabilities: (N, H, W) probability that a pixel is inside a cell (not membrane).
      true_cells: (N, H, W) bool, the ground truth's cell pixels.
      thresholds: a pixel is proposed as cell when its probability exceeds one of these.

    Returns:
      {"v_rand", "v_rand_threshold", "v_info", "v_info_threshold", and the split/merge
      parts at each best threshold}.
    """
    true_cells = np.asarray(true_cells, bool)
    # Segments numbered across slices, so that the slices' contingencies add up.
    true_labels, offset = [], 0
    for cells in true_cells:
        labels, count = ndi.label(cells)
        true_labels.append(np.where(cells, labels + offset, 0))
        offset += count
    true_flat = np.concatenate([labels[cells] for labels, cells in zip(true_labels, true_cells)])
    best = {}
    for threshold in thresholds:
        proposed, offset = [], 0
        for probabilities, cells in zip(np.asarray(cell_probabilities), true_cells):
            labels, count = ndi.label(probabilities > threshold)
            thinned = thin_borders(labels, cells)
            proposed.append(np.where(thinned > 0, thinned + offset, 0)[cells])
            offset += max(count, 1)
        result = scores(true_flat, np.concatenate(proposed))
        for name in ("v_rand", "v_info"):
            if name not in best or result[name] > best[name]:
                best[name] = result[name]
                best[f"{name}_threshold"] = float(threshold)
                best[f"{name}_split"] = result[f"{name}_split"]
                best[f"{name}_merge"] = result[f"{name}_merge"]
    return best
