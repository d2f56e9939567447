"""Block geometry for :mod:`.blocks`: a grid of blocks with halos over a 2D image, and link bands."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from napari_attention_unet.core.images import ImageShapeError
from napari_attention_unet.core.resampling import isotropic_shape
from napari_attention_unet.core.tiling import Tiling, default_overlap

__all__ = ["BLOCK_OVERLAP", "BLOCK_TILE", "Block", "BlockPlan", "Index", "Span", "plan_blocks", "zoomed_plan"]

Span = tuple[int, int]  # [start, stop) along one axis
Index = tuple[int, int]  # (row, column) of a block in the grid

# A 2048 px block with its 64 px halo is 2176 px across: four tiles of 592 px overlapping by 64 cover
# it exactly, where predict()'s fitted tiles (at most 576 px) would take five. So blocks fit tiles of
# up to 592 px (528 * 9 / 8), with predict()'s 64 px overlap.
BLOCK_TILE, BLOCK_OVERLAP = 528, 64


def tile_policy(tile_size: int | None, overlap: int | None) -> tuple[bool, int, int]:
    """``(fit, tile_size, overlap)`` for the tiling of one block's outer region."""
    if tile_size is None:
        return True, BLOCK_TILE, BLOCK_OVERLAP if overlap is None else overlap
    return False, tile_size, default_overlap(tile_size) if overlap is None else overlap


@dataclass(frozen=True)
class Block:
    """One block: ``core`` is what it writes, ``outer`` (core + halo, clipped) what it reads."""

    index: Index
    core: tuple[Span, Span]
    outer: tuple[Span, Span]

    @property
    def core_slices(self) -> tuple[slice, slice]:
        return tuple(slice(a, b) for a, b in self.core)

    @property
    def core_shape(self) -> tuple[int, int]:
        return tuple(b - a for a, b in self.core)

    @property
    def outer_shape(self) -> tuple[int, int]:
        return tuple(b - a for a, b in self.outer)

    def core_in_outer(self) -> tuple[slice, slice]:
        """The core as slices of an array holding the outer region."""
        return tuple(slice(c0 - o0, c1 - o0) for (c0, c1), (o0, _) in zip(self.core, self.outer))


@dataclass(frozen=True)
class BlockPlan:
    """Block grid over a 2D image of spatial ``shape`` (Y, X) with axes ``axes``."""

    shape: tuple[int, int]
    axes: str
    block_size: int
    halo: int
    link_width: int
    grid: tuple[int, int]

    @property
    def blocks(self) -> list[Block]:
        return [self.block((i, j)) for i in range(self.grid[0]) for j in range(self.grid[1])]

    def block(self, index: Index) -> Block:
        core = tuple((k * self.block_size, min((k + 1) * self.block_size, n)) for k, n in zip(index, self.shape))
        outer = tuple((max(a - self.halo, 0), min(b + self.halo, n)) for (a, b), n in zip(core, self.shape))
        return Block(tuple(index), core, outer)

    def faces(self) -> list[tuple[Index, Index]]:
        """Neighbouring block pairs ``(a, b)``, ``b`` below or right of ``a``, in plan order."""
        pairs = []
        for i in range(self.grid[0]):
            for j in range(self.grid[1]):
                if i + 1 < self.grid[0]:
                    pairs.append(((i, j), (i + 1, j)))
                if j + 1 < self.grid[1]:
                    pairs.append(((i, j), (i, j + 1)))
        return pairs

    def neighbours(self, index: Index) -> list[Index]:
        i, j = index
        candidates = [(i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1)]
        return [(a, b) for a, b in candidates if 0 <= a < self.grid[0] and 0 <= b < self.grid[1]]

    def band(self, a: Index, b: Index) -> tuple[Span, Span]:
        """The link band across the face shared by neighbours ``a`` and ``b`` (global spans).

        ``2 * link_width`` px across the face, and the shared core extent along it grown by
        ``link_width`` at both ends so that objects at block corners are linked too.
        """
        a, b = (a, b) if a < b else (b, a)
        axis = 0 if a[0] != b[0] else 1
        edge = self.block(b).core[axis][0]
        w = self.link_width
        along = self.block(a).core[1 - axis]
        n_along = self.shape[1 - axis]
        spans = [(0, 0), (0, 0)]
        spans[axis] = (max(edge - w, 0), min(edge + w, self.shape[axis]))
        spans[1 - axis] = (max(along[0] - w, 0), min(along[1] + w, n_along))
        return tuple(spans)

    def chunk_size(self, preferred: int = 1024) -> int:
        """A chunk edge for output arrays that divides ``block_size`` (race-free parallel writes)."""
        return math.gcd(self.block_size, preferred)

    def tiles_per_block(
        self, tile_size: int | None, overlap: int | None, multiple: int, zoom: float | None = None
    ) -> list[int]:
        """How many network tiles each block (in plan order) takes, enlarged ``zoom`` times; for progress totals."""
        fit, tile_size, overlap = tile_policy(tile_size, overlap)
        factor = (zoom, zoom) if zoom else (1.0, 1.0)
        return [
            len(Tiling(isotropic_shape(b.outer_shape, factor), tile_size, overlap, multiple, fit=fit).tiles)
            for b in self.blocks
        ]

    def probe_windows(self, size: int = 512) -> list[Block]:
        """Windows of up to ``size`` px (core = outer) where the image is looked at before its blocks:
        its centre and the middles of its four quarters, distinct ones only."""
        windows = []
        for fy, fx in ((0.5, 0.5), (0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)):
            spans = []
            for f, n in zip((fy, fx), self.shape):
                edge = min(size, n)
                start = min(max(int(round(f * n - edge / 2)), 0), n - edge)
                spans.append((start, start + edge))
            window = Block((len(windows), 0), tuple(spans), tuple(spans))
            if all(w.core != window.core for w in windows):
                windows.append(window)
        return windows


