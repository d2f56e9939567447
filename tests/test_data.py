"""Axes, channels, normalisation, targets and instance post-processing."""

from pathlib import Path

import numpy as np
import pytest

from napari_attention_unet.core.images import ImageShapeError, guess_axes, match_channels, normalize, to_channel_first
from napari_attention_unet.core.instances import (
    BOUNDARY,
    INTERIOR,
    as_instances,
    instances_to_classes,
    probabilities_to_instances,
)


@pytest.mark.parametrize(
    ("shape", "axes"),
    [((64, 64), "YX"), ((64, 64, 3), "YXC"), ((64, 64, 4), "YXC"), ((5, 64, 64), "ZYX"), ((5, 64, 64, 3), "ZYXC")],
)
def test_guess_axes(shape, axes):
    assert guess_axes(shape) == axes


def test_a_short_axis_is_channels_where_planes_would_make_no_sense():
    assert guess_axes((64, 64, 2)) == "YXC"  # not 64 planes of 64 x 2 pixels
    assert guess_axes((64, 64, 2), rgb=False) == "ZYX"  # a layer that says it is no colour image
    assert guess_axes((2, 64, 64)) == "ZYX"  # two planes, unless something says channels:
    assert guess_axes((2, 64, 64), channels=2) == "CYX"  # a model of two input channels
    assert guess_axes((2, 64, 64), pick=True) == "CYX"  # one channel to pick (--channel)
    assert guess_axes((3, 64, 64), channels=3) == "ZYX"  # three planes stay planes for a colour model
    assert guess_axes((2, 16, 64, 64), channels=2) == "CZYX"
    assert guess_axes((8, 64, 64), channels=8) == "ZYX"  # more than 4: planes


def test_unsupported_shapes_explain_themselves():
    with pytest.raises(ImageShapeError, match="4D image"):
        guess_axes((2, 5, 64, 64))
    with pytest.raises(ImageShapeError, match="5 dimensions"):
        guess_axes((1, 2, 3, 4, 5))
    with pytest.raises(ImageShapeError, match="do not describe"):
        to_channel_first(np.zeros((4, 4)), "ZYX")


def test_channel_first_orders_axes():
    image = np.zeros((2, 5, 6, 7))  # CZYX
    out, spatial = to_channel_first(image, "CZYX")
    assert out.shape == (2, 5, 6, 7) and spatial == "ZYX"
    out, spatial = to_channel_first(np.zeros((6, 7, 3)), None)
    assert out.shape == (3, 6, 7) and spatial == "YX"
    out, spatial = to_channel_first(np.zeros((6, 2, 7)), "YCX")
    assert out.shape == (2, 6, 7)


def test_match_channels():
    grey = np.random.rand(1, 8, 8).astype(np.float32)
    assert match_channels(grey, 3).shape == (3, 8, 8)
    rgba = np.random.rand(4, 8, 8).astype(np.float32)
    assert match_channels(rgba, 3).shape == (3, 8, 8)
    assert np.allclose(match_channels(rgba, 1)[0], rgba[:3].mean(0))
    with pytest.raises(ImageShapeError, match="takes 3 channel"):
        match_channels(np.zeros((5, 8, 8)), 3)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64])
def test_normalize_any_dtype(dtype):
    rng = np.random.default_rng(0)
    image = (rng.random((1, 64, 64)) * 200).astype(dtype)
    out = normalize(image)
    assert out.dtype == np.float32
    assert -0.05 < np.percentile(out, 1) < 0.05 and 0.95 < np.percentile(out, 99.8) < 1.05


def test_normalize_keeps_float64_values_past_float32_range():
    """A float64 image of values near 1e300 (past float32's 3e38) normalises as the same image scaled
    down does; it was all zeros (every value infinite in float32), so prediction found nothing."""
    image = np.random.default_rng(0).random((1, 64, 64)) * 200
    np.testing.assert_allclose(normalize(image * 1e298), normalize(image), atol=1e-5)
    np.testing.assert_allclose(normalize(image * 1e298 - 1e300), normalize(image), atol=1e-5)


def test_normalize_constant_image_is_zero_not_nan():
    out = normalize(np.full((2, 16, 16), 7, dtype=np.uint16))
    assert np.all(out == 0)


