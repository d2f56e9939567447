"""What a block is read as: its pixels from any array-like, normalised with whole-image percentiles."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_attention_unet.core.images import match_channels
from napari_attention_unet.large_data.block_geometry import Block, BlockPlan

__all__ = ["Normalization", "global_normalization", "model_input", "read_region"]


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - low) / (high - low)`` after channel matching; ``None`` marks a constant channel."""

    low: tuple[float | None, ...]
    high: tuple[float | None, ...]

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Channel-first pixels -> float32, exactly as ``core.images.normalize`` with these percentiles."""
        out = np.empty(x.shape, dtype=np.float32)
        for c, (lo, hi) in enumerate(zip(self.low, self.high)):
            if lo is None:
                out[c] = 0.0
                continue
            np.subtract(x[c], np.float64(lo), out=out[c], casting="unsafe")
            out[c] *= np.float32(1.0 / (hi - lo))
        return out


def model_input(region: np.ndarray, axes: str, in_channels: int) -> np.ndarray:
    """Pixels read with ``axes`` -> what the network sees before normalisation (channel first; grey stays one)."""
    x = _channel_first(region, axes)
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
    :func:`~napari_attention_unet.core.images.normalize`. Memory: one band of ``rows_per_read`` sampled rows at a time.
    """
    ny, nx = plan.shape
    step = max(1, math.ceil(math.sqrt(ny * nx / max_samples)))
    bands = []
    for y0 in range(0, ny, step * rows_per_read):
        y1 = min(y0 + step * rows_per_read, ny)
        region = _read(source, plan.axes, (slice(y0, y1, step), slice(0, nx, step)))
        bands.append(model_input(region, plan.axes, in_channels))
    sample = np.concatenate(bands, axis=1)
    lows, highs = [], []
    for channel in sample:
        lo, hi = np.percentile(channel.reshape(-1).astype(np.float32), [low, high])
        if not np.isfinite(hi - lo) or hi - lo <= 1e-12:
            lows.append(None), highs.append(None)
        else:
            lows.append(float(lo)), highs.append(float(hi))
    return Normalization(tuple(lows), tuple(highs))


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
