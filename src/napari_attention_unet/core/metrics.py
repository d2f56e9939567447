"""Instance matching scores (numpy only).

``match_counts`` pairs true and predicted objects at IoU > 0.5, where a match is
necessarily one-to-one (two objects cannot both overlap a third by more than half of
their union), so no assignment problem has to be solved. AP@0.5 as in the DSB 2018 /
StarDist evaluation is ``TP / (TP + FP + FN)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["average_precision", "match_counts"]


def match_counts(true: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) of instance label images (0 = background) matched at IoU > 0.5."""
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {true.shape} vs {pred.shape}")
    true_ids, true_index = np.unique(true, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    n_true, n_pred = len(true_ids), len(pred_ids)
    # Index 0 is background where the image has any; counts below skip it by id, not position.
    overlap = np.bincount(true_index.ravel() * n_pred + pred_index.ravel(), minlength=n_true * n_pred)
    overlap = overlap.reshape(n_true, n_pred)
    t_keep, p_keep = true_ids != 0, pred_ids != 0
    overlap_fg = overlap[t_keep][:, p_keep].astype(np.float64)
    area_true, area_pred = overlap.sum(1)[t_keep], overlap.sum(0)[p_keep]
    union = area_true[:, None] + area_pred[None, :] - overlap_fg
    tp = int(np.count_nonzero(overlap_fg > 0.5 * union))
    n_t, n_p = int(t_keep.sum()), int(p_keep.sum())
    return tp, n_p - tp, n_t - tp


def average_precision(true: np.ndarray, pred: np.ndarray) -> float:
    """AP@0.5 = TP / (TP + FP + FN); 1.0 when both images are empty."""
    tp, fp, fn = match_counts(true, pred)
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
