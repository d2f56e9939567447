"""Sample images shipped with the plugin (napari ``sample_data`` contributions).

Only numpy and tifffile here: opening a sample must not import torch.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["he_sample", "nuclei_sample", "sample_path"]

_SOURCE = "2018 Data Science Bowl (BBBC038v1), CC0"


def sample_path(filename: str) -> Path:
    """Path of a file in the package's ``sample_data`` folder."""
    return Path(str(resources.files("napari_attention_unet") / "sample_data" / filename))


def _read(filename: str) -> np.ndarray:
    return np.asarray(tifffile.imread(sample_path(filename)))


def nuclei_sample() -> list[tuple]:
    """Fluorescent nuclei (grey, 256 x 256), the image the bundled model is made for."""
    data = _read("nuclei_fluorescence.tif")
    return [(data, {"name": "nuclei", "colormap": "gray", "metadata": {"source": _SOURCE}}, "image")]


def he_sample() -> list[tuple]:
    """Stained tissue with nuclei (RGB, 256 x 320)."""
    data = _read("nuclei_he.tif")
    return [(data, {"name": "nuclei (H&E)", "rgb": True, "metadata": {"source": _SOURCE}}, "image")]
