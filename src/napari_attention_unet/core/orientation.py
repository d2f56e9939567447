"""Which way a medical volume's voxel axes point, and turning a volume to another orientation and back.

A NIfTI file's affine maps its voxel axes ``(i, j, k)`` to the scanner's world axes (x to the
subject's Right, y Anterior, z Superior). Its *orientation* is the three letters naming where each
voxel axis points, as nibabel's ``aff2axcodes`` writes them: ``"RAS"``, ``"LPS"``, ``"LAS"``,
``"RPS"``... The same head stored ``RAS`` and ``LAS`` differ by a left-right flip of the array; stored
``ASR`` (sagittal slices), by a transposition. A network trained on volumes of one orientation sees a
flipped or turned anatomy in the other (a hippocampus model fell from Dice 0.81 to 0.00), so volumes
are turned to the orientation the model was trained on, predicted, and turned back onto their own grid:
flips and transpositions of whole voxels, nothing is resampled.

Arrays here are in napari's ``([lead...,] z, y, x)`` order, that is ``(k, j, i)``: the orientation
letters read backwards. numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "axcodes",
    "labels_on_image_grid",
    "reorient",
    "reorient_affine",
    "reorient_spacing",
    "reorient_volumes",
    "valid_orientation",
]

#: Each world direction and its opposite; the first of each pair is the positive world axis (RAS+).
_AXES = ("RL", "AP", "SI")
_OPPOSITE = {a: b for pair in _AXES for a, b in (pair, pair[::-1])}


def valid_orientation(codes: object) -> bool:
    """Three letters, one of each of L/R, A/P, S/I (``"RAS"``, ``"lps"`` is not: capitals)."""
    if not isinstance(codes, str) or len(codes) != 3 or not set(codes) <= set(_OPPOSITE):
        return False
    return sorted(next(i for i, pair in enumerate(_AXES) if c in pair) for c in codes) == [0, 1, 2]


def axcodes(affine: np.ndarray | Sequence[Sequence[float]]) -> str | None:
    """The orientation of a 4x4 voxel-to-world affine (``"RAS"``: voxel axis i points Right, j Anterior,
    k Superior); the closest one for an oblique affine. None for an affine whose axes are degenerate."""
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    lengths = np.linalg.norm(matrix, axis=0)
    if not np.all(np.isfinite(matrix)) or np.any(lengths == 0):
        return None
    cosines = np.abs(matrix / lengths)  # [world axis, voxel axis]
    codes: list[str | None] = [None, None, None]
    free_world, free_voxel = {0, 1, 2}, {0, 1, 2}
    for _ in range(3):  # the strongest remaining pairing first: an oblique affine gets its closest axes
        world, voxel = max(((w, v) for w in free_world for v in free_voxel), key=lambda wv: cosines[wv[0], wv[1]])
        positive = matrix[world, voxel] > 0
        codes[voxel] = _AXES[world][0 if positive else 1]
        free_world.discard(world)
        free_voxel.discard(voxel)
    return "".join(codes)  # type: ignore[arg-type]


def _plan(source: str, target: str) -> tuple[list[int], list[bool]]:
    """For arrays in ``(z, y, x)`` order: which source axis becomes each target axis, and whether it is flipped."""
    if not (valid_orientation(source) and valid_orientation(target)):
        raise ValueError(f"orientations are three letters, one of each of L/R, A/P, S/I: not {source!r}, {target!r}")
    src, dst = source[::-1], target[::-1]  # letters in array order (k, j, i)
    order, flips = [], []
    for letter in dst:
        axis = next(a for a, c in enumerate(src) if c in (letter, _OPPOSITE[letter]))
        order.append(axis)
        flips.append(src[axis] != letter)
    return order, flips


def reorient(array: np.ndarray, source: str, target: str) -> np.ndarray:
    """``array`` (``(..., z, y, x)``, the last three axes spatial, any before them kept: gates, channels)
    of orientation ``source`` as it would be stored in orientation ``target``; ``reorient(reorient(a, s, t),
    t, s)`` is ``a``. A view when no axis moves or flips."""
    if source == target:
        return array
    order, flips = _plan(source, target)
    lead = array.ndim - 3
    if lead < 0:
        raise ValueError(f"only volumes (z, y, x) have an orientation, not an array of shape {array.shape}")
    turned = np.transpose(array, list(range(lead)) + [lead + a for a in order])
    flip_axes = tuple(lead + i for i, flip in enumerate(flips) if flip)
    return np.flip(turned, flip_axes) if flip_axes else turned


def reorient_volumes(arrays: Sequence[np.ndarray | None], source: str, target: str) -> list[np.ndarray | None]:
    """Several volumes of one scan (image, labels, masks) turned alike by :func:`reorient`, as contiguous
    arrays (to train on); None stays None."""
    return [None if a is None else np.ascontiguousarray(reorient(np.asarray(a), source, target)) for a in arrays]


def reorient_spacing(spacing: Sequence[float] | None, source: str, target: str) -> tuple[float, ...] | None:
    """A voxel size ``(z, y, x)`` of orientation ``source`` in the axis order of orientation ``target``."""
    if spacing is None or source == target:
        return None if spacing is None else tuple(spacing)
    order, _ = _plan(source, target)
    return tuple(float(spacing[a]) for a in order)


def reorient_affine(affine, shape: Sequence[int], source: str, target: str) -> np.ndarray:
    """The voxel-to-world affine of a volume (``shape`` in ``(z, y, x)`` order, orientation ``source``) once
    :func:`reorient` has stored it as ``target``: every voxel keeps its place in the world."""
    affine = np.asarray(affine, dtype=float)
    if source == target:
        return affine.copy()
    order, flips = _plan(source, target)
    out = affine.copy()
    for t, (a, flip) in enumerate(zip(order, flips)):  # new array axis t is old axis a (file axes: 2 - t, 2 - a)
        column = affine[:3, 2 - a]
        out[:3, 2 - t] = -column if flip else column
        if flip:
            out[:3, 3] += (shape[a] - 1) * column
    return out


def labels_on_image_grid(
    labels: np.ndarray, labels_affine, image_affine, image_shape: Sequence[int], names=("the labels", "the image")
):
    """Labels read from a scan file of their own, put on the image's voxel grid: turned when they are stored in
    another orientation (the same head stored ``RAS`` and ``LAS``). Returns ``(labels, notes)``: what was done,
    and a warning when the grids still differ (the labels are then taken voxel by voxel)."""
    notes = []
    stored, wanted = axcodes(labels_affine), axcodes(image_affine)
    if np.ndim(labels) == 3 and stored and wanted and stored != wanted:
        labels_affine = reorient_affine(labels_affine, np.shape(labels), stored, wanted)
        [labels] = reorient_volumes([labels], stored, wanted)
        notes.append(f"{names[0]} stored {stored} and {names[1]} {wanted}: the labels are turned to the image's grid")
    if tuple(np.shape(labels)) == tuple(image_shape) and not np.allclose(labels_affine, image_affine, atol=1e-3):
        notes.append(
            f"warning: {names[0]} and {names[1]} have different affines (voxel-to-world grids): the labels are "
            "taken voxel by voxel, as if they lay on the image's grid"
        )
    return labels, notes
