"""Instance labels and the three classes the network learns for them.

Objects become classes (background / interior / one-pixel boundary) for training, and the
predicted class probabilities become objects again with a seeded watershed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label as connected_components
from skimage.morphology import h_maxima, local_maxima
from skimage.segmentation import find_boundaries, watershed

__all__ = ["as_instances", "instances_to_classes", "probabilities_to_instances", "split_large_objects", "without_gaps"]

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2


#: The split depth of touching objects in 3D. A 3D model's interior is a rim thinner on every axis,
#: so the necks between touching objects are shallower than in 2D: on synthetic volumes of touching
#: ellipsoids held apart for choosing it (seeds 4-6 of benchmarks/bench_instances_3d.py), AP@0.5 was
#: 0.65 at depth 1.0, 0.78 at 0.75, 0.84 at 0.5, 0.93 at 0.2-0.3 and 0.95 at 0.1; 0.25 stays on the
#: plateau, short of the over-splitting that irregular real nuclei would show at the lowest depths.
SPLIT_DEPTH_3D = 0.25

#: The interior threshold of seeds in 3D. The one-voxel boundary rim is a larger share of a 3D
#: object than of a 2D one, and a 3D model's p(interior) sits lower: at 0.5 its interiors broke
#: up. On saved states of two runs of benchmarks/bench_instances_3d.py (8 states each, 600 steps),
#: mean AP@0.5 at 0.5 / 0.3: lumpy nuclei (--irregular 0.2) volumes 4-6 0.652 / 0.727, volumes 1-3
#: 0.626 / 0.695; ellipsoids, volumes 4-6, 0.837 / 0.846 (0.4 and 0.2 scored alike; 0.7 0.360).
SEED_THRESHOLD_3D = 0.3

#: In 3D, an object more than this many times the volume of the median object of the same prediction is
#: likely two or more merged (merges are most of a 3D model's errors, and the ones that swing between
#: training states): it is split again at :data:`RESPLIT_DEPTH_3D`, and the split kept only if every piece is
#: at least :data:`RESPLIT_MIN_SHARE` of the median. On the probabilities of 24 saved states of three
#: step-matched runs (benchmarks/README.md, bench_instances_3d, lumpy nuclei), chosen on volumes 4-6.
SPLIT_LARGE_3D = 1.6
RESPLIT_DEPTH_3D = 0.1
RESPLIT_MIN_SHARE = 0.25


#: A mask saved as 0 and one of these may hold a few pixels of other values (edges smoothed by a resize or
#: a brush with soft edges: a stray 254 made a 0/255 mask "2 objects") and is still a mask ...
MASK_TOPS = (255, 65535)
#: ... when they are at most this share of its labelled pixels.
MASK_STRAYS = 0.01


def mask_top(labels: np.ndarray):
    """The one value other than 0 of a label image that holds 0 and that value only (a mask: 0/1,
    Fiji's 0/255; a 0/255 or 0/65535 mask may hold up to :data:`MASK_STRAYS` of other values, see
    :func:`as_mask`); None when it holds several values, or only 0."""
    labels = np.asarray(labels)
    top = labels.max(initial=0)
    if top == 0:
        return None
    at_top = np.count_nonzero(labels == top)
    others = np.count_nonzero(labels) - at_top
    return top if others == 0 or (top in MASK_TOPS and others <= MASK_STRAYS * at_top) else None


def as_mask(labels: np.ndarray, top) -> np.ndarray:
    """A mask whose value is ``top`` (:func:`mask_top`) as 0/1: pixels of at least half of it are in (the
    smoothed edges), the rest out."""
    return (np.asarray(labels) >= top / 2).astype(np.uint8)


def as_instances(labels: np.ndarray) -> np.ndarray:
    """Instance ids as they are; a binary mask (bool, 0/1, or 0 and one other value such as Fiji's
    0/255, :func:`mask_top`) split into its connected components."""
    labels = np.asarray(labels)
    if labels.dtype == bool or labels.max(initial=0) <= 1:
        return connected_components(labels > 0)
    top = mask_top(labels)
    return labels if top is None else connected_components(as_mask(labels, top))


def instances_to_classes(labels: np.ndarray) -> np.ndarray:
    """Instance (or binary) labels -> uint8 classes: 0 background, 1 interior, 2 boundary.

    Binary masks are split into connected components first. The boundary is the
    inner one-pixel rim of each object, which is what separates touching objects.
    """
    labels = as_instances(labels)
    classes = (labels > 0).astype(np.uint8)
    classes[find_boundaries(labels, mode="inner") & (labels > 0)] = BOUNDARY
    return classes


def probabilities_to_instances(
    probabilities: np.ndarray,
    threshold: float = 0.5,
    seed_threshold: float | None = None,
    min_size: int = 16,
    split_depth: float | None = None,
    smoothing: float = 1.0,
    split_large: float | None = None,
) -> np.ndarray:
    """Instances from (background, interior, boundary) probabilities by a seeded watershed.

    The interior (``p(interior) > seed_threshold`` inside the foreground
    ``1 - p(background) > threshold``) is split where it narrows: each peak of its
    smoothed distance transform that stands at least ``split_depth`` pixels above
    the saddle to its neighbours seeds one object. Touching nuclei often share an
    interior with no dip in probability, and the narrowing is what separates
    them (on held-out DSB2018 images this lifted AP@0.5 from 0.70 to 0.75 over
    seeding with interior components alone). Seeds grow over the foreground
    along the distance transform; objects smaller than ``min_size`` pixels are
    dropped. Works on 2D planes and 3D volumes (on cubic voxels). Returns int32 labels, 0 = background.

    ``split_depth`` None: 1 pixel in 2D, :data:`SPLIT_DEPTH_3D` voxels in 3D; ``seed_threshold``
    None: 0.5 in 2D, :data:`SEED_THRESHOLD_3D` in 3D. ``split_large``: objects over this many times the
    median object are split again (:func:`split_large_objects`); None: :data:`SPLIT_LARGE_3D` in 3D, off
    in 2D (on the bundled nuclei model's images it moved AP@0.5 by 0.01 either way); 0: off.
    """
    p_bg, p_interior = probabilities[BACKGROUND], probabilities[INTERIOR]
    volume = probabilities.ndim == 4  # (classes, z, y, x): the 3D defaults
    if split_depth is None:
        split_depth = SPLIT_DEPTH_3D if volume else 1.0
    if split_large is None:
        split_large = SPLIT_LARGE_3D if volume else 0.0
    if seed_threshold is None:
        seed_threshold = SEED_THRESHOLD_3D if volume else 0.5
    foreground = (1.0 - p_bg) > threshold
    interior = (p_interior > seed_threshold) & foreground
    if not interior.any():
        return np.zeros(foreground.shape, dtype=np.int32)
    labels = _split(interior, foreground, split_depth, smoothing)
    # Foreground that no seed reaches (thin objects made only of boundary) keeps its own id.
    orphans = connected_components(foreground & (labels == 0))
    if orphans.max():
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    if min_size > 1:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    if split_large:
        labels = split_large_objects(labels, interior, split_large, RESPLIT_DEPTH_3D, smoothing, min_size)
    return without_gaps(labels).astype(np.int32, copy=False)


def split_large_objects(
    labels: np.ndarray, interior: np.ndarray, factor: float, depth: float, smoothing: float = 1.0, min_size: int = 1
) -> np.ndarray:
    """``labels`` (changed in place) with each object over ``factor`` times the median object's size split again
    where its ``interior`` narrows by ``depth``, as :func:`probabilities_to_instances` splits, but shallower.

    A merge of two objects is about twice the median, so the median of the same prediction is the yardstick:
    no size has to be known in advance. A split is kept only if every piece is at least
    :data:`RESPLIT_MIN_SHARE` of the median (and ``min_size``): a large object with a lobe stays one.
    """
    sizes = np.bincount(labels.ravel())
    present = sizes[1:][sizes[1:] > 0]
    if len(present) < 3:  # too few objects to say what size one is
        return labels
    median = float(np.median(present))
    smallest = max(RESPLIT_MIN_SHARE * median, min_size)
    boxes = ndimage.find_objects(labels)
    next_id = int(labels.max()) + 1
    for i in np.flatnonzero(sizes > factor * median):
        if i == 0 or boxes[i - 1] is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(boxes[i - 1], labels.shape))
        mine = labels[box] == i
        core = interior[box] & mine
        if not core.any():
            continue
        pieces = _split(core, mine, depth, smoothing)
        if pieces.max() < 2 or (np.bincount(pieces.ravel())[1:] < smallest).any():
            continue
        region = labels[box]
        for piece in range(2, int(pieces.max()) + 1):
            region[pieces == piece] = next_id
            next_id += 1
    return labels


def _split(interior: np.ndarray, mask: np.ndarray, depth: float, smoothing: float) -> np.ndarray:
    """One seed per peak of ``interior``'s (smoothed) distance transform that stands ``depth`` above its saddles
    (:func:`_split_seeds`), grown over ``mask`` along that distance by a watershed."""
    parts = connected_components(interior)
    boxes = ndimage.find_objects(parts)
    distance = _interior_distance(interior, parts, boxes)
    if smoothing:
        distance = ndimage.gaussian_filter(distance, smoothing)
    markers = _split_seeds(distance, interior, parts, boxes, depth)
    return watershed(-distance, markers=markers, mask=mask)


def object_diameters(labels: np.ndarray) -> np.ndarray:
    """The equivalent-circle (2D) or -sphere (3D) diameter of each object, in pixels."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64, copy=False))[1:]
    areas = areas[areas > 0]
    if labels.ndim == 3:
        return np.cbrt(6.0 * areas / np.pi)
    return 2.0 * np.sqrt(areas / np.pi)


def median_diameter(labels: np.ndarray) -> float | None:
    """The median of :func:`object_diameters`; None if there are no objects."""
    diameters = object_diameters(labels)
    return float(np.median(diameters)) if len(diameters) else None


def small_object_zoom(
    diameter: float | None, below: float = 12.0, to: float = 18.0, max_zoom: float = 3.0
) -> float | None:
    """How much to enlarge an image whose objects came out ``diameter`` pixels wide: None (leave it)
    unless that is under ``below``; then enough to make them ``to`` wide, at most ``max_zoom``.

    A network separates touching objects worst when they are smaller than it learnt them: on
    the bundled nuclei model's own training images shrunk to half size (median 12 px), a second
    look at the image enlarged to 18 px nuclei lifts AP@0.5 from 0.66 to 0.74, and leaves
    full-size images nearly as they were (0.786 -> 0.784). 12 and 18 px were chosen on those
    training images (training/README.md), not on the images the scores are reported on; a
    higher threshold gains a little more at 0.7x but also enlarges the commonest DSB kind
    (14-15 px nuclei), which gains nothing from it and takes 2-4x the time.
    """
    if diameter is None or diameter <= 0 or diameter >= below:
        return None
    return float(min(to / diameter, max_zoom))


def _interior_distance(interior: np.ndarray, parts: np.ndarray, boxes: list) -> np.ndarray:
    """The Euclidean distance transform of ``interior`` (float32), part by part.

    The same values as ``ndimage.distance_transform_edt(interior)``: a part's nearest outside
    pixel lies within one pixel of its bounding box (every neighbour of the part that is not in
    it is outside the interior). The transform then runs on the parts' boxes, a fraction of a
    nuclei image, instead of every pixel: 0.6-0.8 s -> 0.11-0.14 s on a 2048² image of nuclei.
    """
    distance = np.zeros(interior.shape, dtype=np.float32)
    for part, box in enumerate(boxes, start=1):
        if box is None:
            continue
        grown = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, interior.shape))
        window = interior[grown]
        if window.all():  # no outside pixel within reach (a part filling the image): the whole transform
            return ndimage.distance_transform_edt(interior).astype(np.float32)
        mine = parts[grown] == part
        distance[grown][mine] = ndimage.distance_transform_edt(window)[mine]
    return distance


