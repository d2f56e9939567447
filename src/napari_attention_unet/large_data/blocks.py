"""Block-wise prediction of large 2D images in bounded memory, with seamless instance labels.

The image is cut into square **blocks** (``block_size`` px, on a grid anchored at 0 so that
output chunks can align with them). Each block is predicted on its *outer* region, the block
plus a ``halo`` of context on every side, and only its *core* is kept. Instance labels are
computed on the outer region, so an object cut by a block edge is seen whole (up to the halo)
by both blocks; a separate stitching step then joins the two halves into one object.

The engine is split so that any executor can drive it (the in-process generator below, or
dask workers):

1. ``plan = plan_blocks(shape, axes, block_size=2048, halo=64)`` - pure geometry, picklable.
2. ``norm = global_normalization(source, plan, in_channels)`` - percentiles of a strided
   subsample of the **whole** image, computed once, so that results do not depend on the
   block layout.
   ``zoom = probe_zoom(source, plan, model, norm, options)`` - whether every block is enlarged
   for small objects (a few windows of the image predicted first; ``core.zoom``), decided once
   so that both sides of a block edge are seen alike; the drivers then re-plan with
   ``zoomed_plan`` and pass ``options.zoom``.
3. ``result = predict_block(source, block, model, norm, options)`` - a pure, module-level,
   picklable function. ``source`` is the whole image as any array-like with ``.shape``,
   ``.dtype`` and slicing (numpy, ``np.memmap``, zarr, dask); only ``block.outer`` is read
   (or pass ``region=`` pixels already read). ``model`` is an ``AttentionUNet`` or a path
   to a ``.safetensors`` model file (loaded once per process and device). The
   :class:`BlockResult` holds the core-cropped labels (local ids), probability and gate
   maps, and ``result.links``, a small :class:`BlockLinks` that is all stitching needs.
4. ``write_block(result, sinks)`` - writes the core arrays into :class:`BlockSinks`
   (array-likes supporting slice assignment: numpy arrays, memmaps, zarr arrays). Cores on
   the block grid never overlap, so blocks may be written concurrently when the sinks'
   chunks divide ``block_size`` (see :meth:`BlockPlan.chunk_size`).
5. ``stitching = stitch(plan, links)`` - or feed a :class:`Stitcher` block by block. Labels
   of neighbouring blocks are matched in a band of ``2 * link_width`` px across their
   shared face (IoU >= 0.5 within the band, so each label has at most one partner per
   face); union-find joins the matches and every object seen in some core gets one
   consecutive global id (numbered in plan order).
6. ``relabel_block(sinks.labels, block, stitching.lut(block.index))`` - local -> global ids
   in the labels sink, block by block (also picklable and independent per block).

Everything above is importable from here; the geometry lives in :mod:`.block_geometry` and the
stitching in :mod:`.stitching`.

:func:`predict_blocks` is the in-process sequential driver: a generator that yields
:class:`~napari_attention_unet.core.progress.Progress` after every batch of tiles and returns a
:class:`BlockedPrediction`; closing it (``gen.close()``) cancels before the next tile.

Storage: the default in-memory sinks hold labels as int32, probability and gate maps as
**float16** (values in [0, 1] keep an absolute error below 2.5e-4 and half the memory of
float32). Sinks of another dtype are written in that dtype; integer sinks for probability
or gate maps get ``round(v * max)`` (e.g. uint8 0..255). The labels sink must be a 32- or
64-bit integer type (it holds local, then global ids).

Guarantee: an object cut by a block edge gets one id when the two blocks' labels for it
overlap with IoU >= 0.5 inside the link band, which holds whenever both blocks segment it
alike (the halo gives each side ``halo - link_width`` px of context past the band).
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_attention_unet.core.device import autocast_dtype, pick_device
from napari_attention_unet.core.images import ImageShapeError
from napari_attention_unet.core.instances import probabilities_to_instances
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.predict import (
    PredictOptions,
    Progress,
    class_values,
    default_batch_size,
    prepare_model,
    run_to_end,
)
from napari_attention_unet.core.tiling import Tiling, predict_tiles
from napari_attention_unet.core.zoom import auto_zoom_applies, back_to_grid, enlarge, inside_objects, object_zoom
from napari_attention_unet.large_data.block_geometry import (
    Block,
    BlockPlan,
    plan_blocks,
    tile_policy,
    zoomed_plan,
)
from napari_attention_unet.large_data.normalization import Normalization, global_normalization, model_input, read_region
from napari_attention_unet.large_data.sinks import BlockSinks, allocate_sinks, as_sink_dtype, relabel_block
from napari_attention_unet.large_data.stitching import BlockLinks, Stitcher, Stitching, local_labels, stitch

__all__ = [
    "Block",
    "BlockLinks",
    "BlockPlan",
    "BlockResult",
    "BlockSinks",
    "BlockedPrediction",
    "Normalization",
    "PredictOptions",
    "Stitcher",
    "Stitching",
    "allocate_sinks",
    "global_normalization",
    "load_inference_model",
    "plan_blocks",
    "predict_block",
    "predict_block_steps",
    "predict_blocks",
    "probe_zoom",
    "read_region",
    "relabel_block",
    "stitch",
    "write_block",
    "zoomed_plan",
]


@dataclass
class BlockResult:
    """Core-cropped outputs of one block: local labels, float32 probability and gate maps."""

    block: Block
    labels: np.ndarray
    probability: np.ndarray
    gate_maps: np.ndarray
    gate_names: tuple[str, ...]
    links: BlockLinks


_MODEL_CACHE: dict[tuple, AttentionUNet] = {}


def load_inference_model(model: AttentionUNet | str | os.PathLike, device: str | torch.device = "auto"):
    """A prepared inference copy of ``model`` on ``device``; model files are cached per process."""
    dev = pick_device(device)
    if isinstance(model, AttentionUNet):
        return prepare_model(model, dev)
    from napari_attention_unet.core.weights import load_model

    path = Path(model).resolve()
    key = (str(path), path.stat().st_mtime_ns, str(dev))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = prepare_model(load_model(path)[0].eval(), dev)
    return _MODEL_CACHE[key]


def predict_block_steps(
    source: Any,
    block: Block,
    plan: BlockPlan,
    model: AttentionUNet | str | os.PathLike,
    normalization: Normalization,
    options: PredictOptions | None = None,
    *,
    device: str | torch.device = "auto",
    region: np.ndarray | None = None,
    inference_model: AttentionUNet | None = None,
) -> Generator[Progress, None, BlockResult]:
    """:func:`predict_block` as a generator: yields :class:`Progress` over this block's tiles."""
    options = PredictOptions.of(options)
    dev = pick_device(device)
    net = inference_model if inference_model is not None else load_inference_model(model, dev)
    config = net.config
    if config.spatial_dims != 2:
        raise ImageShapeError("the block engine needs a 2D model")
    gate_names = tuple(config.gate_names if options.gates is None else options.gates)
    if region is None:
        region = read_region(source, block, plan.axes)
    x = normalization.apply(model_input(region, plan.axes, config.in_channels))
    del region
    outer_shape, zoom = x.shape[1:], options.zoom
    if zoom:  # small objects: the whole image is enlarged alike (probe_zoom), block by block
        x = enlarge(x, zoom)
    fit, tile_size, overlap = tile_policy(options.tile_size, options.overlap)
    tiling = Tiling(x.shape[1:], tile_size, overlap, config.size_multiple, fit=fit)
    batch_size = options.batch_size or default_batch_size(dev, 2)
    amp = autocast_dtype(dev, options.precision)
    total = len(tiling.tiles)
    probs, gates = yield from predict_tiles(net, x, tiling, dev, amp, batch_size, list(gate_names), 0, total)
    del x
    outer_labels = None
    if zoom:  # objects are separated where the network saw them, then all goes back to the image's grid
        if options.instances and config.task != "semantic":
            outer_labels = probabilities_to_instances(probs, min_size=options.min_size)
        probs, gates, outer_labels = back_to_grid(probs, gates, outer_labels, outer_shape)
    core = (slice(None), *block.core_in_outer())
    probability = (1.0 - probs[core][0]).astype(np.float32)
    gate_maps = np.stack([gates[g][core[1:]] for g in gate_names]) if gate_names else np.zeros((0, *block.core_shape))
    del gates
    if config.task == "semantic":  # class values need no stitching: each pixel's class is its own
        labels = class_values(probs[core], config)
        links = BlockLinks(block.index, 0, 0)
    elif options.instances:
        if outer_labels is None:
            outer_labels = probabilities_to_instances(probs, min_size=options.min_size)
        labels, links = local_labels(outer_labels, block, plan)
    else:
        labels = (probability > 0.5).astype(np.uint8)
        links = BlockLinks(block.index, 0, 0)
    return BlockResult(block, labels, probability, gate_maps.astype(np.float32, copy=False), gate_names, links)


