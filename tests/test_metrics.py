"""Instance matching at IoU 0.5 (core.metrics) on real DSB 2018 masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_attention_unet.core.metrics import average_precision, match_counts

MASKS = Path(__file__).parent / "data" / "masks"


@pytest.fixture(scope="module")
def truth() -> np.ndarray:
    return tifffile.imread(sorted(MASKS.glob("*.tif"))[0]).astype(np.int32)


def test_identical_and_relabelled_objects_all_match(truth):
    n = len(np.unique(truth)) - 1
    assert match_counts(truth, truth) == (n, 0, 0)
    shuffled = np.concatenate([[0], np.random.default_rng(0).permutation(np.arange(1, truth.max() + 1))])
    assert match_counts(truth, shuffled[truth] * 7) == (n, 0, 0)
    assert average_precision(truth, truth) == 1.0


def test_missing_merged_and_extra_objects(truth):
    ids = np.unique(truth)[1:]
    n = len(ids)
    assert match_counts(truth, np.zeros_like(truth)) == (0, 0, n)
    assert average_precision(np.zeros_like(truth), np.zeros_like(truth)) == 1.0
    # Drop one object, merge two others of unequal size into the larger one, add one false object.
    sizes = {i: np.count_nonzero(truth == i) for i in ids}
    a, b = sorted(ids[1:], key=lambda i: sizes[i])[-2:][::-1]  # the two largest, a >= b
    pred = truth.copy()
    pred[truth == ids[0]] = 0
    pred[truth == b] = a
    # IoU of the merged object with a is sizes[a] / (sizes[a] + sizes[b]) > 0.5, so it still matches a.
    extra = np.zeros_like(truth)
    extra[:5, :5] = 1
    pred[(extra > 0) & (truth == 0)] = truth.max() + 1
    tp, fp, fn = match_counts(truth, pred)
    assert (tp, fn) == (n - 2, 2)
    assert fp == 1
    assert average_precision(truth, pred) == pytest.approx((n - 2) / (n + 1))


def test_shapes_must_agree(truth):
    with pytest.raises(ValueError, match="shape"):
        match_counts(truth, truth[:-1])
