"""Stitching for :mod:`.blocks`: match labels across block faces, union-find, consecutive global ids."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from napari_attention_unet.large_data.block_geometry import Block, BlockPlan, Index, Span

__all__ = ["BlockLinks", "Stitcher", "Stitching", "local_labels", "stitch"]


@dataclass(frozen=True)
class BlockLinks:
    """What stitching needs from one block (small; send this to the stitcher, not the arrays).

    Local ids ``1..n_core`` occur in the block's core; ``n_core+1..n_labels`` only in its
    link bands (objects of a neighbour's core seen through the halo). ``bands`` maps each
    neighbour's index to the local labels over :meth:`BlockPlan.band` for that face.
    """

    index: Index
    n_core: int
    n_labels: int
    bands: dict[Index, np.ndarray] = field(default_factory=dict, repr=False)


def _band_in_outer(block: Block, band: tuple[Span, Span]) -> tuple[slice, slice]:
    return tuple(slice(a - o0, b - o0) for (a, b), (o0, _) in zip(band, block.outer))


def local_labels(outer_labels: np.ndarray, block: Block, plan: BlockPlan) -> tuple[np.ndarray, BlockLinks]:
    """One block's labels (on its outer region) -> ``(core labels with local ids, its BlockLinks)``.

    Objects present in the core get ``1..n_core`` (in the order of their outer ids), objects
    seen only in the link bands get the ids after them, everything else is dropped.
    """
    core = outer_labels[block.core_in_outer()]
    bands = {n: outer_labels[_band_in_outer(block, plan.band(block.index, n))] for n in plan.neighbours(block.index)}
    top = int(outer_labels.max(initial=0))
    lut = np.zeros(top + 1, dtype=np.int32)
    core_ids = np.unique(core)
    core_ids = core_ids[core_ids > 0]
    lut[core_ids] = np.arange(1, len(core_ids) + 1, dtype=np.int32)
    n_labels = len(core_ids)
    if bands:
        seen = np.unique(np.concatenate([b.reshape(-1) for b in bands.values()]))
        extra = seen[(seen > 0) & (lut[seen] == 0)]
        lut[extra] = np.arange(n_labels + 1, n_labels + 1 + len(extra), dtype=np.int32)
        n_labels += len(extra)
    links = BlockLinks(block.index, len(core_ids), n_labels, {n: lut[b] for n, b in bands.items()})
    return lut[core], links


@dataclass
class Stitching:
    """Global ids: ``lut(index)[local_id]`` for every block; ``n_objects`` objects in all."""

    n_objects: int
    luts: dict[Index, np.ndarray]

    def lut(self, index: Index) -> np.ndarray:
        return self.luts[tuple(index)]


def _match_band(a: np.ndarray, b: np.ndarray, min_iou: float) -> np.ndarray:
    """Pairs ``(id in a, id in b)`` whose overlap in the band has IoU >= ``min_iou``."""
    both = (a > 0) & (b > 0)
    if not both.any():
        return np.zeros((0, 2), dtype=np.int64)
    pairs, counts = np.unique(np.stack([a[both], b[both]]).astype(np.int64), axis=1, return_counts=True)
    ids_a, area_a = np.unique(a[a > 0], return_counts=True)
    ids_b, area_b = np.unique(b[b > 0], return_counts=True)
    union = area_a[np.searchsorted(ids_a, pairs[0])] + area_b[np.searchsorted(ids_b, pairs[1])] - counts
    keep = counts >= min_iou * union
    return pairs[:, keep].T


class Stitcher:
    """Incremental stitching: ``add`` each block's links as it finishes, then ``finish``.

    A face is matched as soon as both of its blocks are in, and their bands are dropped,
    so memory holds only the bands of blocks whose neighbours are still running.
    """

    def __init__(self, plan: BlockPlan, min_iou: float = 0.5) -> None:
        self.plan = plan
        self.min_iou = min_iou
        self._counts: dict[Index, tuple[int, int]] = {}
        self._pending: dict[Index, dict[Index, np.ndarray]] = {}
        self._pairs: list[tuple[Index, Index, np.ndarray]] = []

    def add(self, links: BlockLinks) -> None:
        index = tuple(links.index)
        if index in self._counts:
            raise ValueError(f"block {index} was added twice")
        self._counts[index] = (links.n_core, links.n_labels)
        bands = dict(links.bands)
        for other in list(bands):
            if other in self._pending and index in self._pending[other]:
                pairs = _match_band(self._pending[other].pop(index), bands.pop(other), self.min_iou)
                self._pairs.append((other, index, pairs))
        self._pending[index] = bands

    def finish(self, *, partial: bool = False) -> Stitching:
        """Global ids for every block added; all blocks must be in unless ``partial`` (e.g. after a cancel).

        With ``partial``, blocks never added are left out (no lut) and objects are joined
        across the faces between added blocks only.
        """
        missing = [b.index for b in self.plan.blocks if b.index not in self._counts]
        if missing and not partial:
            raise ValueError(f"cannot stitch: {len(missing)} block(s) missing, e.g. {missing[0]}")
        order = [b.index for b in self.plan.blocks if b.index in self._counts]
        offsets, total = {}, 0
        for index in order:
            offsets[index] = total
            total += self._counts[index][1]
        parent = np.arange(total + 1, dtype=np.int64)

        def find(i: int) -> int:
            root = i
            while parent[root] != root:
                root = parent[root]
            while parent[i] != root:
                parent[i], i = root, parent[i]
            return root

        for a, b, pairs in self._pairs:
            for local_a, local_b in pairs:
                ra, rb = find(offsets[a] + int(local_a)), find(offsets[b] + int(local_b))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        roots = np.arange(total + 1, dtype=np.int64)
        for i in np.flatnonzero(parent != roots):  # only linked labels have another root
            roots[i] = find(int(i))
        # Number the components that own at least one core label, in plan order of first appearance.
        core_roots = [roots[offsets[i] + 1 : offsets[i] + self._counts[i][0] + 1] for i in order]
        flat = np.concatenate(core_roots) if core_roots else np.zeros(0, np.int64)
        unique, first = np.unique(flat, return_index=True)
        rank = np.empty(len(unique), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(1, len(unique) + 1)
        final = rank[np.searchsorted(unique, flat)] if len(flat) else flat
        luts, start = {}, 0
        for index, ids in zip(order, core_roots):
            luts[index] = np.concatenate([[0], final[start : start + len(ids)]]).astype(np.int64)
            start += len(ids)
        return Stitching(len(unique), luts)


def stitch(plan: BlockPlan, links: Iterable[BlockLinks], min_iou: float = 0.5) -> Stitching:
    """Union-find over the label pairs matched across every face, then consecutive global ids."""
    stitcher = Stitcher(plan, min_iou)
    for item in links:
        stitcher.add(item)
    return stitcher.finish()
