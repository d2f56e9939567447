"""Where blocks are written: array-likes with slice assignment, and the relabelling to global ids."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_attention_unet.large_data.block_geometry import Block, BlockPlan

__all__ = ["BlockSinks", "allocate_sinks", "as_sink_dtype", "relabel_block"]


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


def as_sink_dtype(values: np.ndarray, dtype: Any) -> np.ndarray:
    """Values in [0, 1] as ``dtype``: floats as they are, integers as ``round(v * max)``."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        top = np.iinfo(dtype).max
        return np.rint(np.clip(values, 0, 1) * top).astype(dtype)
    return values.astype(dtype, copy=False)


def relabel_block(labels: Any, block: Block, lut: np.ndarray) -> None:
    """Replace the local ids of ``block``'s core in the ``labels`` sink by global ids (``lut[local]``)."""
    ys, xs = block.core_slices
    local = np.asarray(labels[ys, xs])
    labels[ys, xs] = lut[local].astype(labels.dtype, copy=False)