def _split_seeds(distance: np.ndarray, interior: np.ndarray, parts: np.ndarray, boxes: list, depth: float):
    """One marker per distance peak at least ``depth`` above its saddles, per interior part
    (``parts``: the interior's connected components, ``boxes`` their bounding boxes).

    A part with a single local maximum is one object and needs no search; only the
    parts with several maxima (touching nuclei, the minority) go through the
    h-maxima reconstruction, on their own bounding box, which keeps this fast on
    large images (the reconstruction sorts every pixel it is given).
    """
    maxima = local_maxima(distance) & interior
    maxima_ids = connected_components(maxima)
    pairs = np.unique(np.stack([parts[maxima], maxima_ids[maxima]]), axis=1)
    maxima_per_part = np.bincount(pairs[0], minlength=int(parts.max()) + 1)
    markers = np.zeros(interior.shape, dtype=np.int32)
    next_id = 1
    for part, box in enumerate(boxes, start=1):
        if box is None:
            continue
        mine = parts[box] == part
        peaks = None
        if maxima_per_part[part] > 1:
            local = np.pad(np.where(mine, distance[box], 0.0), 1)
            inner = (slice(1, -1),) * local.ndim
            peaks = connected_components(h_maxima(local, depth).astype(bool)[inner] & mine)
        if peaks is None or peaks.max() == 0:
            markers[box][mine] = next_id
            next_id += 1
            continue
        found = peaks > 0
        markers[box][found] = peaks[found] + (next_id - 1)
        next_id += int(peaks.max())
    return markers


def without_gaps(labels: np.ndarray) -> np.ndarray:
    """Object ids 1..n again after some vanished (a small object lost when labels are resampled to a
    coarser grid), so that the largest id is the number of objects; ``labels`` itself when none did."""
    if labels.size == 0 or labels.max() <= 0:
        return labels
    present = np.bincount(labels.ravel()) > 0
    present[0] = False
    if present.sum() == len(present) - 1:
        return labels
    lut = np.zeros(len(present), labels.dtype)
    lut[present] = np.arange(1, int(present.sum()) + 1)
    return lut[labels]
