"""Anisotropic volumes to cubic voxels and back, for 3D models.

A 3D model sees a volume whose z step is larger than its xy step (the usual light-sheet,
confocal or MR stack) resampled to cubic voxels: prediction (:mod:`.predict`) and training
(:mod:`.train.samples`) use the same functions, so both see the same grid. A 3D instance model
may also have its own voxel size (``ModelConfig.voxel_size``, world units: see
:func:`object_voxel_size`): volumes whose objects are large on their own grid are shrunk to it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.nn import functional as F

from napari_attention_unet.core.instances import object_diameters

__all__ = [
    "fitting_voxel_size",
    "grid_zoom",
    "isotropic_shape",
    "isotropic_zoom",
    "object_voxel_size",
    "resample",
    "resample_labels",
]

#: A 3D instance model works on a grid where the median object is about this many voxels across:
#: the size of the synthetic nuclei its recipe (patch size, seed threshold, split depth) was
#: developed on (benchmarks/bench_instances_3d.py: 16.9 voxels for the ellipsoids, 17.8 lumpy).
OBJECT_VOXELS_3D = 17.0
#: A new 3D semantic model sees volumes larger than this many cubic voxels shrunk to about it (a 512 x
#: 512 x 70 CT at 0.78 x 0.78 x 3 mm is 67 M voxels at its finest axis: 9 GB to train, 9 minutes to
#: predict on a 2-core CPU, and no training step in a 2-minute budget; at 2 mm it is 4 M).
MAX_VOXELS_3D = 4_000_000
#: Factors beyond these mean the volume's voxel size and the model's are not in the same units.
ZOOM_LIMITS = (1 / 16, 8.0)


def _checked_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """The last ``ndim`` pixel sizes as floats, or a ValueError when they are not positive and finite."""
    spacing = tuple(float(s) for s in spacing)[-ndim:]
    if len(spacing) != ndim or min(spacing) <= 0 or not all(math.isfinite(s) for s in spacing):
        raise ValueError(f"spacing must give {ndim} positive pixel sizes, got {spacing}")
    return spacing


def isotropic_zoom(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """Per-axis factors that make voxels cubic (finest axis kept), or None if they nearly are."""
    if spacing is None:
        return None
    spacing = _checked_spacing(spacing, ndim)
    finest = min(spacing)
    zoom = tuple(s / finest for s in spacing)
    # Below a quarter step of difference, resampling costs more than it helps.
    return zoom if max(zoom) > 1.25 else None


def grid_zoom(spacing: Sequence[float] | None, ndim: int, voxel: float | None = None) -> tuple[float, ...] | None:
    """Per-axis factors from a volume's grid to the network's: cubic voxels of ``voxel`` world units
    (a 3D instance model's own size; the volume's spacing taken as 1 when not given) or, without
    one, :func:`isotropic_zoom`. None when the network's grid is nearly the volume's own."""
    if voxel is None:
        return isotropic_zoom(spacing, ndim)
    spacing = _checked_spacing((1.0,) * ndim if spacing is None else spacing, ndim)
    zoom = tuple(s / float(voxel) for s in spacing)
    if min(zoom) < ZOOM_LIMITS[0] or max(zoom) > ZOOM_LIMITS[1]:
        raise ValueError(
            f"the volume's voxel size {_listed(spacing)} is far from the size the model works at ({voxel:g} "
            "per voxel, in the units it was trained with): give the voxel size in those units"
        )
    return zoom if max(zoom) > 1.25 or min(zoom) < 0.8 else None


def object_voxel_size(
    labels: Sequence[np.ndarray],
    spacings: Sequence[Sequence[float] | None],
    target: float = OBJECT_VOXELS_3D,
    sections: bool = False,
) -> float | None:
    """The voxel size (world units) at which the median object of instance ``labels`` (volumes, with
    their spacings; 1 where None) is ``target`` voxels across, when that is coarser than the volumes'
    finest axis by more than a quarter; else None (the finest axis: :func:`isotropic_zoom`).
    ``sections``: objects outlined in a few slices, measured in those planes (a sphere's volume
    would make a one-slice disc look a few voxels wide).

    Large objects are seen shrunk, never small ones enlarged: a 24-voxel training patch then holds
    an object and its neighbours, and prediction costs what it costs at this size.
    """
    diameters, finest = [], math.inf
    for volume, spacing in zip(labels, spacings):
        step = np.ones(3) if spacing is None else np.asarray(spacing, float)[-3:]
        finest = min(finest, float(step.min()))
        volume = np.asarray(volume)
        if sections:  # equivalent circles in each labelled plane, in the plane's units
            planes = [volume[z] for z in np.flatnonzero(volume.reshape(len(volume), -1).any(axis=1))]
            sizes = [object_diameters(plane) * float(np.sqrt(step[1] * step[2])) for plane in planes]
            diameters.extend(sizes)
            continue
        diameters.append(object_diameters(volume) * float(np.cbrt(np.prod(step))))  # voxels -> units
    diameters = np.concatenate(diameters) if diameters else np.zeros(0)
    if not diameters.size:
        return None
    voxel = float(np.median(diameters)) / target
    return voxel if voxel > 1.25 * finest else None


def fitting_voxel_size(
    shapes: Sequence[Sequence[int]], spacings: Sequence[Sequence[float] | None], max_voxels: int = MAX_VOXELS_3D
) -> float | None:
    """The voxel size (world units) at which the largest of these volumes (with their spacings; 1 where
    None) holds about ``max_voxels`` cubic voxels, when that is coarser than their finest axis by more
    than a quarter; else None. At most 12 times the finest axis (:data:`ZOOM_LIMITS` stays far)."""
    finest, largest = math.inf, 0.0
    for shape, spacing in zip(shapes, spacings):
        step = np.ones(3) if spacing is None else np.asarray(spacing, float)[-3:]
        finest = min(finest, float(step.min()))
        largest = max(largest, float(np.prod(np.asarray(shape, float)[-3:] * step)))
    if not largest:
        return None
    voxel = min((largest / max_voxels) ** (1 / 3), 12 * finest)
    return voxel if voxel > 1.25 * finest else None


def _listed(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def isotropic_shape(shape: Sequence[int], zoom: Sequence[float]) -> tuple[int, ...]:
    """The shape of a volume of ``shape`` resampled by ``zoom`` (at least 1 voxel per axis)."""
    return tuple(max(1, round(n * f)) for n, f in zip(shape, zoom))


def resample(array: np.ndarray, shape: Sequence[int], antialias: bool = False) -> np.ndarray:
    """(C, Z, Y, X) or (C, Y, X) float array -> (C, *shape) by (tri)linear interpolation, channel by
    channel. ``antialias``: axes that shrink are smoothed first (Gaussian, sigma (factor - 1) / 2),
    as an image going to a coarser network grid must be (noise would alias into it otherwise)."""
    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    mode = "trilinear" if len(shape) == 3 else "bilinear"
    sigma = [max(0.0, (n / m - 1.0) / 2.0) if antialias else 0.0 for n, m in zip(array.shape[1:], shape)]
    for c in range(array.shape[0]):
        plane = np.ascontiguousarray(array[c], dtype=np.float32)
        if max(sigma) > 0:
            plane = ndimage.gaussian_filter(plane, sigma)
        channel = torch.from_numpy(plane)[None, None]
        out[c] = F.interpolate(channel, size=tuple(shape), mode=mode, align_corners=False)[0, 0].numpy()
    return out


def resample_labels(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(Z, Y, X) or (Y, X) labels -> ``shape`` by nearest neighbour on the same voxel centres as :func:`resample`
    (``nearest-exact``), keeping the dtype: class values and object ids stay what they were."""
    source = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64, copy=False))[None, None]
    # Ids up to 2**24 are exact in float32; nearest-exact only picks values, so a float64 copy keeps all.
    out = F.interpolate(source.double(), size=tuple(shape), mode="nearest-exact")[0, 0]
    return out.numpy().astype(labels.dtype)
