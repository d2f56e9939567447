"""One large image on a dask cluster, block by block (the engine of :mod:`.blocks`).

The workers read their blocks straight from the file and write their cores into sinks on
storage every worker reaches; only each block's small link bands come back to the client,
which stitches them as blocks finish and has the workers relabel their blocks.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from distributed import Client, as_completed

from napari_attention_unet.core.predict import PredictOptions
from napari_attention_unet.large_data.distributed import ModelSpec, worker_model
from napari_attention_unet.large_data.pipeline import stem_of

__all__ = ["LargeResult", "block_sinks", "predict_large"]


@dataclass(frozen=True)
class LargeResult:
    """What :func:`predict_large` wrote for one image: ``n_objects`` stitched objects in ``blocks`` blocks."""

    path: Path
    labels: object
    attention: object
    n_objects: int
    blocks: int
    seconds: float


def _open_source(source):
    """A path is opened lazily where the task runs (a worker reads only its block); arrays pass through."""
    from napari_attention_unet.large_data.files import open_lazy_image

    return open_lazy_image(source)[0] if isinstance(source, str) else source


def _predict_block_task(source, block, plan, spec: ModelSpec, normalization, options, sinks):
    """One block on a worker: read its outer region, predict, write its core; returns the small links."""
    from napari_attention_unet.large_data.blocks import predict_block, write_block

    source = _open_source(source)
    model, net, device = worker_model(spec)
    result = predict_block(source, block, plan, model, normalization, options, device=device, inference_model=net)
    write_block(result, sinks)
    return result.links


def _normalization_task(source, plan, in_channels: int):
    from napari_attention_unet.large_data.blocks import global_normalization

    return global_normalization(_open_source(source), plan, in_channels)


def _zoom_task(source, plan, spec: ModelSpec, normalization, options):
    """On a worker: how much every block is enlarged for small objects (``blocks.probe_zoom``)."""
    from napari_attention_unet.large_data.blocks import probe_zoom

    model, net, device = worker_model(spec)
    return probe_zoom(_open_source(source), plan, model, normalization, options, device=device, inference_model=net)


def block_sinks(out: Path, stem: str, plan, gate_names: Sequence[str], instances: bool = True):
    """Where a large image's blocks go: ``out/<stem>/{labels,attention,probability}`` in a ``.zarr`` ``out``,
    else ``out/<stem>_labels.tif`` and ``out/<stem>_attention.tif`` (uncompressed, written in place)."""
    from napari_attention_unet.large_data.files import create_tiff_sinks, create_zarr_sinks

    out = Path(out)
    if out.suffix.lower() == ".zarr":
        return create_zarr_sinks(out, stem, plan.shape, gate_names, plan.chunk_size(), instances)
    out.mkdir(parents=True, exist_ok=True)
    return create_tiff_sinks(out, stem, plan.shape, gate_names)


def predict_large(
    client: Client,
    image_path: Path,
    out: Path,
    spec: ModelSpec,
    config,
    *,
    block_size: int = 2048,
    options: PredictOptions | None = None,
    progress: bool = True,
) -> LargeResult:
    """Predict one large image block by block on the cluster (the engine of ``large_data.blocks``).

    The workers read their blocks straight from ``image_path`` (a TIFF or zarr / OME-Zarr;
    other formats are read by the client and scattered) and write their cores into
    the arrays of :func:`block_sinks` under ``out`` (a folder, or a ``.zarr`` store), which
    every worker must reach (on several machines: a shared file system or object store);
    only each block's small link bands come back. The client stitches them
    (:class:`~.stitching.Stitcher`) as blocks finish, then the workers relabel their
    blocks with the global ids. ``config`` is the model's :class:`~napari_attention_unet.core.model.ModelConfig`.
    """
    from tqdm import tqdm

    from napari_attention_unet.large_data.blocks import Stitcher, plan_blocks, relabel_block, zoomed_plan
    from napari_attention_unet.large_data.files import TIFF_SUFFIXES, is_zarr_path, open_lazy_image, read_image

    options = PredictOptions.of(options).for_model(config)  # a semantic model: class values, no stitching
    start = time.perf_counter()
    if Path(image_path).suffix.lower() in TIFF_SUFFIXES or is_zarr_path(image_path):
        source, file_axes = open_lazy_image(image_path)
        source_arg = str(image_path)  # each worker opens it and reads its own blocks
    else:  # PNG, JPEG: read here once, shared with the workers
        source, file_axes = read_image(image_path), None
        source_arg = client.scatter(source, broadcast=False)
    plan = plan_blocks(source.shape, options.axes or file_axes, block_size=block_size)
    block_options = PredictOptions.of(options, gates=tuple(config.gate_names))
    normalization = client.submit(_normalization_task, source_arg, plan, config.in_channels, pure=False).result()
    # Small objects: every block enlarged alike, the blocks smaller for it (as blocks.predict_blocks).
    zoom = client.submit(_zoom_task, source_arg, plan, spec, normalization, block_options, pure=False).result()
    if zoom:
        plan, block_options = zoomed_plan(plan, zoom), PredictOptions.of(block_options, zoom=zoom)
    sinks = block_sinks(out, stem_of(image_path), plan, config.gate_names, options.instances)
    blocks = plan.blocks
    futures = [
        client.submit(_predict_block_task, source_arg, b, plan, spec, normalization, block_options, sinks, pure=False)
        for b in blocks
    ]
    stitcher = Stitcher(plan)
    try:
        with tqdm(
            total=len(blocks), desc=Path(image_path).name, unit="block", disable=not progress, file=sys.stderr
        ) as bar:
            for future in as_completed(futures):
                stitcher.add(future.result())
                future.release()
                bar.update(1)
            n_objects = 0
            if options.instances:
                bar.set_postfix_str("relabelling")
                stitching = stitcher.finish()
                n_objects = stitching.n_objects
                futures = [
                    client.submit(relabel_block, sinks.labels, b, stitching.lut(b.index), pure=False) for b in blocks
                ]
                client.gather(futures)
    except BaseException:  # Ctrl-C, or a block failed: stop the blocks still queued or running
        client.cancel(futures)
        raise
    return LargeResult(
        Path(image_path), sinks.labels, sinks.attention, n_objects, len(blocks), time.perf_counter() - start
    )