def predict_block(
    source: Any,
    block: Block,
    plan: BlockPlan,
    model: AttentionUNet | str | os.PathLike,
    normalization: Normalization,
    options: PredictOptions | None = None,
    *,
    device: str | torch.device = "auto",
    region: np.ndarray | None = None,
    inference_model: AttentionUNet | None = None,
) -> BlockResult:
    """Predict one block: read ``block.outer`` from ``source`` (or use ``region``), return its core.

    Pure and picklable (module-level, picklable arguments): dask workers can run it. The
    network runs on the whole outer region in tiles (same tiling policy as
    :func:`~napari_attention_unet.core.predict.predict`), instance labels come from a seeded watershed on the outer
    region, and everything is cropped to the core; ``result.links`` carries the link bands.
    """
    steps = predict_block_steps(
        source,
        block,
        plan,
        model,
        normalization,
        options,
        device=device,
        region=region,
        inference_model=inference_model,
    )
    return run_to_end(steps)


def probe_zoom(
    source: Any,
    plan: BlockPlan,
    model: AttentionUNet | str | os.PathLike,
    normalization: Normalization,
    options: PredictOptions | None = None,
    *,
    device: str | torch.device = "auto",
    inference_model: AttentionUNet | None = None,
) -> float | None:
    """How much to enlarge every block of a large image for its small objects (None: not at all).

    Decided once for the whole image, as :func:`~napari_attention_unet.core.predict.predict` decides
    for a small one (``options.auto_zoom``, a model with ``config.extra["small_objects"]``; a set
    ``options.zoom`` is returned as it is): the windows of :meth:`BlockPlan.probe_windows` (the
    centre and the middles of the quarters, 512 px) are predicted as they are and the objects not
    cut by a window's edge pooled (:func:`~napari_attention_unet.core.zoom.object_zoom`). Every
    block is then enlarged alike, so an object cut by a block edge is seen alike on both sides.
    """
    options = PredictOptions.of(options)
    dev = pick_device(device)
    net = inference_model if inference_model is not None else load_inference_model(model, dev)
    config = net.config
    if options.zoom or not auto_zoom_applies(config, instances=options.instances, auto_zoom=options.auto_zoom):
        return options.zoom or None
    amp = autocast_dtype(dev, options.precision)
    batch_size = options.batch_size or default_batch_size(dev, 2)
    fit, tile_size, overlap = tile_policy(options.tile_size, options.overlap)
    found = []
    for window in plan.probe_windows():
        x = normalization.apply(model_input(read_region(source, window, plan.axes), plan.axes, config.in_channels))
        tiling = Tiling(x.shape[1:], tile_size, overlap, config.size_multiple, fit=fit)
        probs, _ = run_to_end(predict_tiles(net, x, tiling, dev, amp, batch_size, [], 0, len(tiling.tiles)))
        found.append(inside_objects(probabilities_to_instances(probs, min_size=options.min_size)))
    return object_zoom(found, config)


