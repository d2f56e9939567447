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

__all__ = ["axcodes", "reorient", "reorient_spacing", "valid_orientation"]

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


def reorient_spacing(spacing: Sequence[float] | None, source: str, target: str) -> tuple[float, ...] | None:
    """A voxel size ``(z, y, x)`` of orientation ``source`` in the axis order of orientation ``target``."""
    if spacing is None or source == target:
        return None if spacing is None else tuple(spacing)
    order, _ = _plan(source, target)
    return tuple(float(spacing[a]) for a in order)
