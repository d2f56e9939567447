"""Zarr stores on disk for results predicted block by block in the viewer, and their cleanup.

The masks and attention maps of a large or lazy image (see :mod:`.lazy`) are written into a
zarr store rather than into memory, and the result layers read from it. Each Predict run
gets one store, ``<pid>-<id>.zarr`` in the plugin's cache folder
(``$NAPARI_ATTENTION_UNET_HOME/scratch`` when that is set). A store is deleted as soon as
no layer uses it (the layers were deleted, or a new run replaced their data), when the
Python process exits, and, for a process that crashed, the next time a store is made.

Planes larger than :data:`PYRAMID_ABOVE` px get a multiscale pyramid (levels halved down to
:data:`PYRAMID_TOP` px) so that napari reads only the part on screen, at screen resolution.
No Qt and no napari here.
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_attention_unet.large_data.block_geometry import Block

__all__ = ["PYRAMID_ABOVE", "PYRAMID_TOP", "LazyOutputs", "ScratchStores", "pyramid_levels", "scratch_dir"]

#: A plane with a side longer than this gets a pyramid: napari reads a single-scale layer's whole plane.
PYRAMID_ABOVE = 2048
#: The coarsest pyramid level's sides are at most this (or the block size stops the halving).
PYRAMID_TOP = 1024
#: Preferred zarr chunk edge; chunks always divide a block, so a block writes whole chunks.
CHUNK = 512

_CREATED: set[Path] = set()  # every store this process made and has not deleted yet


def scratch_dir() -> Path:
    """Where the stores go: the plugin's cache folder (a disk, not a RAM-backed /tmp)."""
    env = os.environ.get("NAPARI_ATTENTION_UNET_HOME")
    if env:
        return Path(env) / "scratch"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-attention-unet", appauthor=False)) / "scratch"


def pyramid_levels(plane_shape: Sequence[int], block_size: int, above: int | None = None) -> int:
    """How many levels (full resolution included) the outputs of a plane of ``plane_shape`` get.

    Each level halves Y and X; a level's factor must divide ``block_size`` so that every
    block maps onto whole pixels of every level.
    """
    above = PYRAMID_ABOVE if above is None else above
    if max(plane_shape) <= above:
        return 1
    levels = 1
    while max(-(-n // 2 ** (levels - 1)) for n in plane_shape) > PYRAMID_TOP and block_size % 2**levels == 0:
        levels += 1
    return levels


def _level_slices(block: Block, factor: int) -> tuple[slice, slice]:
    return tuple(slice(a // factor, -(-b // factor)) for a, b in block.core)


@dataclass
class LazyOutputs:
    """Zarr arrays for one run: ``labels`` and one map per gate, each a list of levels (finest first).

    Arrays have the image's spatial shape (leading axes, then Y, X); a level halves Y and X
    only. Level ``k`` holds level 0 subsampled by ``2**k`` (every ``2**k``-th pixel), so labels
    keep their ids at every level.
    """

    path: Path
    labels: list
    gates: dict[str, list] = field(default_factory=dict)

    @property
    def levels(self) -> int:
        return len(self.labels)

    def layer_data(self, arrays: list):
        """What a napari layer takes: the array, or the list of levels for a pyramid."""
        return arrays[0] if len(arrays) == 1 else list(arrays)

    def write_block(self, plane: tuple[int, ...], block: Block, labels: np.ndarray, gate_maps: np.ndarray) -> None:
        """Write one block's core (labels, and ``gate_maps`` gate first) into every level."""
        for level in range(self.levels):
            f = 2**level
            where = plane + _level_slices(block, f)
            self.labels[level][where] = labels[::f, ::f]
            for k, arrays in enumerate(self.gates.values()):
                arrays[level][where] = gate_maps[k, ::f, ::f].astype(arrays[level].dtype, copy=False)

    def map_labels(self, plane: tuple[int, ...], block: Block, mapping: Callable[[np.ndarray], np.ndarray]) -> None:
        """Replace the ids in a block's core at every level by ``mapping(ids)`` (e.g. local -> global)."""
        for level, array in enumerate(self.labels):
            where = plane + _level_slices(block, 2**level)
            array[where] = mapping(np.asarray(array[where])).astype(array.dtype, copy=False)


def create_outputs(
    path: Path,
    shape: Sequence[int],
    block_size: int,
    gate_names: Sequence[str],
    *,
    instances: bool = True,
    levels: int = 1,
) -> LazyOutputs:
    """Empty (all-zero) arrays in a new zarr store at ``path``; only metadata is written."""
    import zarr

    shape = tuple(int(n) for n in shape)
    leading, plane = shape[:-2], shape[-2:]
    root = zarr.open_group(str(path), mode="w")
    root.attrs.update({"napari_attention_unet": {"gates": list(gate_names), "levels": levels}})

    def pyramid(name: str, dtype) -> list:
        arrays = []
        for level in range(levels):
            f = 2**level
            chunk = math.gcd(block_size // f, CHUNK)
            level_shape = leading + tuple(-(-n // f) for n in plane)
            chunks = (1,) * len(leading) + (min(chunk, level_shape[-2]), min(chunk, level_shape[-1]))
            arrays.append(
                root.create_array(f"{name}/{level}", shape=level_shape, dtype=dtype, chunks=chunks, fill_value=0)
            )
        return arrays

    labels = pyramid("labels", np.uint32 if instances else np.uint8)
    # float16 holds values in [0, 1] to 2.5e-4, at half the disk and reading time of float32.
    gates = {name: pyramid(f"attention_{name}", np.float16) for name in gate_names}
    return LazyOutputs(Path(path), labels, gates)


def _pid_alive(pid: int) -> bool | None:
    """None when it cannot be told (no psutil): such stores are left alone."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.pid_exists(pid)


def prune_stale(folder: Path | None = None) -> list[Path]:
    """Delete the stores of processes that are gone (napari crashed or was killed)."""
    folder = scratch_dir() if folder is None else folder
    removed = []
    for store in folder.glob("*.zarr") if folder.is_dir() else []:
        pid = store.name.split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)) is False:
            shutil.rmtree(store, ignore_errors=True)
            removed.append(store)
    return removed


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _CREATED.discard(path)


@atexit.register
def _remove_all() -> None:
    for path in list(_CREATED):
        _remove(path)


class ScratchStores:
    """The stores made for one widget; deletes those no layer uses any more."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()

    def create(
        self,
        shape: Sequence[int],
        block_size: int,
        gate_names: Sequence[str],
        *,
        instances: bool = True,
        pyramid_above: int | None = None,
    ) -> LazyOutputs:
        folder = scratch_dir()
        folder.mkdir(parents=True, exist_ok=True)
        prune_stale(folder)
        path = folder / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.zarr"
        levels = pyramid_levels(tuple(shape)[-2:], block_size, pyramid_above)
        _CREATED.add(path)
        self.paths.add(path)
        return create_outputs(path, shape, block_size, gate_names, instances=instances, levels=levels)

    def release_unused(self, in_use: Iterable[str | os.PathLike]) -> list[Path]:
        """Delete this widget's stores that are not in ``in_use`` (stores layers read, or a run writes)."""
        keep = {Path(p) for p in in_use}
        released = sorted(self.paths - keep)
        for path in released:
            _remove(path)
            self.paths.discard(path)
        return released
