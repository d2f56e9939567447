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
:class:`~.predict.Progress` after every batch of tiles and returns a
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

import math
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_attention_unet.core.device import autocast_dtype, pick_device
from napari_attention_unet.core.images import ImageShapeError, match_channels
from napari_attention_unet.core.instances import probabilities_to_instances
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.predict import Progress, _predict_plane, _Tiling, prepare_model
from napari_attention_unet.large_data.block_geometry import Block, BlockPlan, _tile_policy, plan_blocks
from napari_attention_unet.large_data.stitching import BlockLinks, Stitcher, Stitching, local_labels, stitch

__all__ = [
    "Block",
    "BlockLinks",
    "BlockOptions",
    "BlockPlan",
    "BlockResult",
    "BlockSinks",
    "BlockedPrediction",
    "Normalization",
    "Stitcher",
    "Stitching",
    "allocate_sinks",
    "global_normalization",
    "load_inference_model",
    "plan_blocks",
    "predict_block",
    "predict_block_steps",
    "predict_blocks",
    "read_region",
    "relabel_block",
    "stitch",
    "write_block",
]

# --------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - low) / (high - low)`` after channel matching; ``None`` marks a constant channel."""

    low: tuple[float | None, ...]
    high: tuple[float | None, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Channel-first pixels -> float32, exactly as :func:`~.data.normalize` with these percentiles."""
        out = np.empty(x.shape, dtype=np.float32)
        for c, (lo, hi) in enumerate(zip(self.low, self.high)):
            if lo is None:
                out[c] = 0.0
                continue
            np.subtract(x[c], np.float64(lo), out=out[c], casting="unsafe")
            out[c] *= np.float32(1.0 / (hi - lo))
        return out


def _model_input(x: np.ndarray, in_channels: int) -> np.ndarray:
    """Channel-first pixels -> what the network sees before normalisation (grey stays one channel)."""
    return x if x.shape[0] == 1 else match_channels(x, in_channels)


def global_normalization(
    source: Any,
    plan: BlockPlan,
    in_channels: int,
    *,
    low: float = 1.0,
    high: float = 99.8,
    max_samples: int = 2_000_000,
    rows_per_read: int = 256,
) -> Normalization:
    """Percentiles of an evenly strided subsample of the whole image, read band by band.

    The stride is the same along Y and X (``ceil(sqrt(pixels / max_samples))``), so an
    image of up to ``max_samples`` pixels is sampled whole and gets the same constants as
    :func:`~.data.normalize`. Memory: one band of ``rows_per_read`` sampled rows at a time.
    """
    ny, nx = plan.shape
    step = max(1, math.ceil(math.sqrt(ny * nx / max_samples)))
    bands = []
    for y0 in range(0, ny, step * rows_per_read):
        y1 = min(y0 + step * rows_per_read, ny)
        region = _read(source, plan.axes, (slice(y0, y1, step), slice(0, nx, step)))
        bands.append(_model_input(_channel_first(region, plan.axes), in_channels))
    sample = np.concatenate(bands, axis=1)
    lows, highs = [], []
    for channel in sample:
        lo, hi = np.percentile(channel.reshape(-1).astype(np.float32), [low, high])
        if not np.isfinite(hi - lo) or hi - lo <= 1e-12:
            lows.append(None), highs.append(None)
        else:
            lows.append(float(lo)), highs.append(float(hi))
    return Normalization(tuple(lows), tuple(highs))


# --------------------------------------------------------------------------- reading


def _channel_first(region: np.ndarray, axes: str) -> np.ndarray:
    if axes == "YX":
        return region[np.newaxis]
    order = [axes.index("C"), axes.index("Y"), axes.index("X")]
    return np.transpose(region, order)


def _read(source: Any, axes: str, spatial: tuple[slice, slice]) -> np.ndarray:
    key = tuple(spatial[0] if a == "Y" else spatial[1] if a == "X" else slice(None) for a in axes)
    region = source[key]
    if hasattr(region, "compute"):  # dask
        region = region.compute()
    return np.asarray(region)


def read_region(source: Any, block: Block, axes: str) -> np.ndarray:
    """The pixels of ``block.outer`` from ``source`` (any sliceable array-like), axes as ``axes``."""
    return _read(source, axes, tuple(slice(a, b) for a, b in block.outer))


# --------------------------------------------------------------------------- one block


@dataclass(frozen=True)
class BlockOptions:
    """What to compute per block; picklable. ``device`` is resolved where the block runs."""

    gates: tuple[str, ...] | None = None
    instances: bool = True
    min_size: int | None = None  # None: the default of probabilities_to_instances
    tile_size: int | None = None
    overlap: int | None = None
    batch_size: int | None = None
    precision: str = "auto"
    device: str = "auto"


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
    options: BlockOptions = BlockOptions(),
    *,
    region: np.ndarray | None = None,
    inference_model: AttentionUNet | None = None,
) -> Generator[Progress, None, BlockResult]:
    """:func:`predict_block` as a generator: yields :class:`Progress` over this block's tiles."""
    dev = pick_device(options.device)
    net = inference_model if inference_model is not None else load_inference_model(model, dev)
    config = net.config
    if config.spatial_dims != 2:
        raise ImageShapeError("the block engine needs a 2D model")
    gate_names = tuple(config.gate_names if options.gates is None else options.gates)
    if region is None:
        region = read_region(source, block, plan.axes)
    x = normalization.apply(_model_input(_channel_first(region, plan.axes), config.in_channels))
    del region
    fit, tile_size, overlap = _tile_policy(options.tile_size, options.overlap)
    tiling = _Tiling(x.shape[1:], tile_size, overlap, config.size_multiple, fit=fit)
    batch_size = options.batch_size or (1 if dev.type == "cpu" else 8)
    amp = autocast_dtype(dev, options.precision)
    total = len(tiling.tiles)
    probs, gates = yield from _predict_plane(net, x, tiling, dev, amp, batch_size, list(gate_names), 0, total)
    del x
    core = (slice(None), *block.core_in_outer())
    probability = (1.0 - probs[core][0]).astype(np.float32)
    gate_maps = np.stack([gates[g][core[1:]] for g in gate_names]) if gate_names else np.zeros((0, *block.core_shape))
    del gates
    if options.instances:
        sizes = {} if options.min_size is None else {"min_size": options.min_size}
        outer_labels = probabilities_to_instances(probs, **sizes)
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
    options: BlockOptions = BlockOptions(),
    *,
    region: np.ndarray | None = None,
    inference_model: AttentionUNet | None = None,
) -> BlockResult:
    """Predict one block: read ``block.outer`` from ``source`` (or use ``region``), return its core.

    Pure and picklable (module-level, picklable arguments): dask workers can run it. The
    network runs on the whole outer region in tiles (same tiling policy as
    :func:`~.predict.predict`), instance labels come from a seeded watershed on the outer
    region, and everything is cropped to the core; ``result.links`` carries the link bands.
    """
    generator = predict_block_steps(
        source, block, plan, model, normalization, options, region=region, inference_model=inference_model
    )
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


