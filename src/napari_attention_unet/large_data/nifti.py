"""NIfTI (``.nii`` / ``.nii.gz``) volumes in and label maps out, on the source's voxel grid.

NIfTI stores a volume as ``(x, y, z[, t])``; napari and the rest of this package use
``([t,] z, y, x)``. :func:`read_nifti` reverses the axes and nothing else: no reorientation
(no ``as_closest_canonical``), so voxel ``[k, j, i]`` of the array is voxel ``(i, j, k)`` of
the file, the affine maps file voxel indices to world (scanner / RAS mm) exactly as it does in
the file, and :func:`write_nifti` reverses the axes back. A label map written with the read
volume as ``like`` therefore lies on the same grid, with the same affine, qform and sform (and
their codes) and the same voxel size. Header extensions are not carried over.

nibabel is an optional dependency: ``pip install "napari-attention-unet[medical]"``.

``python -m napari_attention_unet.large_data.nifti VOL.nii.gz --time-point 3 --out VOL_t3.nii.gz``
writes one time point of a 4D series as a 3D volume that ``attention-unet predict`` can read.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_attention_unet.core.orientation import axcodes

__all__ = [
    "INSTALL_HINT",
    "NibabelMissingError",
    "NiftiFormatError",
    "NiftiVolume",
    "grid_from_metadata",
    "header_orientation",
    "header_spacing",
    "is_nifti_path",
    "nifti_stem",
    "read_nifti",
    "spacing_conflict",
    "write_nifti",
]

INSTALL_HINT = 'NIfTI files (.nii, .nii.gz) need nibabel: pip install "napari-attention-unet[medical]"'
NIFTI_SUFFIXES = (".nii", ".nii.gz")
LABEL_INTENT = 1002  # NIFTI_INTENT_LABEL: "the values are labels", set on the label maps we write


class NibabelMissingError(ImportError):
    """nibabel is not installed; the message says how to install it."""


class NiftiFormatError(ValueError):
    """A NIfTI file we cannot turn into one volume (4D without a time point, 5D, complex, RGB)."""


def _nibabel():
    try:
        import nibabel
    except ImportError as exc:
        raise NibabelMissingError(INSTALL_HINT) from exc
    return nibabel


def is_nifti_path(path: str | Path) -> bool:
    """A ``.nii`` or ``.nii.gz`` file name (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | Path) -> str:
    """``vol.nii.gz`` -> ``vol``; ``sub-01_T1w.nii`` -> ``sub-01_T1w``."""
    name = Path(path).name
    for suffix in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


@dataclass
class NiftiVolume:
    """One NIfTI volume in napari's axis order and what is needed to write a label map back on its grid.

    ``data``: ``(z, y, x)`` (``(y, x)`` for a 2D file; ``(t, z, y, x)`` when every time point
    was asked for), the file's voxels with the header's scaling applied (integer files without
    scaling keep their dtype). ``spacing``: voxel size ``(z, y, x)`` from the header zooms (in
    the header's units, usually mm). ``affine``: the file's 4x4 voxel-to-world matrix for
    ``(i, j, k) = (x, y, z)`` indices. ``header``: the raw header block (348 bytes NIfTI-1, 540
    NIfTI-2), from which :func:`write_nifti` rebuilds the header. ``time_points``: the length
    of the 4th axis (1 for a 3D file); ``time_point``: the one read, if any.
    """

    data: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray
    header: bytes
    time_points: int = 1
    time_point: int | None = None
    intent: int = 0

    @property
    def axes(self) -> str:
        """The axes of ``data``: ``"YX"``, ``"ZYX"`` or ``"TZYX"``."""
        return {2: "YX", 3: "ZYX", 4: "TZYX"}[self.data.ndim]

    @property
    def orientation(self) -> str | None:
        """Where the voxel axes (i, j, k) point, e.g. ``"RAS"`` (:func:`.orientation.axcodes`); None for a 2D file."""
        return axcodes(self.affine) if self.data.ndim - (self.data.ndim == 4) == 3 else None

    def metadata(self, path: str | Path | None = None) -> dict[str, Any]:
        """Plain values for a napari layer's ``metadata["nifti"]``: picklable and JSON-serialisable."""
        return {
            "affine": np.asarray(self.affine, dtype=float).tolist(),
            "header": base64.b64encode(self.header).decode("ascii"),
            "spacing": [float(s) for s in self.spacing],
            "shape": [int(n) for n in self.data.shape],
            "time_point": self.time_point,
            "source": None if path is None else str(path),
        }


def grid_from_metadata(meta: Mapping[str, Any]) -> tuple[np.ndarray, bytes]:
    """``(affine, header bytes)`` from :meth:`NiftiVolume.metadata` (e.g. a napari layer's ``metadata["nifti"]``)."""
    header = meta["header"]
    header = base64.b64decode(header) if isinstance(header, str) else bytes(header)
    return np.asarray(meta["affine"], dtype=float).reshape(4, 4), header


