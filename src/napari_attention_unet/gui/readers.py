"""napari reader and writer for NIfTI volumes (``.nii``, ``.nii.gz``); napari has none of its own.

Reader (:func:`get_reader`): a file opens on its voxel grid with ``scale`` = the voxel size
``(z, y, x)`` from the header (``(1, z, y, x)`` for a 4D series, whose first axis is time, or
the gates of our ``*_attention.nii.gz``). It is not placed in world coordinates: no rotation or
translation, so every volume read here and every result computed on it line up by voxel. The
affine and the header travel in ``metadata["nifti"]`` (affine as a nested list, the raw header
base64-encoded) for the writer. A file opens as a Labels layer when its voxels are integers
(no scaling in the header; or float voxels holding whole numbers only, as MONAI and SimpleITK write
label maps) and either its header intent is "label" (as our label maps are
written), its name (without ``.nii[.gz]``) says so (ends with ``_seg``, ``_mask``, ``_gt``, is
``mask``, ``seg``, ``aseg``, or contains ``label`` or ``segmentation``), it sits in a folder
named like ``labelsTr/``, ``masks/`` or ``segmentations/``, or its voxels hold at most
:data:`MAX_LABEL_VALUES` distinct values (a scan holds hundreds); anything else opens as an Image layer.

Writers (:func:`write_labels_nifti`; :func:`write_image_nifti`, float32, for attention maps): a layer
to ``.nii.gz`` / ``.nii`` with the affine and
header from its ``metadata["nifti"]`` (a label map opened here), else from the NIfTI image it was
predicted from (the plugin's masks layers name their source layer; used when that layer is still
in the viewer and has the same spatial shape), else from the one NIfTI scan open in the viewer on
the same grid (a Labels layer made with napari's "new labels" button over it), so that it lands
on the scan's grid; else with an affine built from the layer's ``scale`` and ``translate`` (no
rotation, no qform/sform history), and a warning that says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_attention_unet.gui.layers import MARKER
from napari_attention_unet.large_data.nifti import (
    LABEL_INTENT,
    is_nifti_path,
    labels_dtype,
    nifti_stem,
    read_nifti,
    write_nifti,
)

__all__ = ["get_reader", "is_label_map", "read_nifti_layers", "write_image_nifti", "write_labels_nifti"]

LABEL_ENDINGS = ("_seg", "-seg", "_mask", "-mask", "_gt", "-gt")
LABEL_NAMES = ("mask", "masks", "seg", "aseg", "gt")
LABEL_WORDS = ("label", "segmentation")
LABEL_FOLDERS = ("label", "mask", "seg")
#: An integer volume with at most this many distinct values is a label map (an MR or CT scan holds hundreds).
MAX_LABEL_VALUES = 32


def _subsample(data: np.ndarray, size: int = 2_000_000) -> np.ndarray:
    """An even subsample of about ``size`` voxels of ``data``, flattened: what the label-map tests look at."""
    flat = np.asarray(data).reshape(-1)
    return flat[:: max(1, flat.size // size)]


def _few_values(data: np.ndarray, most: int = MAX_LABEL_VALUES) -> bool:
    """Whether ``data`` holds at most ``most`` distinct values (judged on an even subsample of ~2M voxels)."""
    return len(np.unique(_subsample(data))) <= most


def _whole_numbers(data: np.ndarray) -> bool:
    """Whether float voxels hold whole numbers 0, 1, 2, ... only (judged on an even subsample of ~2M voxels)."""
    sample = _subsample(data)
    return bool(sample.size) and bool(
        np.isfinite(sample).all() and (sample >= 0).all() and (sample == np.round(sample)).all()
    )


def is_label_map(path: str | Path, dtype: np.dtype, intent: int = 0, data: np.ndarray | None = None) -> bool:
    """Whether a NIfTI file opens as Labels: integer voxels (or, ``data`` given, float voxels that are whole
    numbers: MONAI and SimpleITK write label maps as float32 by default), and a label intent, a label-like
    name or folder, or (``data`` given) few distinct values."""
    if np.dtype(dtype).kind == "f" and data is not None and _whole_numbers(data):
        dtype = np.dtype(np.int64)
    if np.dtype(dtype).kind not in "iub":
        return False
    stem = nifti_stem(path).lower()
    return (
        intent == LABEL_INTENT
        or stem.endswith(LABEL_ENDINGS)
        or stem in LABEL_NAMES
        or any(word in stem for word in LABEL_WORDS)
        or any(word in Path(path).parent.name.lower() for word in LABEL_FOLDERS)
        or (data is not None and _few_values(data))
    )


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """The npe2 reader hook: :func:`read_nifti_layers` for NIfTI paths, None for anything else."""
    paths = path if isinstance(path, list | tuple) else [path]
    if not paths or not all(isinstance(p, str | Path) and is_nifti_path(p) for p in paths):
        return None
    return read_nifti_layers


def read_nifti_layers(path: str | list[str]) -> list[tuple]:
    """One layer data tuple per file: Image or Labels (see the module docstring), scaled by the voxel size."""
    paths = path if isinstance(path, list | tuple) else [path]
    layers = []
    for p in paths:
        volume = read_nifti(p, all_time_points=True)
        scale = (1.0,) * (volume.data.ndim - len(volume.spacing)) + tuple(volume.spacing)
        kwargs = {"name": nifti_stem(p), "scale": scale, "metadata": {"nifti": volume.metadata(p)}}
        data = volume.data
        kind = "labels" if is_label_map(p, data.dtype, volume.intent, data) else "image"
        if kind == "labels" and data.dtype.kind == "f":  # whole numbers stored as floats: napari's labels are integers
            data = data.astype(labels_dtype(data))
        layers.append((data, kwargs, kind))
    return layers


def _affine_from_layer(meta: dict[str, Any], ndim: int) -> np.ndarray:
    """A NIfTI affine (x, y, z) from a layer's spatial ``scale`` and ``translate`` (napari order)."""
    spatial = min(ndim, 3)
    scale = list(meta.get("scale") or [1.0] * ndim)[-spatial:]
    translate = list(meta.get("translate") or [0.0] * ndim)[-spatial:]
    affine = np.eye(4)
    for i, (s, t) in enumerate(zip(scale[::-1], translate[::-1])):  # x, y[, z]
        affine[i, i], affine[i, 3] = float(s), float(t)
    return affine


