"""Anisotropic volumes to cubic voxels and back, for 3D models.

A 3D model sees a volume whose z step is larger than its xy step (the usual light-sheet,
confocal or MR stack) resampled to cubic voxels: prediction (:mod:`.predict`) and training
(:mod:`.train.samples`) use the same functions, so both see the same grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["isotropic_shape", "isotropic_zoom", "resample", "resample_labels"]


def isotropic_zoom(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """Per-axis factors that make voxels cubic (finest axis kept), or None if they nearly are."""
    if spacing is None:
        return None
    spacing = tuple(float(s) for s in spacing)[-ndim:]
    if len(spacing) != ndim or min(spacing) <= 0 or not all(math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must give {ndim} positive pixel sizes, got {spacing}")
    finest = min(spacing)
    zoom = tuple(s / finest for s in spacing)
    # Below a quarter step of difference, resampling costs more than it helps.
    return zoom if max(zoom) > 1.25 else None


def isotropic_shape(shape: Sequence[int], zoom: Sequence[float]) -> tuple[int, ...]:
    """The shape of a volume of ``shape`` resampled by ``zoom`` (at least 1 voxel per axis)."""
    return tuple(max(1, round(n * f)) for n, f in zip(shape, zoom))


def resample(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(C, Z, Y, X) or (C, Y, X) float array -> (C, *shape) by (tri)linear interpolation, channel by channel."""
    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    for c in range(array.shape[0]):
        channel = torch.from_numpy(np.ascontiguousarray(array[c], dtype=np.float32))[None, None]
        out[c] = F.interpolate(channel, size=tuple(shape), mode=mode, align_corners=False)[0, 0].numpy()
    return out


def resample_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(Z, Y, X) or (Y, X) labels -> ``shape`` by nearest neighbour on the same voxel centres as :func:`resample`
    (``nearest-exact``), keeping the dtype: class values and object ids stay what they were."""
    source = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64, copy=False))[None, None]
    # Ids up to 2**24 are exact in float32; nearest-exact only picks values, so a float64 copy keeps all.
    out = F.interpolate(source.double(), size=tuple(shape), mode="nearest-exact")[0, 0]
    return out.numpy().astype(labels.dtype)
