"""Tiles over one plane or volume, and the network run over them with smooth blending.

:class:`Tiling` places overlapping tiles (fitted to the image, or of a fixed size) and
:func:`predict_tiles` runs the network tile batch by tile batch, blending class probabilities
and gate maps with a raised-cosine window. Whole-image prediction (:mod:`.predict`) and the
block engine (:mod:`napari_attention_unet.large_data.blocks`) share both.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch.nn import functional as F

from napari_attention_unet.core.device import channels_last_format
from napari_attention_unet.core.progress import Progress

__all__ = ["Tiling", "default_overlap", "predict_tiles", "tile_starts"]

T = TypeVar("T")


def default_overlap(tile_size: int) -> int:
    """The overlap of tiles when none is given: an eighth of the tile, at least 16 px, at most a quarter."""
    return min(max(tile_size // 8, 16), tile_size // 4)


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


class Tiling:
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


def predict_tiles(
    net, x: np.ndarray, tiling: Tiling, dev: torch.device, amp, batch_size: int, gate_names, done: int, total: int
) -> Generator[Progress, None, tuple[np.ndarray, dict[str, np.ndarray]]]:
    """Class probabilities and gate maps over one normalised plane or volume ``x`` (C, ...).

    Yields :class:`Progress` (``done`` counting on from the given value, of ``total``) after each
    batch of tiles; returns ``(probabilities, {gate: map})`` cropped to ``tiling.shape``.
    """
    x = _pad_to(x, tiling.padded)
    n_classes, in_channels = net.config.out_channels, net.config.in_channels
    probs = torch.zeros((n_classes, *tiling.padded))
    gates = torch.zeros((len(gate_names), *tiling.padded))
    weights = torch.zeros(tiling.padded)
    window = tiling.window
    mode = "bilinear" if net.config.spatial_dims == 2 else "trilinear"
    memory_format = channels_last_format(net.config.spatial_dims)
    source = torch.from_numpy(x)
    for batch in _batches(tiling.tiles, batch_size):
        # Inference mode is thread-local: it must not stay on across the yield, where the
        # thread runs other code (a worker's next job, or the caller's training loop).
        with torch.inference_mode():
            tiles = torch.stack([source[(slice(None), *tiling.slices(s))] for s in batch]).to(dev, non_blocking=True)
            tiles = tiles.expand(-1, in_channels, *tiles.shape[2:])
            tiles = tiles.contiguous(memory_format=memory_format)
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
