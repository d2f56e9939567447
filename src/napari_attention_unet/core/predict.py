"""Tiled prediction as a generator.

``predict(model, image)`` yields :class:`Progress` after every batch of tiles and
returns a :class:`Prediction` (instance labels, foreground probability and every
attention gate's coefficients on the image grid). Scripts drive it with
:func:`run_to_end`; the napari widget runs the same generator in a worker, and
closing the generator (``gen.close()`` or ``worker.quit()``) stops the work before
the next tile.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch.nn import functional as F

from napari_attention_unet.core.device import autocast_dtype, pick_device
from napari_attention_unet.core.images import ImageShapeError, match_channels, normalize, to_channel_first
from napari_attention_unet.core.instances import probabilities_to_instances
from napari_attention_unet.core.model import AttentionUNet

__all__ = ["Prediction", "Progress", "predict", "run_to_end", "tile_starts"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """A progress report: ``done`` of ``total`` units of ``stage``."""

    done: int
    total: int
    stage: str = "predicting"

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 1.0


@dataclass
class Prediction:
    """Result of :func:`predict`; every array has the image's spatial shape.

    ``labels`` are instance ids (0 = background), or a 0/1 mask when instances were
    not asked for. ``probability`` is the foreground probability. ``gate_maps`` maps
    gate names (``gate1`` finest ... coarsest) to float32 coefficients in [0, 1].
    """

    labels: np.ndarray
    probability: np.ndarray
    gate_maps: dict[str, np.ndarray]
    spatial_axes: str
    device: str
    class_probabilities: np.ndarray | None = field(default=None, repr=False)


def run_to_end(generator: Generator[object, None, T]) -> T:
    """Drive a progress generator to its end and return its result."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering ``size`` with tiles of ``tile`` overlapping by at least ``overlap``."""
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    n = math.ceil((size - tile) / stride) + 1
    # Spread the tiles evenly so every seam gets about the same overlap.
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _taper(tile: int, overlap: int) -> torch.Tensor:
    """1-D blending weights: flat in the middle, a raised-cosine ramp over ``overlap`` at each end."""
    w = torch.ones(tile)
    ramp = min(overlap, tile // 2)
    if ramp > 0:
        t = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
        edge = 0.5 - 0.5 * torch.cos(math.pi * t)
        w[:ramp] = edge
        w[tile - ramp :] = edge.flip(0)
    return w.clamp_min(1e-3)


def _blend_window(tile: Sequence[int], overlap: int) -> torch.Tensor:
    window = torch.ones(())
    for size in tile:
        window = window[..., None] * _taper(size, overlap)
    return window


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _fitted_tile(size: int, tile_size: int, overlap: int, multiple: int) -> int:
    """The tile edge that covers ``size`` with the fewest pixels through the network.

    Fixed 512 px tiles waste work when the image is a little larger than a whole
    number of tiles (1024 px takes three 512 px tiles overlapping by 256, so 2.25x
    the pixels). Candidate edges are multiples of ``multiple`` from ``tile_size / 2``
    to ``tile_size * 9 / 8``; the one whose tiles add up to the least length wins
    (fewer tiles on a tie: less per-call overhead).
    """
    whole = _round_up(size, multiple)
    largest = (tile_size + tile_size // 8) // multiple * multiple
    if whole <= largest:
        return whole
    best_cost, best_tile = None, tile_size
    for tile in range(_round_up(max(tile_size // 2, overlap + multiple), multiple), largest + 1, multiple):
        count = len(tile_starts(size, tile, overlap))
        cost = (count * tile, count)
        if best_cost is None or cost < best_cost:
            best_cost, best_tile = cost, tile
    return best_tile


def _pad_to(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    pads = [(0, 0)] + [(0, s - n) for n, s in zip(x.shape[1:], shape)]
    if not any(p[1] for p in pads):
        return x
    # Mirror where the image is big enough: zeros would look like a dark border.
    mode = "reflect" if all(p[1] < n for p, n in zip(pads[1:], x.shape[1:])) else "symmetric"
    return np.pad(x, pads, mode=mode)


def _batches(items: list[T], size: int) -> Iterable[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def prepare_model(model: AttentionUNet, device: torch.device) -> AttentionUNet:
    """An inference copy: batch norm folded, on ``device``, channels-last for 2D."""
    fused = model.fused_for_inference().to(device)
    if model.config.spatial_dims == 2:
        fused = fused.to(memory_format=torch.channels_last)
    return fused


def predict(
    model: AttentionUNet,
    image: np.ndarray,
    *,
    axes: str | None = None,
    device: str | torch.device = "auto",
    tile_size: int | None = None,
    overlap: int | None = None,
    batch_size: int | None = None,
    precision: str = "auto",
    instances: bool = True,
    gates: Sequence[str] | None = None,
    min_size: int = 16,
    keep_class_probabilities: bool = False,
    inference_model: AttentionUNet | None = None,
    spacing: Sequence[float] | None = None,
) -> Generator[Progress, None, Prediction]:
    """Predict ``image`` tile by tile; yields :class:`Progress`, returns :class:`Prediction`.

    ``axes`` names the image's axes (e.g. ``"YX"``, ``"YXC"``, ``"ZYX"``, ``"CZYX"``);
    by default they are guessed as napari does (a last axis of 3 or 4 is colour).
    A 3D image goes through a 3D model in 3D tiles, or through a 2D model slice by
    slice. ``gates`` limits which gate maps are stitched (all by default, none with
    ``[]``). ``inference_model`` reuses a copy made by :func:`prepare_model`.
    ``tile_size`` fixes the tile edge; by default (None) tiles of up to about 576 px
    (2D) or 96 px (3D) are fitted to the image so that little work is spent on
    overlaps, e.g. a 1024 px side takes two 544 px tiles rather than three of 512.

    ``spacing`` is the pixel size along each spatial axis (e.g. a napari layer's
    ``scale``). A 3D model sees a volume whose z step is larger than its xy step
    (the usual light-sheet or confocal stack) resampled to cubic voxels, as it would
    have been trained; the outputs come back on the image's own grid.
    """
    config = model.config
    dev = pick_device(device)
    channels_first, spatial_axes = to_channel_first(image, axes)
    if not np.issubdtype(channels_first.dtype, np.number) or np.issubdtype(channels_first.dtype, np.complexfloating):
        raise ImageShapeError(
            f"cannot predict on an image of dtype {channels_first.dtype}: use integer or float pixels"
        )
    if min(channels_first.shape[1:]) < 1:
        raise ImageShapeError(f"the image is empty (shape {image.shape})")
    ndim = len(spatial_axes)
    if ndim < config.spatial_dims:
        raise ImageShapeError(
            f"a {config.spatial_dims}D model needs a {config.spatial_dims}D image; got axes {spatial_axes}"
        )
    gate_names = list(config.gate_names if gates is None else gates)
    unknown = set(gate_names) - set(config.gate_names)
    if unknown:
        raise ValueError(f"unknown gate(s) {sorted(unknown)}; this model has {list(config.gate_names)}")

    net = inference_model if inference_model is not None else prepare_model(model, dev)
    amp = autocast_dtype(dev, precision)
    fit_tiles = tile_size is None
    if tile_size is None:
        tile_size = 512 if config.spatial_dims == 2 else 96
    if overlap is None:
        overlap = max(tile_size // 8, 16)
    if batch_size is None:
        batch_size = 1 if dev.type == "cpu" else (8 if config.spatial_dims == 2 else 2)

    if channels_first.shape[0] == 1:
        # Grey image: normalise its one channel; each tile repeats it for a colour network,
        # which saves the percentiles and the memory of identical copies.
        x = normalize(channels_first)
    else:
        x = normalize(match_channels(channels_first, config.in_channels))

    original_shape = x.shape[1:]
    zoom = _isotropic_zoom(spacing, ndim) if config.spatial_dims == 3 and ndim == 3 else None
    if zoom is not None:
        x = _resample(x, tuple(max(1, round(n * f)) for n, f in zip(original_shape, zoom)))

    # A 2D model on a Z stack: predict plane by plane, reporting progress over the whole stack.
    planes = [x[:, z] for z in range(x.shape[1])] if ndim > config.spatial_dims else [x]
    plane_shape = planes[0].shape[1:]
    tiling = _Tiling(plane_shape, tile_size, overlap, config.size_multiple, fit=fit_tiles)
    total = len(planes) * len(tiling.tiles) + 1
    done = 0
    results = []
    for plane in planes:
        stitched = yield from _predict_plane(net, plane, tiling, dev, amp, batch_size, gate_names, done, total)
        done += len(tiling.tiles)
        results.append(stitched)

    yield Progress(done, total, "post-processing")
    probs = np.stack([r[0] for r in results], axis=1) if len(planes) > 1 else results[0][0]
    gate_maps = {
        name: (np.stack([r[1][name] for r in results]) if len(planes) > 1 else results[0][1][name])
        for name in gate_names
    }
    if zoom is not None:  # back to the image's grid
        probs = _resample(probs, original_shape)
        probs /= probs.sum(axis=0, keepdims=True)
        gate_maps = {name: _resample(g[np.newaxis], original_shape)[0] for name, g in gate_maps.items()}
    foreground = 1.0 - probs[0]
    if not instances:
        labels = (foreground > 0.5).astype(np.uint8)
    elif len(planes) > 1:
        labels = _instances_per_plane(probs, min_size)
    else:
        labels = probabilities_to_instances(probs, min_size=min_size)
    yield Progress(total, total, "done")
    return Prediction(
        labels=labels,
        probability=foreground.astype(np.float32, copy=False),
        gate_maps=gate_maps,
        spatial_axes=spatial_axes,
        device=str(dev),
        class_probabilities=probs if keep_class_probabilities else None,
    )


def _isotropic_zoom(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
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


def _resample(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """(C, Z, Y, X) float array -> (C, *shape) by trilinear interpolation, channel by channel."""
    out = np.empty((array.shape[0], *shape), dtype=np.float32)
    for c in range(array.shape[0]):
        channel = torch.from_numpy(np.ascontiguousarray(array[c], dtype=np.float32))[None, None]
        out[c] = F.interpolate(channel, size=tuple(shape), mode="trilinear", align_corners=False)[0, 0].numpy()
    return out


def _instances_per_plane(probs: np.ndarray, min_size: int) -> np.ndarray:
    """Instances plane by plane with ids unique across the stack."""
    out = np.zeros(probs.shape[1:], dtype=np.int32)
    offset = 0
    for z in range(probs.shape[1]):
        plane = probabilities_to_instances(probs[:, z], min_size=min_size)
        out[z] = np.where(plane > 0, plane + offset, 0)
        offset = max(offset, int(out[z].max()))
    return out


class _Tiling:
    """Tile grid over one (padded) plane or volume."""

    def __init__(self, shape: Sequence[int], tile_size: int, overlap: int, multiple: int, fit: bool = False) -> None:
        self.shape = tuple(shape)
        if fit:
            self.tile = tuple(_fitted_tile(n, tile_size, overlap, multiple) for n in shape)
        else:
            self.tile = tuple(_round_up(min(tile_size, n), multiple) for n in shape)
        self.padded = tuple(max(n, t) for n, t in zip(shape, self.tile))
        self.overlap = overlap
        starts = [tile_starts(n, t, overlap) for n, t in zip(self.padded, self.tile)]
        self.tiles = [tuple(s) for s in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(shape))]
        self.window = _blend_window(self.tile, overlap)

    def slices(self, start: Sequence[int]) -> tuple[slice, ...]:
        return tuple(slice(s, s + t) for s, t in zip(start, self.tile))


def _predict_plane(net, x, tiling: _Tiling, dev, amp, batch_size, gate_names, done, total):
    """Stitch class probabilities and gate maps over one plane (generator)."""
    x = _pad_to(x, tiling.padded)
    n_classes, in_channels = net.config.out_channels, net.config.in_channels
    probs = torch.zeros((n_classes, *tiling.padded))
    gates = torch.zeros((len(gate_names), *tiling.padded))
    weights = torch.zeros(tiling.padded)
    window = tiling.window
    mode = "bilinear" if net.config.spatial_dims == 2 else "trilinear"
    channels_last = net.config.spatial_dims == 2
    source = torch.from_numpy(x)
    for batch in _batches(tiling.tiles, batch_size):
        # Inference mode is thread-local: it must not stay on across the yield, where the
        # thread runs other code (a worker's next job, or the caller's training loop).
        with torch.inference_mode():
            tiles = torch.stack([source[(slice(None), *tiling.slices(s))] for s in batch]).to(dev, non_blocking=True)
            tiles = tiles.expand(-1, in_channels, *tiles.shape[2:])
            tiles = tiles.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                logits, alphas = net(tiles)
            tile_probs = torch.softmax(logits.float(), dim=1)
            if gate_names:
                tile_gates = torch.cat(
                    [
                        F.interpolate(alphas[g].float(), size=tiling.tile, mode=mode, align_corners=False)
                        for g in gate_names
                    ],
                    dim=1,
                )
            tile_probs = tile_probs.cpu()
            tile_gates = tile_gates.cpu() if gate_names else None
            for i, start in enumerate(batch):
                region = tiling.slices(start)
                probs[(slice(None), *region)].addcmul_(tile_probs[i], window)
                weights[region] += window
                if gate_names:
                    gates[(slice(None), *region)].addcmul_(tile_gates[i], window)
        done += len(batch)
        yield Progress(done, total)
    crop = tuple(slice(0, n) for n in tiling.shape)
    norm = weights[crop]
    out_probs = (probs[(slice(None), *crop)] / norm).numpy()
    out_gates = {name: (gates[(i, *crop)] / norm).clamp_(0, 1).numpy() for i, name in enumerate(gate_names)}
    return out_probs, out_gates
