"""Reading images and writing results for the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

__all__ = ["ImageReadError", "read_image", "write_attention", "write_labels"]

TIFF_SUFFIXES = {".tif", ".tiff"}
OTHER_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp"}


class ImageReadError(OSError):
    """An input file is missing or not an image we can read."""


def read_image(path: str | Path) -> np.ndarray:
    """Read a TIFF or PNG/JPEG into a numpy array (RGBA loses its alpha channel)."""
    path = Path(path)
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
            raise ImageReadError(f"{path.name}: unsupported file type {suffix!r}; use TIFF or PNG")
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear message
        raise ImageReadError(f"{path.name} could not be read as an image ({exc})") from exc
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 4 and suffix not in TIFF_SUFFIXES:
        image = image[..., :3]
    return image


def labels_dtype(max_label: int) -> type:
    return np.uint16 if max_label < 2**16 else np.uint32


def write_labels(path: str | Path, labels: np.ndarray) -> Path:
    path = Path(path)
    tifffile.imwrite(path, labels.astype(labels_dtype(int(labels.max(initial=0))), copy=False), compression="zlib")
    return path


def write_attention(path: str | Path, gate_maps: dict[str, np.ndarray], spatial_axes: str) -> Path:
    """One float32 plane (or volume) per gate, gate first; gate names go in the metadata."""
    path = Path(path)
    names = list(gate_maps)
    stack = np.stack([gate_maps[n] for n in names]).astype(np.float32, copy=False)
    tifffile.imwrite(
        path,
        stack,
        compression="zlib",
        metadata={"axes": "Q" + spatial_axes, "gates": ",".join(names)},
    )
    return path
