"""One image file in, its outputs on disk: whole-image for ordinary images, block by block for large ones.

``attention-unet predict`` runs these in its own process and the dask workers run
:func:`predict_file_steps` as one task per file, so both write the same files:
``<stem>_labels.tif`` and ``<stem>_attention.tif`` in the output folder, or
``<stem>/{labels,attention,probability}`` in a ``.zarr`` output store for the block engine.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path

import torch

from napari_attention_unet.core.images import ImageShapeError, guess_axes
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.predict import Prediction, PredictOptions, Progress, predict
from napari_attention_unet.large_data.blocks import BlockedPrediction, plan_blocks, predict_blocks
from napari_attention_unet.large_data.files import (
    LARGE_PIXELS,
    TIFF_SUFFIXES,
    create_tiff_sinks,
    create_zarr_sinks,
    image_shape,
    is_zarr_path,
    open_lazy_image,
    read_image,
    write_attention,
    write_labels,
)

__all__ = ["BLOCK_SIZE", "needs_blocks", "predict_file_in_blocks", "predict_file_steps", "result_paths", "stem_of"]

#: The block edge of the block engine when the user gives none (px).
BLOCK_SIZE = 2048


def stem_of(image_path: str | Path) -> str:
    """``cells.ome.tif`` -> ``cells``: the name the outputs of an image start with."""
    return Path(image_path).name.split(".")[0]


def result_paths(out_dir: Path, image_path: Path) -> tuple[Path, Path]:
    """Where ``attention-unet predict`` writes an image's labels and attention maps."""
    stem = stem_of(image_path)
    return Path(out_dir) / f"{stem}_labels.tif", Path(out_dir) / f"{stem}_attention.tif"


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
) -> Generator[Progress, None, Prediction]:
    """Read one image whole, predict it and write its labels and attention maps into ``out_dir``."""
    image = read_image(image_path)
    result = yield from predict(model, image, options, device=device, inference_model=inference_model)
    labels_path, attention_path = result_paths(out_dir, image_path)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_labels(labels_path, result.labels)
    write_attention(attention_path, result.gate_maps, result.spatial_axes)
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
