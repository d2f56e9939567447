"""Where validation is held out of an image's labels: a strip of the labelled (or painted) region.

:func:`held_out_region` gives the box; :func:`.samples.prepare_sample` moves its labels from the
training target to the validation target, so they are never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["MIN_HELD_OUT_PIXELS", "bounding_box", "held_out_region"]

#: A held-out strip cut from the user's corrections must hold at least this many pixels (voxels);
#: smaller corrections all train, and the strip comes from everything labelled (:func:`held_out_region`).
MIN_HELD_OUT_PIXELS = 32 * 32


def _strip_size(box: Sequence[slice], fraction: float) -> int:
    """Pixels in the held-out strip of ``box``: its last axis cut to ``fraction``."""
    extents = [b.stop - b.start for b in box]
    return int(np.prod(extents[:-1])) * max(1, int(round(extents[-1] * fraction)))


def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) holding every True pixel of a non-empty ``mask``."""
    return tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(mask))


def held_out_region(
    labelled: np.ndarray,
    edited: np.ndarray | None,
    fraction: float,
    classes: np.ndarray | None = None,
) -> tuple[slice, ...] | None:
    """The held-out validation box: the right-most ``fraction`` of the columns of the
    bounding box of the labelled pixels, or of the painted ones when there are any and that strip
    would hold at least :data:`MIN_HELD_OUT_PIXELS` (None when neither strip would: nothing is held out).

    Without an ignore mask or edits that is the right-hand strip of the whole image. When
    the user trains on part of an image (only what they painted, or inside a shape), or
    corrected one corner of it, the strip lies where their labels are, not in a part of
    the image that holds no labels or only the model's own prediction. With ``classes`` (class
    values of semantic labels, dense or strokes), the strip is the one holding each class's labelled
    pixels nearest in proportion (``fraction`` of each, as far as the labels allow; see
    :func:`_balanced_window`), so that it scores every class on more than a sliver of it.
    """
    region = labelled if edited is None or not edited.any() else edited
    if not region.any():
        return None  # nothing labelled here: nothing to hold out (the trainer checks the whole set)
    box = list(bounding_box(region))
    if region is edited and _strip_size(box, fraction) < MIN_HELD_OUT_PIXELS and labelled.any():
        # One erased object would leave a 7 px strip to score on, lost to training: all of it
        # trains, and the strip of everything labelled checks that the rest still holds.
        box = list(bounding_box(labelled))
        if _strip_size(box, fraction) < MIN_HELD_OUT_PIXELS:
            return None  # a few painted pixels alone (train on: only what I painted): all of them train
    columns = box[-1]
    width = columns.stop - columns.start
    n_val = max(1, int(round(width * fraction)))
    if width - n_val < 1:
        raise ValueError(
            f"the labelled region is too narrow ({width} px) to hold out {fraction:.0%} of it for validation"
        )
    start = columns.stop - n_val
    if classes is not None:
        start = _balanced_window(classes[tuple(box)], region[tuple(box)], n_val) + columns.start
    box[-1] = slice(start, start + n_val)
    return tuple(box)


def _balanced_window(classes: np.ndarray, region: np.ndarray, width: int) -> int:
    """The start of ``width`` columns (last axis) whose share of each class's pixels in ``region``
    is nearest the strip's share of the columns (the largest gap over the classes is the smallest),
    the right-most of equals, among the windows that hold every class and take none whole; failing
    those, the windows that take no class whole (a class found in one spot only trains); failing
    those, all. A long stroke of a rare class then mostly trains, and the strip still scores each class.
    """
    columns = classes.shape[-1]
    worst = np.zeros(columns - width + 1)
    holds_all = np.ones(columns - width + 1, bool)
    takes_one_whole = np.zeros(columns - width + 1, bool)
    others = tuple(range(classes.ndim - 1))
    for value in np.unique(classes[region]):
        present = np.concatenate([[0], np.cumsum(((classes == value) & region).sum(axis=others))])
        inside = present[width:] - present[:-width]
        worst = np.maximum(worst, np.abs(inside / present[-1] - width / columns))
        holds_all &= inside > 0
        takes_one_whole |= inside == present[-1]
    for candidates in (holds_all & ~takes_one_whole, ~takes_one_whole, np.ones_like(holds_all)):
        if candidates.any():
            break
    best = worst[candidates].min()
    return int(np.flatnonzero(candidates & (worst <= best + 1e-12))[-1])