def write_block(result: BlockResult, sinks: BlockSinks) -> None:
    """Write a block's core arrays into ``sinks`` (labels keep their local ids until relabelled)."""
    ys, xs = result.block.core_slices
    sinks.labels[ys, xs] = result.labels.astype(sinks.labels.dtype, copy=False)
    if sinks.probability is not None:
        sinks.probability[ys, xs] = as_sink_dtype(result.probability, sinks.probability.dtype)
    if sinks.attention is not None and len(result.gate_names):
        sinks.attention[:, ys, xs] = as_sink_dtype(result.gate_maps, sinks.attention.dtype)


@dataclass
class BlockedPrediction:
    """Result of :func:`predict_blocks`: the sinks, now holding global labels and maps."""

    labels: Any
    probability: Any
    attention: Any
    gate_names: tuple[str, ...]
    n_objects: int
    plan: BlockPlan
    normalization: Normalization
    device: str
    spatial_axes: str = "YX"
    zoom: float | None = None  # every block was enlarged this much for its small objects (probe_zoom)

    def gate_map(self, name: str) -> Any:
        return self.attention[self.gate_names.index(name)]


def predict_blocks(
    model: AttentionUNet,
    source: Any,
    options: PredictOptions | None = None,
    *,
    sinks: BlockSinks | None = None,
    block_size: int = 2048,
    halo: int = 64,
    link_width: int | None = None,
    device: str | torch.device = "auto",
    inference_model: AttentionUNet | None = None,
    normalization: Normalization | None = None,
    **settings,
) -> Generator[Progress, None, BlockedPrediction]:
    """Predict a large 2D image block by block in this process; yields Progress, returns the result.

    ``source`` is any array-like (numpy, memmap, zarr, dask) with axes ``options.axes`` (YX,
    YXC or CYX; guessed for 2D and colour-last); ``settings`` change single fields of
    ``options``. Outputs go to ``sinks`` (default: in-memory numpy from :func:`allocate_sinks`).
    Peak memory is the sinks plus one block's working set. Closing the generator stops
    before the next tile (the sinks are then incomplete). A semantic model writes class values
    (its arg-max class per pixel) into the labels sink, with no stitching. Small objects get the
    second look of :func:`~napari_attention_unet.core.predict.predict`, decided once for the image
    (:func:`probe_zoom`), with the blocks planned again for it (:func:`zoomed_plan`; the result's
    ``plan`` and ``zoom`` say what was done).
    """
    options = PredictOptions.of(options, **settings).for_model(model.config)
    plan = plan_blocks(source.shape, options.axes, block_size=block_size, halo=halo, link_width=link_width)
    dev = pick_device(device)
    net = inference_model if inference_model is not None else prepare_model(model, dev)
    gate_names = tuple(model.config.gate_names if options.gates is None else options.gates)
    unknown = set(gate_names) - set(model.config.gate_names)
    if unknown:
        raise ValueError(f"unknown gate(s) {sorted(unknown)}; this model has {list(model.config.gate_names)}")
    if sinks is None:
        sinks = allocate_sinks(plan, len(gate_names), instances=options.instances)
    if options.instances and np.dtype(sinks.labels.dtype).itemsize < 4:
        raise ValueError(f"the labels sink needs a 32- or 64-bit integer dtype, not {sinks.labels.dtype}")
    options = PredictOptions.of(options, gates=gate_names)
    tiles = plan.tiles_per_block(options.tile_size, options.overlap, model.config.size_multiple)
    total = sum(tiles) + len(plan.blocks) + 1
    yield Progress(0, total, "normalising")
    if normalization is None:
        normalization = global_normalization(source, plan, model.config.in_channels)
    zoom = probe_zoom(source, plan, model, normalization, options, device=dev, inference_model=net)
    if zoom:  # smaller blocks and halo: an enlarged block's working set stays within about twice a plain one's
        plan, options = zoomed_plan(plan, zoom), PredictOptions.of(options, zoom=zoom)
        tiles = plan.tiles_per_block(options.tile_size, options.overlap, model.config.size_multiple, zoom)
        total = sum(tiles) + len(plan.blocks) + 1
    blocks = plan.blocks
    stitcher = Stitcher(plan)
    done = 0
    for block, n_tiles in zip(blocks, tiles):
        steps = predict_block_steps(source, block, plan, model, normalization, options, device=dev, inference_model=net)
        while True:
            try:
                progress = next(steps)
            except StopIteration as stop:
                result = stop.value
                break
            yield Progress(done + progress.done, total)
        done += n_tiles
        write_block(result, sinks)
        stitcher.add(result.links)
        del result
    n_objects = 0
    if options.instances:
        yield Progress(done, total, "stitching")
        stitching = stitcher.finish()
        n_objects = stitching.n_objects
        for block in blocks:
            relabel_block(sinks.labels, block, stitching.lut(block.index))
            done += 1
            yield Progress(done, total, "relabelling")
    yield Progress(total, total, "done")
    return BlockedPrediction(
        labels=sinks.labels,
        probability=sinks.probability,
        attention=sinks.attention,
        gate_names=gate_names,
        n_objects=n_objects,
        plan=plan,
        normalization=normalization,
        device=str(dev),
        zoom=zoom,
    )