def _header_from_bytes(block: bytes):
    nib = _nibabel()
    header_class = nib.Nifti2Header if len(block) == 540 else nib.Nifti1Header
    return header_class(binaryblock=block[: header_class.template_dtype.itemsize])


def read_nifti(path: str | Path, time_point: int | None = None, *, all_time_points: bool = False) -> NiftiVolume:
    """Read a NIfTI file into a :class:`NiftiVolume` with ``data`` in ``(z, y, x)`` order.

    A 4D file is a time series: pick one with ``time_point`` (0-based), or read all of them as
    ``(t, z, y, x)`` with ``all_time_points``; without either it is an error that says how many
    there are. Trailing axes of length 1 are dropped; 5D and higher, complex and RGB files are
    errors. Raises :class:`NibabelMissingError` without nibabel, ``FileNotFoundError`` for a
    missing file and :class:`NiftiFormatError` for the rest.
    """
    nib = _nibabel()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    image = nib.load(str(path), mmap=False)
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise NiftiFormatError(f"{path.name} is not a single-file NIfTI image ({type(image).__name__})")
    header = image.header
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    dtype = header.get_data_dtype()
    if dtype.names is not None or np.issubdtype(dtype, np.complexfloating):
        raise NiftiFormatError(f"{path.name}: {dtype} voxels are not supported; use a real-valued (scalar) volume")
    if len(shape) > 4:
        raise NiftiFormatError(
            f"{path.name} has {len(shape)} dimensions (shape x, y, z, ... = {shape}); only 2D, 3D and 4D "
            "(time series) NIfTI files are supported"
        )
    time_points = shape[3] if len(shape) == 4 else 1
    if len(shape) == 4 and not all_time_points:
        if time_point is None:
            raise NiftiFormatError(
                f"{path.name} is a time series of {time_points} volumes (shape x, y, z, t = {shape}); pick one "
                f"time point (0 to {time_points - 1}): add `--time-point 0` to the command (predict, train and "
                f"finetune take it), read_nifti(path, time_point=i) in Python, or write one out "
                f"with `python -m napari_attention_unet.large_data.nifti {path.name} --time-point 0 "
                f"--out {nifti_stem(path)}_t0.nii.gz`"
            )
        if not -time_points <= time_point < time_points:
            raise NiftiFormatError(
                f"{path.name} has {time_points} time points (0 to {time_points - 1}); time point {time_point} is "
                "out of range"
            )
        time_point = int(time_point) % time_points
        data = np.asanyarray(image.dataobj[(slice(None),) * 3 + (time_point,) + (0,) * (len(image.shape) - 4)])
    else:
        time_point = None
        data = np.asanyarray(image.dataobj).reshape(shape)
    data = np.ascontiguousarray(np.transpose(data))  # (x, y, z[, t]) -> ([t,] z, y, x)
    spatial = min(len(shape), 3)
    zooms = tuple(float(z) for z in header.get_zooms()[:spatial])
    intent = int(header["intent_code"])
    return NiftiVolume(
        data=data,
        spacing=zooms[::-1],
        affine=np.array(image.affine, dtype=float),
        header=bytes(header.binaryblock),
        time_points=time_points,
        time_point=time_point,
        intent=intent,
    )


def header_spacing(path: str | Path) -> tuple[float, ...] | None:
    """The voxel size ``(z, y, x)`` in a NIfTI file's header, without reading its voxels (None when
    the file cannot be read: reading it for real says why)."""
    try:
        image = _nibabel().load(str(path))
        spatial = min(len(image.shape), 3)
        return tuple(float(z) for z in image.header.get_zooms()[:spatial])[::-1]
    except Exception:  # noqa: BLE001 - the real read reports the problem
        return None


def header_orientation(path: str | Path, time_point: int | None = None) -> str | None:
    """The orientation of a NIfTI volume (``"RAS"``...) from its header, without reading its voxels (None for a
    2D file, a time series without ``time_point`` (reading it says what to do), or one that cannot be read)."""
    try:
        image = _nibabel().load(str(path))
        if len(image.shape) > 3 and image.shape[3] > 1 and time_point is None:
            return None
        return axcodes(image.affine) if len([n for n in image.shape if n > 1]) >= 3 else None
    except Exception:  # noqa: BLE001 - the real read reports the problem
        return None


def spacing_conflict(name: str, given: Sequence[float] | None, header: Sequence[float] | None) -> str | None:
    """A warning when ``--spacing`` (Z,Y,X) is not the voxel size in a NIfTI file's header: the flag
    wins, and typing the sizes in X,Y,Z order is the usual slip (the header's sizes reversed)."""
    if given is None or header is None or len(given) != len(header):
        return None
    typed, stored = np.asarray(given, dtype=float), np.asarray(header, dtype=float)
    if np.allclose(typed, stored, rtol=0.01):
        return None

    def text(v):
        return ",".join(f"{x:g}" for x in v)

    slip = " (reversed: Z,Y,X is the order --spacing takes)" if np.allclose(typed[::-1], stored, rtol=0.01) else ""
    return (
        f"warning: {name}: --spacing {text(typed)} is not the voxel size in its header, {text(stored)} "
        f"(Z,Y,X){slip}; --spacing is used"
    )


