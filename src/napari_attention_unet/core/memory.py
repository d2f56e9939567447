"""How much memory predicting a volume whole takes at its peak, and whether this machine has it.

A 3D model predicts a volume whole: the normalised volume, its cubic-voxel grid, the stitched class
probabilities and gate maps on that grid and again on the volume's own grid all live at once. Measured
on this project's CPU machine (``benchmarks/bench_memory.py``): about 60 bytes a voxel for 3 classes
and 3 gates on cubic voxels, plus about 200 MB for the network's activations on one 96³ tile; a
0.34 GB uint16 volume took 10.8 GB and, in the viewer, the machine with it. So a volume that will not fit
is refused before any of that is allocated, with the size that would. No torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from napari_attention_unet.core.images import ImageShapeError

__all__ = [
    "NotEnoughMemoryError",
    "available_memory",
    "check_volume_fits",
    "tile_activation_bytes",
    "volume_prediction_bytes",
]

#: Refuse when the estimate is more than this share of the memory available now.
SHARE = 0.8


class NotEnoughMemoryError(ImageShapeError, MemoryError):
    """Predicting a volume whole would take more memory than the machine has free; says what fits (an
    :class:`ImageShapeError`, so that the command line and the dock report it as they report a bad shape)."""


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now: Linux's ``MemAvailable``; elsewhere the free
    physical pages where the system says (``sysconf``), else None (no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows), or no such name (macOS)
        return None


def tile_activation_bytes(base_width: int, tile: int = 96) -> int:
    """The network's activations on one 3D tile: what a region of any size needs besides its own voxels."""
    return 4 * tile**3 * base_width * 4


def volume_prediction_bytes(
    spatial_shape: Sequence[int],
    grid_shape: Sequence[int],
    *,
    channels: int,
    classes: int,
    gates: int,
    base_width: int,
    tile: int = 96,
    instances: bool = False,
) -> int:
    """About the peak bytes of predicting a volume of ``spatial_shape`` whole with a 3D model that sees it on
    ``grid_shape`` (cubic voxels): float32 copies of the input, the stitched outputs on the grid (with their
    weights) and back on the volume's grid, the network's activations on one tile, and for ``instances`` the
    watershed's distance maps (measured about 24 bytes a voxel more than class values)."""
    voxels, grid = math.prod(spatial_shape), math.prod(grid_shape)
    per_grid = 4 * (channels + classes + gates + 4) + (24 if instances else 0)
    per_voxel = 4 * (channels + classes + gates + 1)
    return int(grid * per_grid + voxels * per_voxel + tile_activation_bytes(base_width, tile))


def check_volume_fits(
    needed: int, spatial_shape: Sequence[int], available: int | None = None, *, fixed: int = 0
) -> None:
    """Raise :class:`NotEnoughMemoryError` when ``needed`` bytes are more than :data:`SHARE` of the memory
    available (``available``, else :func:`available_memory`; no check when it cannot be told). ``fixed``: the
    part of ``needed`` that a smaller region would need too (the network's activations on one tile)."""
    available = available_memory() if available is None else available
    if available is None or needed <= SHARE * available:
        return
    shape = "x".join(str(int(n)) for n in spatial_shape)
    start = (
        f"predicting this {shape} volume whole with a 3D model needs about {_gb(needed)} of memory at its "
        f"peak, and {_gb(available)} is available"
    )
    room = SHARE * available - fixed
    if room <= 0:
        raise NotEnoughMemoryError(
            f"{start}; the network alone needs about {_gb(fixed)} on one tile: close other programs, or predict "
            "on a machine with more memory"
        )
    scale = (room / max(needed - fixed, 1)) ** (1 / len(spatial_shape))
    fits = "x".join(str(max(1, int(n * scale))) for n in spatial_shape)
    raise NotEnoughMemoryError(
        f"{start}: crop it to a region of about {fits} voxels (or several), close other programs, or predict it "
        "on a machine with more memory"
    )


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
