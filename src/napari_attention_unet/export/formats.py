"""Export a model in one of :data:`FORMATS`: where the file goes and which writer makes it.

ONNX and TorchScript are written by :mod:`.network`, the BioImage Model Zoo package
(which holds both) by :mod:`.bioimageio`.
"""

from __future__ import annotations

import os
from pathlib import Path

from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.weights import unwritable_reason
from napari_attention_unet.export.bioimageio import export_bioimageio
from napari_attention_unet.export.network import ExportError, export_onnx, export_torchscript

__all__ = ["FORMATS", "SUFFIXES", "export_model", "output_path"]

FORMATS = ("bioimageio", "onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt", "bioimageio": ".zip"}


def output_path(out: str | Path, fmt: str, name: str) -> Path:
    """Where to write: ``out`` with the format's suffix (``.onnx``, ``.pt``, ``.zip``) added when it
    has another one, or ``out/<name><suffix>`` when ``out`` is an existing folder or ends with a
    slash (``exports/``, as ``train --out`` takes it; ``~`` is the home folder)."""
    folder = isinstance(out, str) and out.endswith(("/", os.sep))
    out = Path(out).expanduser()
    suffix = SUFFIXES[fmt]
    if folder or out.is_dir():
        return out / f"{name}{suffix}"
    if fmt == "torchscript" and out.suffix in (".pt", ".pth", ".torchscript"):
        return out
    return out if out.suffix == suffix else out.with_name(out.name + suffix)


def export_model(
    model: AttentionUNet, fmt: str, out: str | Path, name: str, info: dict | None = None, **kwargs
) -> Path:
    """Export ``model`` as ``fmt`` (one of :data:`FORMATS`) to ``out``; returns the path written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    path = output_path(out, fmt, name)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give a file name for the export")
    # Before the export runs: torch's writer fails with an unreadable "enforce fail" otherwise.
    if (reason := unwritable_reason(path.parent)) is not None:
        raise ExportError(f"cannot write into {path.parent}: {reason}")
    if info and info.get("trained_on"):  # file names, not the folders of the user's machine
        info = {**info, "trained_on": [Path(str(p)).name for p in info["trained_on"]]}
    if fmt == "onnx":
        return export_onnx(model, path, name, info)
    if fmt == "torchscript":
        return export_torchscript(model, path, name, info)
    return export_bioimageio(model, path, name, info, **kwargs)
