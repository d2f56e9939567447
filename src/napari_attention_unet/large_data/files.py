"""Reading images and writing results for the command line."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile

from napari_attention_unet.large_data.nifti import NiftiVolume, is_nifti_path, read_nifti
from napari_attention_unet.large_data.regions import SqueezedArray, TiffRegionArray

__all__ = [
    "LARGE_PIXELS",
    "ImageReadError",
    "create_tiff_sinks",
    "create_zarr_sinks",
    "image_shape",
    "is_zarr_path",
    "open_lazy_image",
    "declared_axes",
    "declared_voxel_size",
    "read_image",
    "read_nifti_volume",
    "read_time_point",
    "write_attention",
    "write_labels",
]

TIFF_SUFFIXES = {".tif", ".tiff"}
OTHER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class ImageReadError(OSError):
    """An input file is missing or not an image we can read."""


def read_nifti_volume(path: str | Path, time_point: int | None = None) -> NiftiVolume:
    """A NIfTI file as a :class:`~.nifti.NiftiVolume` (data ZYX, spacing, affine); errors as ImageReadError.

    ``time_point``: the volume of a 4D series to read (a 3D file ignores it)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"no such file: {path}")
    try:
        return read_nifti(path, time_point)
    except (ImportError, ValueError) as exc:  # nibabel missing (with the pip line), 4D without a time point, 5D
        raise ImageReadError(str(exc)) from exc
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise ImageReadError(f"{path.name} could not be read as NIfTI ({exc})") from exc


def read_time_point(path: str | Path, time_point: int | None, *, series: bool = True):
    """``(pixels, NiftiVolume or None)`` of an image file, at ``time_point`` of a time series (a 4D
    NIfTI, or a TIFF whose first axis is time) when one is asked. A file that is no series is then an
    error, unless ``series=False`` (labels: one volume of labels serves every time point)."""
    path = Path(path)
    if is_nifti_path(path):
        volume = read_nifti_volume(path, time_point)
        if time_point is not None and volume.time_point is None and series:
            raise ValueError(f"{path.name} is one volume, not a time series: leave out the time point")
        return volume.data, volume
    data = read_image(path)
    if time_point is None or (data.ndim != 4 and not series):
        return data, None
    if data.ndim != 4 and not (data.ndim == 3 and (_tiff_axes(path) or "").startswith("T")):
        raise ValueError(
            f"{path.name} is {data.ndim}D: a time point is picked from a 4D series (time first, TZYX), or from a "
            "2D time-lapse TIFF that declares its time axis (TYX, as ImageJ/Fiji saves frames)"
        )
    if not 0 <= time_point < data.shape[0]:
        raise ValueError(
            f"{path.name}: time point {time_point} is outside the series (time points 0..{data.shape[0] - 1})"
        )
    return data[time_point], None


def declared_axes(path: str | Path, time_point: int | None = None) -> str | None:
    """The axes a TIFF declares for its pixels when they hold channels (an ImageJ hyperstack, an
    OME-TIFF: ``CYX``, ``ZCYX``; ``TCYX`` at a ``time_point`` is ``CYX``), in our letters; None for
    other files, whose axes are guessed from the shape (a 2-channel CYX read as 2 planes before)."""
    axes = _tiff_axes(Path(path))
    if axes is None:
        return None
    if time_point is not None and axes.startswith("T"):
        axes = axes[1:]
    return axes if axes.count("C") == 1 and not set(axes) - set("ZCYX") else None


def _tiff_axes(path: Path) -> str | None:
    """The axes of a TIFF's first series as tifffile reads them (``TYX``, ``ZCYX``; S, samples, is left to
    the guess: tifffile writes 3 planes as SYX); None for other files and unreadable ones."""
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            return tif.series[0].axes.upper()
    except Exception:  # noqa: BLE001 - read_image says what is wrong with the file
        return None