def test_touching_instances_are_separated_by_boundary():
    labels = np.zeros((20, 30), np.uint16)
    labels[5:15, 5:15] = 1
    labels[5:15, 15:25] = 2  # touches object 1
    classes = instances_to_classes(labels)
    assert classes[10, 14] == BOUNDARY and classes[10, 15] == BOUNDARY
    assert classes[10, 10] == INTERIOR and classes[0, 0] == 0
    # a binary mask is split into connected components first
    binary = instances_to_classes(labels > 0)
    assert binary[10, 10] == INTERIOR and binary[10, 14] == INTERIOR
    # so is a 0/255 mask (Fiji), which was one object of id 255 (fine-tuning on it learnt no boundaries)
    two = np.zeros((20, 40), np.uint8)
    two[5:15, 5:15] = two[5:15, 20:30] = 255
    np.testing.assert_array_equal(as_instances(two), as_instances(two > 0))
    assert as_instances(two).max() == 2
    # a few pixels of other values (a smoothed edge, a stray 254) leave it a mask: values of 128 and above are in
    big = np.zeros((20, 40), np.uint8)
    big[2:18, 2:18] = big[2:18, 20:36] = 255
    stray = big.copy()
    stray[5, 5], stray[17, 35], stray[0, 39] = 254, 200, 3  # 3 of 512 labelled pixels
    np.testing.assert_array_equal(as_instances(stray), as_instances(big))
    # ids whose largest is 255 are objects, not a mask
    ids = np.zeros((20, 40), np.uint8)
    ids[5:15, 5:15], ids[5:15, 20:30], ids[0, 0] = 255, 254, 7
    assert (as_instances(ids) == ids).all()


def test_watershed_splits_touching_objects():
    truth = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    truth[(yy - 20) ** 2 + (xx - 20) ** 2 < 150] = 1
    truth[(yy - 20) ** 2 + (xx - 40) ** 2 < 150] = 2
    classes = instances_to_classes(truth)
    probabilities = np.stack([classes == c for c in range(3)]).astype(np.float32)
    labels = probabilities_to_instances(probabilities)
    assert labels.max() == 2
    assert labels[20, 20] != labels[20, 40] and labels[20, 20] > 0 and labels[0, 0] == 0


def test_watershed_splits_touching_objects_without_a_boundary_between_them():
    # Two overlapping discs predicted as ONE interior blob (no boundary pixels where they
    # touch, as the network often does): the narrowing of the blob still separates them.
    yy, xx = np.mgrid[:48, :80]
    left = (yy - 24) ** 2 + (xx - 25) ** 2 < 15**2
    right = (yy - 24) ** 2 + (xx - 53) ** 2 < 15**2
    blob = (left | right).astype(np.int32)
    classes = instances_to_classes(blob)
    probabilities = np.stack([classes == c for c in range(3)]).astype(np.float32)
    labels = probabilities_to_instances(probabilities)
    assert labels.max() == 2
    assert labels[24, 20] != labels[24, 58] and labels[24, 20] > 0 and labels[24, 58] > 0
    # every foreground pixel is assigned, and the split runs near the waist (x = 39)
    assert np.array_equal(labels > 0, blob > 0)
    assert labels[24, 35] == labels[24, 20] and labels[24, 43] == labels[24, 58]
    # one round disc is never split
    disc = instances_to_classes(left.astype(np.int32))
    single = probabilities_to_instances(np.stack([disc == c for c in range(3)]).astype(np.float32))
    assert single.max() == 1


def test_watershed_drops_tiny_objects_and_handles_empty():
    probabilities = np.zeros((3, 30, 30), np.float32)
    probabilities[0] = 1
    assert probabilities_to_instances(probabilities).max() == 0
    probabilities[:, 2:4, 2:4] = [[[0]], [[1]], [[0]]]  # a 4-pixel speck
    assert probabilities_to_instances(probabilities, min_size=8).max() == 0


def test_interior_distance_part_by_part_equals_the_whole_transform():
    # The instance step takes the distance transform on each interior part's box; it must be the
    # transform of the whole mask: on real nuclei masks (parts at the border, touching ones) and on
    # irregular 2D and 3D blobs, one of which fills the image but for one pixel.
    import tifffile
    from scipy import ndimage
    from skimage.measure import label

    from napari_attention_unet.core.instances import _interior_distance

    rng = np.random.default_rng(0)
    masks = [tifffile.imread(p) > 0 for p in sorted((Path(__file__).parent / "data" / "masks").glob("*.tif"))[:4]]
    masks += [ndimage.gaussian_filter(rng.random(shape), 2) > 0.5 for shape in ((64, 80), (24, 40, 36), (50, 50))]
    full = np.ones((20, 30), bool)
    full[5, 7] = False
    masks += [full, np.ones((6, 7), bool)]
    for mask in masks:
        interior = (instances_to_classes(mask) == INTERIOR) if mask.ndim == 2 and mask.mean() < 0.9 else mask
        parts = label(interior)
        expected = ndimage.distance_transform_edt(interior).astype(np.float32)
        assert np.array_equal(_interior_distance(interior, parts, ndimage.find_objects(parts)), expected)