def labels_dtype(labels: np.ndarray) -> np.dtype:
    """The smallest of uint8, uint16, int32 that holds ``labels`` (int64 beyond that)."""
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    for dtype in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _like(like) -> tuple[np.ndarray, bytes | None]:
    """``(affine, header bytes or None)`` from a volume, its metadata, an ``(affine, header)`` pair or an affine."""
    if isinstance(like, NiftiVolume):
        return np.asarray(like.affine, dtype=float), like.header
    if isinstance(like, Mapping):
        return grid_from_metadata(like) if "header" in like else (np.asarray(like["affine"], dtype=float), None)
    if isinstance(like, tuple) and len(like) == 2:
        affine, header = like
        if header is not None and not isinstance(header, bytes | bytearray):
            header = bytes(header.binaryblock)  # a nibabel header
        return np.asarray(affine, dtype=float), header
    return np.asarray(like, dtype=float), None


def write_nifti(
    path: str | Path,
    array_zyx: np.ndarray,
    like: NiftiVolume | Mapping | tuple | np.ndarray,
    dtype: Any = None,
    *,
    labels: bool | None = None,
    description: str | None = None,
) -> Path:
    """Write ``array_zyx`` (``([t,] z, y, x)`` or ``(y, x)``) as NIfTI on the grid of ``like``.

    ``like`` is what :func:`read_nifti` returned, its :meth:`~NiftiVolume.metadata`, an
    ``(affine, header)`` pair (header as bytes or a nibabel header) or a bare 4x4 affine. The
    source's header is kept (qform, sform and their codes, units, voxel sizes); the shape and
    dtype are the array's. Integer and boolean arrays are label maps: written as uint8 when the
    values fit, else uint16 or int32, without scaling and with the NIfTI "label" intent; float
    arrays as float32. ``dtype`` overrides either; ``labels`` says whether the values are labels
    (default: integer or boolean dtype). Axes after the third (time, or gates) get a
    voxel size of 1. ``.nii.gz`` compresses; ``.nii`` does not.
    """
    nib = _nibabel()
    path = Path(path)
    array = np.asarray(array_zyx)
    if array.ndim not in (2, 3, 4):
        raise NiftiFormatError(
            f"cannot write an array of shape {array.shape} as NIfTI: use (y, x), (z, y, x) or (t, z, y, x)"
        )
    is_labels = labels if labels is not None else (array.dtype == bool or np.issubdtype(array.dtype, np.integer))
    if dtype is not None:
        out_dtype = np.dtype(dtype)
    elif array.dtype == bool or np.issubdtype(array.dtype, np.integer):
        out_dtype = labels_dtype(array)
    else:
        out_dtype = np.dtype(np.float32)
    data = np.transpose(array).astype(out_dtype, copy=False)  # (x, y[, z[, t]])
    affine, block = _like(like)
    header = _header_from_bytes(block) if block is not None else nib.Nifti1Header()
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    spatial_zooms = list(header.get_zooms()[:3]) if block is not None else list(np.linalg.norm(affine[:3, :3], axis=0))
    header.set_data_shape(data.shape)
    header.set_data_dtype(out_dtype)
    zooms = (spatial_zooms + [1.0] * 4)[: data.ndim]
    zooms[: min(data.ndim, 3)] = spatial_zooms[: min(data.ndim, 3)]
    header.set_zooms(tuple(float(z) if z > 0 else 1.0 for z in zooms))
    header.set_slope_inter(1.0, 0.0)
    if is_labels and np.issubdtype(out_dtype, np.integer):
        header.set_intent("label", allow_unknown=False)
        header["cal_min"], header["cal_max"] = 0, 0
    elif int(header["intent_code"]) == LABEL_INTENT:
        header.set_intent("none")
    if description is not None:
        header["descrip"] = description.encode("ascii", "replace")[:79]
    image = image_class(data, affine, header=header)
    if block is None:
        image.set_qform(affine, code="aligned")
        image.set_sform(affine, code="aligned")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Write one time point of a 4D NIfTI series as a 3D NIfTI volume."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m napari_attention_unet.large_data.nifti",
        description="Write one time point of a 4D NIfTI series as a 3D volume (same affine and header).",
    )
    parser.add_argument("series", type=Path, help="the 4D .nii / .nii.gz file")
    parser.add_argument("--time-point", type=int, required=True, help="0-based time point to keep")
    parser.add_argument("--out", type=Path, required=True, help="the 3D .nii.gz to write")
    args = parser.parse_args(argv)
    try:
        volume = read_nifti(args.series, args.time_point)
        write_nifti(args.out, volume.data, volume, dtype=volume.data.dtype, labels=volume.intent == LABEL_INTENT)
    except (ImportError, OSError, ValueError) as exc:
        parser.exit(1, f"error: {exc}\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
