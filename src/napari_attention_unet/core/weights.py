"""Saving and loading models without executing code.

A model file is one ``.safetensors`` file: the tensors, plus the network's
:class:`ModelConfig` and free-form info (name, training notes, scores) as JSON in
the safetensors metadata. Loading reads only tensors and JSON, so a file from a
colleague cannot run code on the user's machine.

Which models exist (bundled, saved, files) is :mod:`napari_attention_unet.models`' job.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from napari_attention_unet.core.model import AttentionUNet, ModelConfig

__all__ = ["ModelFileError", "ModelInfo", "load_model", "read_metadata", "save_model", "unwritable_reason"]

FORMAT = "napari-attention-unet/1"
SUFFIX = ".safetensors"


class ModelFileError(ValueError):
    """A model file is missing, not ours, or damaged; the message says which."""


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    bundled: bool


def save_model(model: AttentionUNet, path: str | Path, info: dict | None = None, half: bool = False) -> Path:
    """Write ``model`` to ``path`` (``.safetensors`` is added if missing).

    ``half`` stores floating-point tensors as float16 (half the size; loaded back
    as float32). ``info`` is any JSON-serialisable dict kept with the weights.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value.contiguous()
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "info": json.dumps(info or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)  # never leave a half-written model behind
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)  # an ordinary file, readable by others like any document
    return path


def read_metadata(path: str | Path) -> tuple[ModelConfig, dict]:
    """The config and info stored in a model file, without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"no model file at {path}")
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            if not 0 < header_len < 100_000_000:
                raise ValueError("bad header length")
            header = json.loads(f.read(header_len))
        metadata = header.get("__metadata__") or {}
        if metadata.get("format") != FORMAT:
            raise ModelFileError(
                f"{path.name} is a safetensors file but not an Attention U-Net model saved by this plugin"
            )
        info = json.loads(metadata.get("info", "{}"))
        if not isinstance(info, dict):
            raise ValueError("its description is not a mapping")
        return ModelConfig.from_dict(json.loads(metadata["config"])), info
    except ModelFileError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ModelFileError(
            f"{path.name} is not a readable model file ({exc}); expected a .safetensors model"
        ) from exc


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AttentionUNet, dict]:
    """Load a model file; returns ``(model in eval mode, info)``.

    Raises :class:`ModelFileError` with a readable message for missing, foreign or
    damaged files.
    """
    path = Path(path)
    config, info = read_metadata(path)
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path.name} is damaged and could not be read ({exc})") from exc
    try:
        # First without memory (torch's meta device): a damaged or crafted description (a width of
        # 4096) would otherwise have the system kill the process before any MemoryError is raised.
        with torch.device("meta"):
            expected = AttentionUNet(config).state_dict()
    except (RuntimeError, ValueError, TypeError, MemoryError) as exc:  # e.g. a width of 16.0
        message = f"{path.name} describes a network that cannot be built ({exc}); the file is damaged"
        raise ModelFileError(message) from exc
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ModelFileError(f"{path.name} does not match its own architecture description; the file is damaged")
    model = AttentionUNet(config)  # the size of the weights the file holds
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise ModelFileError(f"{path.name} holds weights that are not numbers (NaN or infinite): the training diverged")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval(), info


def unwritable_reason(folder: Path) -> str | None:
    """Make ``folder`` and write a scratch file in it: None when that works, else why not (e.g.
    "Permission denied"), so that a writer can refuse before any work rather than fail after it."""
    import tempfile

    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__
