"""Objects far larger than the median object of the same prediction are split again, shallower (3D)."""

from __future__ import annotations

import numpy as np

from napari_attention_unet.core.instances import (
    RESPLIT_DEPTH_3D,
    RESPLIT_MIN_SHARE,
    SPLIT_LARGE_3D,
    probabilities_to_instances,
    split_large_objects,
)

SHAPE = (24, 24, 112)


def balls(centres, radii, shape=SHAPE) -> np.ndarray:
    """Instance ids of balls (the first one drawn keeps a voxel two balls share)."""
    grid = np.indices(shape)
    ids = np.zeros(shape, np.int32)
    for i, (centre, radius) in enumerate(zip(centres, radii), start=1):
        inside = sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius**2
        ids[inside & (ids == 0)] = i
    return ids


def cores(ids: np.ndarray) -> np.ndarray:
    """Each object less its one-voxel rim, as a network's interior class is."""
    from scipy import ndimage

    return ndimage.grey_erosion(ids, size=3) == ids


def test_a_merged_pair_is_split_and_single_objects_are_left_alone():
    # four single balls, a larger single ball, and two touching balls under one id (a merge)
    centres = [(12, 12, 8), (12, 12, 22), (12, 12, 36), (12, 12, 50), (12, 12, 66), (12, 12, 86), (12, 12, 97)]
    radii = [5, 5, 5, 5, 7, 5.5, 5.5]
    truth = balls(centres, radii)
    merged = np.where(truth == 7, 6, truth)
    interior = cores(truth) & (merged > 0)
    sizes = np.bincount(merged.ravel())[1:]
    assert sizes[5] > SPLIT_LARGE_3D * np.median(sizes) and sizes[4] > SPLIT_LARGE_3D * np.median(sizes)

    split = split_large_objects(merged.copy(), interior, SPLIT_LARGE_3D, RESPLIT_DEPTH_3D)
    assert len(np.unique(split)) - 1 == 7
    for i in range(1, 8):  # every true object is one predicted object again
        assert len(np.unique(split[truth == i])) == 1
    assert (split[truth == 5] == 5).all()  # the large single ball (one peak) kept its id
    np.testing.assert_array_equal(split[merged < 6], merged[merged < 6])
    # off when nothing is large, or with too few objects to have a median
    np.testing.assert_array_equal(split_large_objects(merged.copy(), interior, 100.0, RESPLIT_DEPTH_3D), merged)
    two = np.where(merged >= 5, merged - 4, 0)
    np.testing.assert_array_equal(split_large_objects(two.copy(), interior, SPLIT_LARGE_3D, RESPLIT_DEPTH_3D), two)


def test_a_split_that_leaves_a_small_piece_is_not_kept():
    """A large object with a small lobe stays one object: each piece must be a share of the median object."""
    centres = [(12, 12, 8), (12, 12, 22), (12, 12, 36), (12, 12, 60), (12, 12, 71)]
    truth = balls(centres, [5, 5, 5, 7, 3])
    lobed = np.where(truth == 5, 4, truth)
    sizes = np.bincount(lobed.ravel())[1:]
    assert (truth == 5).sum() < RESPLIT_MIN_SHARE * np.median(sizes) and sizes[3] > SPLIT_LARGE_3D * np.median(sizes)
    interior = cores(truth) & (lobed > 0)
    np.testing.assert_array_equal(split_large_objects(lobed.copy(), interior, SPLIT_LARGE_3D, 0.01), lobed)


def probabilities(truth: np.ndarray) -> np.ndarray:
    """Classes of the objects' union: overlapping balls share one interior, joined by a neck."""
    foreground = truth > 0
    interior = cores(foreground.astype(np.int32)) & foreground
    boundary = foreground & ~interior
    return np.stack([truth == 0, interior, boundary]).astype(np.float32)


def test_the_instance_step_splits_large_objects_again_in_3d_by_default_and_not_in_2d():
    """With a first split too deep to separate anything, the second look at large objects still does (3D)."""
    centres = [(12, 12, 8), (12, 12, 22), (12, 12, 36), (12, 12, 50), (12, 12, 64), (12, 12, 72)]
    truth = balls(centres, [5, 5, 5, 5, 5, 5])
    probs = probabilities(truth)
    assert probabilities_to_instances(probs, split_depth=50.0, split_large=0).max() == 5  # the touching pair merged
    assert probabilities_to_instances(probs, split_depth=50.0).max() == 6  # the 3D default looks again
    plane = probs[:, 12]  # the same scene in 2D: off by default there
    assert probabilities_to_instances(plane, split_depth=50.0, min_size=4).max() == 5
    assert probabilities_to_instances(plane, split_depth=50.0, min_size=4, split_large=SPLIT_LARGE_3D).max() == 6
