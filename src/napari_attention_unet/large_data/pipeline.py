"""One image file in, its outputs on disk: whole-image for ordinary images, block by block for large ones.

``attention-unet predict`` runs these in its own process and the dask workers run
:func:`predict_file_steps` as one task per file, so both write the same files:
``<stem>_labels.tif`` and ``<stem>_attention.tif`` in the output folder, or
``<stem>/{labels,attention,probability}`` in a ``.zarr`` output store for the block engine.

A NIfTI volume (``vol.nii`` / ``vol.nii.gz``) gives NIfTI outputs on its own voxel grid, with its
affine and header (qform / sform kept): ``vol_labels.nii.gz`` (integer labels, uint8 when they
fit, NIfTI intent "label") and ``vol_attention.nii.gz``, one 4D float32 file ``(x, y, z, gate)``
with the gate names in the header's ``descrip`` ("attention gates: gate1,gate2,..."), so that one
file per input holds all maps and medical viewers show the gates as the frames of a series. The
header's voxel size becomes ``PredictOptions.spacing`` when none was given (a 3D model resamples
an anisotropic volume to cubic voxels; a 2D model predicts slice by slice and ignores it).
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import numpy as np
import torch

from napari_attention_unet.core.images import ImageShapeError, guess_axes
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.orientation import valid_orientation
from napari_attention_unet.core.predict import Prediction, PredictOptions, Progress, predict
from napari_attention_unet.large_data.blocks import BlockedPrediction, plan_blocks, predict_blocks
from napari_attention_unet.large_data.files import (
    LARGE_PIXELS,
    TIFF_SUFFIXES,
    create_tiff_sinks,
    create_zarr_sinks,
    declared_axes,
    declared_voxel_size,
    image_shape,
    is_zarr_path,
    open_lazy_image,
    read_image,
    read_time_point,
    write_attention,
    write_labels,
)
from napari_attention_unet.large_data.nifti import is_nifti_path, write_nifti

__all__ = ["BLOCK_SIZE", "needs_blocks", "predict_file_in_blocks", "predict_file_steps", "result_paths", "stem_of"]

#: The block edge of the block engine when the user gives none (px).
BLOCK_SIZE = 2048


#: File endings of two parts, taken off whole (``scan.nii.gz`` -> ``scan``).
COMPOUND_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.zarr", ".nii.gz")


def stem_of(image_path: str | Path) -> str:
    """``cells.ome.tif`` -> ``cells``, ``cells.1.tif`` -> ``cells.1``: the name the outputs of an
    image start with (only the file type is taken off, so ``cells.1`` and ``cells.2`` stay apart)."""
    name = Path(image_path).name
    for suffix in COMPOUND_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem or name


def result_paths(out_dir: Path, image_path: Path, time_point: int | None = None) -> tuple[Path, Path]:
    """Where ``attention-unet predict`` writes an image's labels and attention maps (``.nii.gz`` for NIfTI;
    ``<stem>_t3_labels...`` for time point 3 of a series)."""
    stem = stem_of(image_path) + ("" if time_point is None else f"_t{time_point}")
    suffix = ".nii.gz" if is_nifti_path(image_path) else ".tif"
    return Path(out_dir) / f"{stem}_labels{suffix}", Path(out_dir) / f"{stem}_attention{suffix}"


def needs_blocks(path: Path, out: Path, axes: str | None = None, block_size: int | None = None) -> bool:
    """Large 2D images, zarr input, a ``.zarr`` output or an explicit block size go block by block."""
    if block_size is not None or Path(out).suffix.lower() == ".zarr" or is_zarr_path(path):
        return True
    shape = image_shape(path)
    if shape is None:
        return False
    try:
        axes = (axes or guess_axes(shape)).upper()
    except ImageShapeError:
        return False
    if axes not in ("YX", "YXC", "CYX") or len(axes) != len(shape):
        return False
    return shape[axes.index("Y")] * shape[axes.index("X")] > LARGE_PIXELS


def predict_file_steps(
    model: AttentionUNet,
    image_path: Path,
    out_dir: Path,
    options: PredictOptions,
    *,
    device: str | torch.device = "auto",
    inference_model: AttentionUNet | None = None,
    time_point: int | None = None,
    default_spacing: tuple[float, ...] | None = None,
    orientation: str | None = None,
) -> Generator[Progress, None, Prediction]:
    """Read one image whole, predict it and write its labels and attention maps into ``out_dir``.

    A NIfTI input is read as ZYX with its voxel size as the default ``spacing`` and its outputs
    are NIfTI on its grid (see the module's docstring). Other files take ``default_spacing``
    (e.g. the voxel size a 3D model was trained at) when ``options`` gives none. ``time_point``
    picks one volume of a time series (a 4D NIfTI, or a TIFF whose first axis is time); its
    outputs are named ``<stem>_t<T>_labels...``. ``orientation`` is the one the model was trained on (its
    info's, e.g. ``"RAS"``): a NIfTI volume stored otherwise is turned to it for the model, and its outputs
    are written on its own grid.
    """
    image, volume = read_time_point(image_path, time_point)
    if np.issubdtype(image.dtype, np.floating) and image.size and not np.isfinite(image).any():
        raise ImageShapeError("every pixel is NaN (or infinite): there is nothing to predict")
    if volume is not None:
        options = PredictOptions.of(
            options, axes=options.axes or volume.axes, spacing=options.spacing or volume.spacing
        )
        if valid_orientation(orientation) and volume.orientation not in (None, orientation):
            options = PredictOptions.of(options, orientation=(volume.orientation, orientation))
    elif options.spacing is None and (stated := declared_voxel_size(image_path)) is not None:
        options = PredictOptions.of(options, spacing=stated)  # an ImageJ or OME-TIFF volume's own voxel size
    stated_spacing = options.spacing  # the user's or the file's, not the model's assumption below
    if volume is None and options.spacing is None and default_spacing is not None:
        options = PredictOptions.of(options, spacing=tuple(default_spacing))
    if volume is None and options.axes is None and (axes := declared_axes(image_path, time_point)):
        options = PredictOptions.of(options, axes=axes)  # a hyperstack's channels are channels, not planes
    result = yield from predict(model, image, options, device=device, inference_model=inference_model)
    labels_path, attention_path = result_paths(out_dir, image_path, time_point)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if volume is None:  # on the image's grid: its spatial axes in the order the file has them (--axes YXZ)
        given = "".join(a for a in (options.axes or result.spatial_axes).upper() if a in "ZYX")
        order = [result.spatial_axes.index(a) for a in given]
        write_labels(labels_path, np.transpose(result.labels, order), given, stated_spacing)  # calibrated if stated
        maps = {n: np.transpose(m, order) for n, m in result.gate_maps.items()}
        write_attention(attention_path, maps, given)
        return result
    write_nifti(labels_path, result.labels, volume, labels=True)
    if result.gate_maps:
        names = list(result.gate_maps)
        maps = [np.asarray(result.gate_maps[n], dtype=np.float32) for n in names]
        stack = np.stack([m[np.newaxis] if m.ndim == 2 else m for m in maps])  # (gate, z, y, x)
        write_nifti(attention_path, stack, volume, labels=False, description="attention gates: " + ",".join(names))
    return result


def predict_file_in_blocks(
    model: AttentionUNet,
    image_path: Path,
    out: Path,
    options: PredictOptions,
    *,
    block_size: int | None = None,
    device: str | torch.device = "auto",
    inference_model: AttentionUNet | None = None,
) -> Generator[Progress, None, BlockedPrediction]:
    """One image through the block engine in this process, its outputs written straight to disk.

    TIFF and zarr / OME-Zarr inputs are read region by region; other formats are read whole.
    ``out`` is a folder (uncompressed TIFFs, written in place) or a ``.zarr`` store.
    """
    path, out = Path(image_path), Path(out)
    if path.suffix.lower() in TIFF_SUFFIXES or path.is_dir() or path.suffix.lower() == ".zarr":
        source, file_axes = open_lazy_image(path)
    else:
        source, file_axes = read_image(path), None
    plan = plan_blocks(source.shape, options.axes or file_axes, block_size=block_size or BLOCK_SIZE)
    gate_names = list(model.config.gate_names)
    if out.suffix.lower() == ".zarr":
        sinks = create_zarr_sinks(out, stem_of(path), plan.shape, gate_names, plan.chunk_size(), options.instances)
    else:
        sinks = create_tiff_sinks(out, stem_of(path), plan.shape, gate_names)
    return (
        yield from predict_blocks(
            model,
            source,
            options,
            axes=plan.axes,
            sinks=sinks,
            block_size=plan.block_size,
            device=device,
            inference_model=inference_model,
        )
    )