def declared_voxel_size(path: str | Path) -> tuple[float, float, float] | None:
    """The voxel size ``(z, y, x)`` a TIFF volume states: an ImageJ stack's ``spacing`` and X/Y
    resolution (as Fiji writes them), or an OME-TIFF's ``PhysicalSize{Z,Y,X}``; None for other files,
    2D images and TIFFs that state no Z step (their voxels are then taken as the caller decides)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return None
    try:
        with tifffile.TiffFile(path) as tif:
            if "Z" not in tif.series[0].axes.upper():
                return None
            if tif.is_ome and tif.ome_metadata:
                return _ome_voxel_size(tif.ome_metadata)
            if not tif.is_imagej:
                return None
            z = (tif.imagej_metadata or {}).get("spacing")
            tags = tif.pages[0].tags
            y, x = (_pixel_size(tags.get(name)) for name in ("YResolution", "XResolution"))
    except Exception:  # noqa: BLE001 - reading the pixels says what is wrong with the file
        return None
    sizes = (z, y, x)
    return tuple(float(v) for v in sizes) if all(v is not None and float(v) > 0 for v in sizes) else None


def _pixel_size(tag) -> float | None:
    """A TIFF resolution tag (pixels per unit, a rational) as the size of a pixel."""
    if tag is None:
        return None
    value = tag.value
    num, den = value if isinstance(value, tuple) else (value, 1)
    return float(den) / float(num) if num else None


def _ome_voxel_size(xml: str) -> tuple[float, float, float] | None:
    from xml.etree import ElementTree

    for element in ElementTree.fromstring(xml).iter():
        if element.tag.endswith("Pixels"):
            sizes = [element.get(f"PhysicalSize{a}") for a in "ZYX"]
            return tuple(float(v) for v in sizes) if all(sizes) else None
    return None


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF, PNG/JPEG or NIfTI file into a numpy array (RGBA loses its alpha; NIfTI comes as ZYX)."""
    path = Path(path)
    if is_nifti_path(path):
        return read_nifti_volume(path).data
    if path.is_dir():
        raise ImageReadError(f"{path} is a folder: give the image files in it (e.g. {path}/*.tif)")
    if not path.is_file():
        raise ImageReadError(f"no such file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            image = tifffile.imread(path)
        elif suffix in OTHER_SUFFIXES:
            from skimage.io import imread

            image = imread(path)
        else:
            raise ImageReadError(f"{path.name}: unsupported file type {suffix!r}; use TIFF, PNG or NIfTI")
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise ImageReadError(f"{path.name} could not be read as an image ({exc})") from exc
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4 and suffix not in TIFF_SUFFIXES:
        image = image[..., :3]
    return image


#: How label TIFFs are compressed: zlib (every TIFF reader has it) at level 1, strips on up to 4
#: threads. Attention maps are written uncompressed: float maps compress little (the four gate maps
#: of a 2048² nuclei image: 67 MB raw, 40 MB at level 1), and compressing them took 0.21 s of the
#: 3.3 s that ``attention-unet predict`` took on that image, against 0.01-0.05 s raw (2-core CPU;
#: benchmarks/README.md, "The exit, the collector and the gate maps").
TIFF_COMPRESSION = {
    "compression": "zlib",
    "compressionargs": {"level": 1},
    "maxworkers": max(1, min(4, os.cpu_count() or 1)),
}


def labels_dtype(max_label: int) -> type:
    return np.uint16 if max_label < 2**16 else np.uint32


def write_labels(
    path: str | Path, labels: np.ndarray, axes: str | None = None, voxel_size: tuple[float, ...] | None = None
) -> Path:
    """Integer labels as a TIFF; ``axes`` (e.g. ``ZYX``) stated in its metadata, as for the attention maps
    (without, tifffile read a volume's labels back as ``QYX``). A ZYX volume with its ``voxel_size``
    (z, y, x) is written as an ImageJ stack with that calibration (as Fiji writes one, and as
    :func:`declared_voxel_size` reads it back), so the labels lie on the image in Fiji and in the
    commands; ImageJ stacks hold up to 16 bits, so labels of more objects are written without it."""
    path = Path(path)
    labels = labels.astype(labels_dtype(int(labels.max(initial=0))), copy=False)
    stated = {"metadata": {"axes": axes}} if axes else {}
    if axes == "ZYX" and voxel_size is not None and len(voxel_size) == 3 and labels.dtype.itemsize <= 2:
        z, y, x = (float(v) for v in voxel_size)
        stated = {"imagej": True, "resolution": (1.0 / x, 1.0 / y), "metadata": {"axes": "ZYX", "spacing": z}}
    tifffile.imwrite(path, labels, **TIFF_COMPRESSION, **stated)
    return path


def write_attention(path: str | Path, gate_maps: dict[str, np.ndarray], spatial_axes: str) -> Path:
    """One float32 plane (or volume) per gate, gate first, uncompressed (see :data:`TIFF_COMPRESSION`);
    gate names go in the metadata."""
    path = Path(path)
    names = list(gate_maps)
    stack = np.stack([gate_maps[n] for n in names]).astype(np.float32, copy=False)
    tifffile.imwrite(
        path,
        stack,
        metadata={"axes": "Q" + spatial_axes, "gates": ",".join(names)},
    )
    return path


# ----------------------------------------------------------------- large images: lazy inputs, on-disk outputs

LARGE_PIXELS = 4096 * 4096  # above this, `predict` goes block by block (large_data.blocks) instead of whole-image


def _zarr():
    try:
        import zarr
    except ImportError as exc:  # zarr 3 needs Python 3.11
        raise ImageReadError(
            "zarr input and output need the zarr package (3.x, Python 3.11+): pip install zarr"
        ) from exc
    return zarr


def is_zarr_path(path: str | Path) -> bool:
    """A zarr store: a ``.zarr`` path or a folder with zarr metadata."""
    path = Path(path)
    markers = ("zarr.json", ".zarray", ".zgroup")
    return path.suffix.lower() == ".zarr" or (path.is_dir() and any((path / m).exists() for m in markers))


def image_shape(path: str | Path) -> tuple[int, ...] | None:
    """The shape of a TIFF or zarr image without reading its pixels (None for other files)."""
    path = Path(path)
    if is_zarr_path(path):
        return tuple(open_lazy_image(path)[0].shape)
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        try:
            with tifffile.TiffFile(path) as tif:
                return tuple(tif.series[0].shape)
        except Exception:  # noqa: BLE001 - read_image reports unreadable files
            return None
    return None


def open_lazy_image(path: str | Path) -> tuple[object, str | None]:
    """``(array-like, axes or None)`` for a large TIFF or a zarr / OME-Zarr store, pixels left on disk.

    TIFF: an uncompressed contiguous file is read region by region (:class:`TiffRegionArray`),
    a tiled or compressed one through tifffile's zarr store. Zarr: an array, or a group with
    OME-NGFF ``multiscales`` (the full-resolution level; singleton ``t``/``z`` axes dropped,
    ``c`` kept as the channel axis), or a group with one array.
    """
    path = Path(path)
    if not (path.is_file() or path.is_dir()):
        raise ImageReadError(f"no such file: {path}")
    zarr = _zarr()

    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            direct = TiffRegionArray.open(path)
            if direct is not None:
                return direct, None
            return zarr.open(tifffile.imread(path, aszarr=True), mode="r"), None
        node = zarr.open(str(path), mode="r")
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise ImageReadError(f"{path.name} could not be opened as an image ({exc})") from exc
    if isinstance(node, zarr.Array):
        return node, None
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", {}).get("multiscales") or attrs.get("multiscales")
    if multiscales:
        meta = multiscales[0]
        array = node[meta["datasets"][0]["path"]]
        names = [a["name"] if isinstance(a, dict) else a for a in meta.get("axes", [])] or list("tczyx")[-array.ndim :]
        keep, axes = [], ""
        for i, name in enumerate(names):
            letter = name.lower()
            if letter in ("y", "x", "c"):
                keep.append(i)
                axes += letter.upper()
            elif array.shape[i] != 1:
                raise ImageReadError(
                    f"{path.name}: axis {name!r} has {array.shape[i]} entries; the block engine predicts one 2D "
                    "(YX or CYX) image, so pick one time point / plane"
                )
        return SqueezedArray(array, keep), axes
    arrays = list(node.array_keys())
    if len(arrays) == 1:
        return node[arrays[0]], None
    raise ImageReadError(f"{path.name} is a zarr group with {len(arrays)} arrays and no OME metadata: name one")


def create_tiff_sinks(out_dir: str | Path, stem: str, shape: tuple[int, int], gate_names: Sequence[str]):
    """``<stem>_labels.tif`` (uint32) and ``<stem>_attention.tif`` (float32, gate first) to fill block by block.

    Uncompressed so that blocks can be written in place; same layout and attention dtype as
    :func:`write_labels` / :func:`write_attention`.
    """
    from napari_attention_unet.large_data.blocks import BlockSinks

    out_dir = Path(out_dir)
    labels = TiffRegionArray.create(out_dir / f"{stem}_labels.tif", shape, np.uint32)
    attention = None
    if gate_names:
        attention = TiffRegionArray.create(
            out_dir / f"{stem}_attention.tif",
            (len(gate_names), *shape),
            np.float32,
            row_axis=1,
            metadata={"axes": "QYX", "gates": ",".join(gate_names)},
        )
    return BlockSinks(labels=labels, probability=None, attention=attention)


def create_zarr_sinks(
    store: str | Path, group: str, shape: tuple[int, int], gate_names: Sequence[str], chunk: int, instances: bool = True
):
    """Arrays ``labels`` (uint32), ``probability`` and ``attention`` (float16, gate first) in ``store/group``.

    ``chunk`` should divide the block size so that parallel blocks never share a chunk.
    """
    zarr = _zarr()

    from napari_attention_unet.large_data.blocks import BlockSinks

    root = zarr.open_group(str(store), mode="a")
    node = root.require_group(group) if group else root
    yx = (chunk, chunk)
    labels = node.create_array(
        "labels", shape=shape, dtype=np.uint32 if instances else np.uint8, chunks=yx, fill_value=0, overwrite=True
    )
    probability = node.create_array(
        "probability", shape=shape, dtype=np.float16, chunks=yx, fill_value=0, overwrite=True
    )
    attention = None
    if gate_names:
        attention = node.create_array(
            "attention",
            shape=(len(gate_names), *shape),
            dtype=np.float16,
            chunks=(1, *yx),
            fill_value=0,
            overwrite=True,
        )
        attention.attrs.update({"axes": "QYX", "gates": list(gate_names)})
    labels.attrs.update({"axes": "YX"})
    return BlockSinks(labels=labels, probability=probability, attention=attention)
