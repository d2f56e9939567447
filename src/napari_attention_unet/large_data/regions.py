"""Array-likes over files, read region by region: an uncompressed TIFF (:class:`TiffRegionArray`,
for inputs and on-disk outputs of large images) and a view with singleton axes fixed
(:class:`SqueezedArray`, e.g. OME-Zarr ``t`` and ``z``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["SqueezedArray", "TiffRegionArray"]


class TiffRegionArray:
    """An uncompressed, contiguous TIFF's pixels, read and written region by region.

    Each access maps only the rows it touches (``np.memmap``) and unmaps them at once, so
    the process's resident memory does not grow with the file as a whole-file memmap's
    would. ``row_axis`` is the axis that runs over image rows (0 for YX / YXC, 1 for
    gate-first QYX); axes before it are looped over.
    """

    def __init__(self, path: str | Path, shape, dtype, offset: int, row_axis: int = 0, writable: bool = False):
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.offset, self.row_axis, self.writable = int(offset), row_axis, writable
        self.ndim = len(self.shape)

    @classmethod
    def open(cls, path: str | Path, row_axis: int = 0) -> TiffRegionArray | None:
        """The TIFF's first series, or None when it is compressed or not contiguous."""
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if series.dataoffset is None:
                return None
            return cls(path, series.shape, series.dtype, series.dataoffset, row_axis)

    @classmethod
    def create(cls, path: str | Path, shape, dtype, row_axis: int = 0, **kwargs) -> TiffRegionArray:
        """A new zero-filled TIFF (``tifffile.memmap``); BigTIFF when it needs it; kwargs go to tifffile."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        image = tifffile.memmap(path, shape=tuple(shape), dtype=dtype, bigtiff=nbytes > 2**32 - 2**25, **kwargs)
        offset = image.offset
        del image
        return cls(path, shape, dtype, offset, row_axis, writable=True)

    def _keys(self, key) -> tuple[tuple, list, slice, tuple]:
        """Split an index into (leading positions, leading ranges, row slice, the rest as slices)."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        key = tuple(k if isinstance(k, slice) else slice(int(k), int(k) + 1) for k in key)
        lead = [range(*k.indices(n)) for k, n in zip(key[: self.row_axis], self.shape)]
        positions = list(np.ndindex(*[len(r) for r in lead])) if lead else [()]
        return positions, lead, key[self.row_axis], key[self.row_axis + 1 :]

    @staticmethod
    def _squeezed(key) -> tuple[int, ...]:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            return ()  # only slices after an ellipsis here (the block engine's use)
        return tuple(i for i, k in enumerate(key) if not isinstance(k, slice))

    def _map(self, lead_index: tuple[int, ...], start: int, stop: int, mode: str) -> np.memmap:
        plane_shape = self.shape[self.row_axis + 1 :]
        row_bytes = int(np.prod(plane_shape)) * self.dtype.itemsize
        plane = int(np.ravel_multi_index(lead_index, self.shape[: self.row_axis])) if lead_index else 0
        offset = self.offset + (plane * self.shape[self.row_axis] + start) * row_bytes
        return np.memmap(self.path, self.dtype, mode, offset=offset, shape=(stop - start, *plane_shape))

    def __getitem__(self, key) -> np.ndarray:
        positions, lead, rows, rest = self._keys(key)
        start, stop, step = rows.indices(self.shape[self.row_axis])
        stop = max(stop, start)
        parts = []
        for pos in positions:
            index = tuple(r[p] for r, p in zip(lead, pos))
            if stop > start:
                mapped = self._map(index, start, stop, "r")
                parts.append(np.array(mapped[(slice(None, None, step), *rest)]))
                del mapped
            else:
                parts.append(np.zeros((0, *self.shape[self.row_axis + 1 :]), self.dtype)[(slice(None), *rest)])
        out = np.stack(parts).reshape(*[len(r) for r in lead], *parts[0].shape) if lead else parts[0]
        squeeze = self._squeezed(key)
        return out.squeeze(squeeze) if squeeze else out

    def __setitem__(self, key, value) -> None:
        if not self.writable:
            raise OSError(f"{self.path.name} was opened read-only")
        positions, lead, rows, rest = self._keys(key)
        start, stop, step = rows.indices(self.shape[self.row_axis])
        if step != 1:
            raise IndexError("TiffRegionArray writes contiguous row ranges only")
        value = np.asarray(value)
        expanded = [len(r) for r in lead] + [
            len(range(*k.indices(n))) for k, n in zip((rows, *rest), self.shape[self.row_axis :])
        ]
        value = np.broadcast_to(
            value.reshape([n for i, n in enumerate(expanded) if i not in self._squeezed(key)]) if value.ndim else value,
            expanded,
        )
        for pos in positions:
            index = tuple(r[p] for r, p in zip(lead, pos))
            target = self._map(index, start, stop, "r+")
            target[(slice(None), *rest)] = value[pos]
            target.flush()
            del target

    def __array__(self, dtype=None, copy=None):
        return self[...].astype(dtype) if dtype is not None else self[...]


class SqueezedArray:
    """A view of an array-like with singleton axes fixed at index 0 (e.g. OME-Zarr ``t`` and ``z``)."""

    def __init__(self, array, keep: Sequence[int]):
        self.array, self.keep = array, list(keep)
        self.shape = tuple(array.shape[i] for i in self.keep)
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        full = [0] * self.array.ndim
        for i, k in zip(self.keep, key):
            full[i] = k
        return np.asarray(self.array[tuple(full)])