def _source_grid(meta: dict[str, Any], shape: tuple[int, ...]) -> dict | None:
    """``metadata["nifti"]`` of the NIfTI image a plugin result layer was predicted from, if on the same grid."""
    import napari

    viewer = napari.current_viewer()
    source_id = ((meta.get("metadata") or {}).get(MARKER) or {}).get("source")
    grids = []  # (layer id, its NIfTI grid) of every NIfTI layer open on this grid
    for layer in viewer.layers if viewer is not None else ():
        grid = layer.metadata.get("nifti")
        if isinstance(grid, dict) and "header" in grid and tuple(grid.get("shape", ()))[-3:] == shape[-3:]:
            grids.append((str(layer.unique_id), grid))
    if source_id:
        return next((grid for layer_id, grid in grids if layer_id == str(source_id)), None)
    # A layer made over a scan (napari's "new labels"): that scan's grid, when one scan alone fits.
    affines = {np.asarray(grid["affine"], float).round(6).tobytes(): grid for _, grid in grids}
    return next(iter(affines.values())) if len(affines) == 1 else None


def write_labels_nifti(path: str, data: Any, meta: dict) -> list[str]:
    """The npe2 writer for a Labels layer: ``path`` as NIfTI (``.nii.gz`` added when it has no NIfTI suffix)."""
    return _write_layer(path, data, meta, labels=True)


def write_image_nifti(path: str, data: Any, meta: dict) -> list[str]:
    """The npe2 writer for an Image layer (an attention map, a probability): float32 NIfTI on the grid of
    the scan it belongs to, as :func:`write_labels_nifti` finds it. RGB layers are not written (a warning)."""
    if meta.get("rgb"):
        warnings.warn("an RGB layer is not written as NIfTI: save it as TIFF or PNG", stacklevel=2)
        return []
    return _write_layer(path, data, meta, labels=False)


def _write_layer(path: str, data: Any, meta: dict, labels: bool) -> list[str]:
    if not is_nifti_path(path):
        path = f"{path}.nii.gz"
    array = np.asarray(data[0] if isinstance(data, list) else data)  # a multiscale layer: its full resolution
    source = (meta.get("metadata") or {}).get("nifti")
    if not (isinstance(source, dict) and "affine" in source and "header" in source):
        source = _source_grid(meta, array.shape)
    if source is None:
        warnings.warn(
            f"no NIfTI scan on this layer's grid is open, so {Path(path).name} is written with the layer's scale "
            "only (no orientation or origin): open the scan it belongs to and save again to place it on it",
            stacklevel=2,
        )
    like = source if source is not None else _affine_from_layer(meta, array.ndim)
    write_nifti(path, array if labels else array.astype(np.float32, copy=False), like, labels=labels)
    return [str(path)]