def zoomed_plan(plan: BlockPlan, zoom: float | None, smallest: int = 256, *, shrink_blocks: bool = True) -> BlockPlan:
    """The plan for an image whose blocks are enlarged ``zoom`` times before the network.

    The halo shrinks by the zoom (to no less than 32 px, and never beyond the plan's): enlarged,
    it still gives the network its 64 px of context, and small objects are linked in a band of
    half of it. The block edge is halved (down to ``smallest``) until an enlarged block with its
    halo is at most 1.5 times as wide as a block of the plan as it is, so that a block's working
    set stays within about twice what it was. Halving keeps the blocks on the grid of output
    chunks that divide the plan's block size. ``shrink_blocks=False`` keeps the blocks (outputs
    already made for them) and shrinks the halo only.
    """
    if not zoom or zoom <= 1:
        return plan
    halo = min(plan.halo, max(32, math.ceil(plan.halo / zoom)))
    link_width = halo // 2 if plan.link_width == plan.halo // 2 else min(plan.link_width, halo)
    limit, size = (plan.block_size + 2 * plan.halo) * 1.5, plan.block_size
    while shrink_blocks and size // 2 >= smallest and size % 2 == 0 and (size + 2 * halo) * zoom > limit:
        size //= 2
    grid = tuple(-(-n // size) for n in plan.shape)
    return BlockPlan(plan.shape, plan.axes, size, halo, link_width, grid)


def plan_blocks(
    shape: Sequence[int],
    axes: str | None = None,
    *,
    block_size: int = 2048,
    halo: int = 64,
    link_width: int | None = None,
) -> BlockPlan:
    """Plan blocks over an image of ``shape`` (axes ``YX``, ``YXC`` or ``CYX``).

    ``halo`` px of context are read around each block (at least the tile overlap is wise:
    core pixels then get as much context as at a tile seam). Labels are matched across a
    face in a band of ``link_width`` px on each side (default ``halo // 2``, at most ``halo``).
    """
    shape = tuple(int(n) for n in shape)
    if axes is None:
        axes = "YX" if len(shape) == 2 else ("YXC" if len(shape) == 3 and shape[-1] in (3, 4) else None)
    if axes is None:
        raise ImageShapeError(
            f"block by block (--block-size, zarr input or a .zarr --out) predicts 2D images (axes YX, YXC or CYX); "
            f"an image of shape {shape} looks like a volume: give a TIFF or NIfTI file, a folder as --out and no "
            "--block-size (a 2D image with channels first: --axes CYX)"
        )
    axes = axes.upper()
    if len(axes) != len(shape) or sorted(axes) not in (sorted("YX"), sorted("YXC")):
        raise ImageShapeError(
            f"block by block (zarr input or output, large images) predicts 2D images (axes YX, YXC or CYX); got "
            f"axes {axes!r} for shape {shape} (a volume: give a TIFF or NIfTI file and a folder as --out)"
        )
    spatial = (shape[axes.index("Y")], shape[axes.index("X")])
    if min(spatial) < 1:
        raise ImageShapeError(f"the image is empty (shape {shape})")
    if block_size < 16:
        raise ValueError(f"block_size must be at least 16 px, got {block_size}")
    if halo < 0:
        raise ValueError(f"halo must be >= 0, got {halo}")
    link_width = halo // 2 if link_width is None else link_width
    if not 0 <= link_width <= halo:
        raise ValueError(f"link_width must be between 0 and the halo ({halo}), got {link_width}")
    grid = tuple(-(-n // block_size) for n in spatial)
    return BlockPlan(spatial, axes, int(block_size), int(halo), int(link_width), grid)