# --------------------------------------------------------------------------- sinks


@dataclass
class BlockSinks:
    """Where blocks are written: array-likes with slice assignment (numpy, memmap, zarr, ...).

    ``labels`` (Y, X), a 32/64-bit integer type (or uint8 with ``instances=False``);
    ``probability`` (Y, X) or None; ``attention`` (gate, Y, X) or None.
    """

    labels: Any
    probability: Any = None
    attention: Any = None


def allocate_sinks(
    plan: BlockPlan,
    n_gates: int,
    *,
    instances: bool = True,
    probability_dtype: Any = np.float16,
    attention_dtype: Any = np.float16,
) -> BlockSinks:
    """In-memory numpy sinks: labels int32 (uint8 mask without instances), float16 maps by default."""
    return BlockSinks(
        labels=np.zeros(plan.shape, dtype=np.int32 if instances else np.uint8),
        probability=None if probability_dtype is None else np.zeros(plan.shape, dtype=probability_dtype),
        attention=None if attention_dtype is None else np.zeros((n_gates, *plan.shape), dtype=attention_dtype),
    )


def _as_dtype(values: np.ndarray, dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        top = np.iinfo(dtype).max
        return np.rint(np.clip(values, 0, 1) * top).astype(dtype)
    return values.astype(dtype, copy=False)


def write_block(result: BlockResult, sinks: BlockSinks) -> None:
    """Write a block's core arrays into ``sinks`` (labels keep their local ids until relabelled)."""
    ys, xs = result.block.core_slices
    sinks.labels[ys, xs] = result.labels.astype(sinks.labels.dtype, copy=False)
    if sinks.probability is not None:
        sinks.probability[ys, xs] = _as_dtype(result.probability, sinks.probability.dtype)
    if sinks.attention is not None and len(result.gate_names):
        sinks.attention[:, ys, xs] = _as_dtype(result.gate_maps, sinks.attention.dtype)


def relabel_block(labels: Any, block: Block, lut: np.ndarray) -> None:
    """Replace the local ids of ``block``'s core in the ``labels`` sink by global ids (``lut[local]``)."""
    ys, xs = block.core_slices
    local = np.asarray(labels[ys, xs])
    labels[ys, xs] = lut[local].astype(labels.dtype, copy=False)


# --------------------------------------------------------------------------- sequential driver


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

    def gate_map(self, name: str) -> Any:
        return self.attention[self.gate_names.index(name)]


def predict_blocks(
    model: AttentionUNet,
    source: Any,
    *,
    axes: str | None = None,
    sinks: BlockSinks | None = None,
    block_size: int = 2048,
    halo: int = 64,
    link_width: int | None = None,
    gates: Sequence[str] | None = None,
    instances: bool = True,
    min_size: int | None = None,
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    device: str | torch.device = "auto",
    inference_model: AttentionUNet | None = None,
    normalization: Normalization | None = None,
) -> Generator[Progress, None, BlockedPrediction]:
    """Predict a large 2D image block by block in this process; yields Progress, returns the result.

    ``source`` is any array-like (numpy, memmap, zarr, dask) with axes ``axes`` (YX, YXC or
    CYX; guessed for 2D and colour-last). Outputs go to ``sinks`` (default: in-memory numpy
    from :func:`allocate_sinks`). Peak memory is the sinks plus one block's working set.
    Closing the generator stops before the next tile (the sinks are then incomplete).
    """
    plan = plan_blocks(source.shape, axes, block_size=block_size, halo=halo, link_width=link_width)
    dev = pick_device(device)
    net = inference_model if inference_model is not None else prepare_model(model, dev)
    gate_names = tuple(model.config.gate_names if gates is None else gates)
    unknown = set(gate_names) - set(model.config.gate_names)
    if unknown:
        raise ValueError(f"unknown gate(s) {sorted(unknown)}; this model has {list(model.config.gate_names)}")
    if sinks is None:
        sinks = allocate_sinks(plan, len(gate_names), instances=instances)
    if instances and np.dtype(sinks.labels.dtype).itemsize < 4:
        raise ValueError(f"the labels sink needs a 32- or 64-bit integer dtype, not {sinks.labels.dtype}")
    options = BlockOptions(gate_names, instances, min_size, tile_size, overlap, batch_size, precision, str(dev))
    blocks = plan.blocks
    tiles = plan.tiles_per_block(tile_size, overlap, model.config.size_multiple)
    total = sum(tiles) + len(blocks) + 1
    yield Progress(0, total, "normalising")
    if normalization is None:
        normalization = global_normalization(source, plan, model.config.in_channels)
    stitcher = Stitcher(plan)
    done = 0
    for block, n_tiles in zip(blocks, tiles):
        steps = predict_block_steps(source, block, plan, model, normalization, options, inference_model=net)
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
    if instances:
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
    )
