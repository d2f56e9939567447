"""Model versions in the saved-models folder: save, list, rename, delete, export, import; no Qt.

A fine-tuned model is saved as a named version (``nuclei-ft-20261124-1712``) next to
the user's other saved models, with ``info`` recording where it came from: the parent
model, the number of steps, the best validation Dice, the date and the image's name.
Every version is an ordinary ``.safetensors`` model file, so the model picker, the CLI
and :func:`napari_attention_unet.models.registry.open_model` see it like any saved model.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.weights import SUFFIX, ModelInfo, read_metadata, save_model
from napari_attention_unet.models import registry as _registry

__all__ = [
    "delete_version",
    "export_version",
    "import_model",
    "inherited_info",
    "list_versions",
    "rename_version",
    "save_version",
    "version_info",
    "version_name",
]


#: What a fine-tuned model keeps of the info of the model it started from: what it is for (task,
#: class names, what label 0 meant, where the line of models started) and a 3D model's voxel size,
#: at which ``predict`` takes volumes that state none (without it they would be taken as cubic).
INHERITED = ("task", "classes", "zero_is", "spacing", "orientation", "start")


def inherited_info(parent: ModelInfo | Mapping | None) -> dict:
    """The :data:`INHERITED` entries of ``parent``'s info (a model's :class:`ModelInfo`, read from its
    file, or the info itself); empty when there is none or the file cannot be read."""
    if parent is None:
        return {}
    if isinstance(parent, ModelInfo):
        try:
            parent = read_metadata(parent.path)[1]
        except (OSError, ValueError):
            return {}
    return {key: parent[key] for key in INHERITED if parent.get(key) is not None}


def version_name(parent: str, when: datetime | None = None) -> str:
    """A free name for a fine-tuned child of ``parent``: ``<parent>-ft-YYYYmmdd-HHMM`` (``-2``, ... if taken)."""
    when = when or datetime.now()
    root = parent.split("-ft-")[0] if "-ft-" in parent else parent
    base = _registry.safe_model_name(f"{root}-ft-{when:%Y%m%d-%H%M}")
    taken = {m.name for m in _registry.all_models()}
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def save_version(
    model: AttentionUNet,
    parent: str,
    *,
    steps: int = 0,
    kept_step: int | None = None,
    best_val_dice: float | None = None,
    best_val_ap: float | None = None,
    image_name: str = "",
    name: str | None = None,
    extra: dict | None = None,
) -> ModelInfo:
    """Save ``model`` as a new version in the saved-models folder; returns its :class:`ModelInfo`.
    ``extra`` is more to store in its info (a new model's task, classes and voxel size, as ``train`` stores)."""
    when = datetime.now()
    name = _registry.safe_model_name(name) if name else version_name(parent, when)
    path = _path(name)
    if path.exists():
        raise FileExistsError(f"a saved model named {name!r} already exists")
    info = {
        "parent": parent,
        "steps": int(steps),
        "kept_step": int(steps if kept_step is None else kept_step),
        "best_val_dice": None if best_val_dice is None else float(best_val_dice),
        "best_val_ap": None if best_val_ap is None else float(best_val_ap),
        "date": when.isoformat(timespec="seconds"),
        "image": image_name,
        **(extra or {}),
    }
    return ModelInfo(name, save_model(model, path, info=info), False)


def list_versions() -> list[ModelInfo]:
    """The user's saved models (fine-tuned versions and imported ones), by name."""
    return _registry.saved_models()


def version_info(name: str) -> dict:
    """The info stored with a saved model (parent, steps, best_val_dice, date, image)."""
    return read_metadata(_existing(name))[1]


def rename_version(name: str, new_name: str) -> ModelInfo:
    """Rename a saved model; the new name must be free."""
    source = _existing(name)
    new_name = _registry.safe_model_name(new_name)
    target = _path(new_name)
    # letter case aside: two names that differ only in it are one file on macOS and Windows, and hard to tell apart
    taken = [m.name for m in _registry.all_models() if m.name.casefold() == new_name.casefold() and m.name != name]
    if taken or (target.exists() and new_name.casefold() != name.casefold()):
        raise FileExistsError(f"a model named {(taken or [new_name])[0]!r} already exists")
    source.rename(target)
    return ModelInfo(new_name, target, False)


def delete_version(name: str) -> None:
    """Delete a saved model (bundled models cannot be deleted)."""
    _existing(name).unlink()


#: Files of other tools' formats, which ``attention-unet export`` writes (a copy of the model file is not one).
OTHER_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".pth": "torchscript", ".zip": "bioimageio"}


def export_version(name_or_path: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Copy a model (bundled, saved or a file) to ``destination`` (``.safetensors`` added if missing; into
    an existing folder as ``<name>.safetensors``). A destination named as another tool's file (``.onnx``,
    ``.pt``, ``.zip``) is refused with the command that writes one: before, ``em.onnx`` became a
    ``em.onnx.safetensors`` copy."""
    info = _registry.resolve_model(name_or_path)
    destination = Path(destination).expanduser()
    if destination.is_dir():
        destination = destination / f"{info.name}{SUFFIX}"
    elif (fmt := OTHER_FORMATS.get(destination.suffix.lower())) is not None:
        raise ValueError(
            f"{destination.name}: this exports the model file itself (.safetensors); for {fmt.upper()} "
            f"({destination.suffix}) run: attention-unet export {info.name} --format {fmt} --out {destination}"
        )
    if destination.suffix != SUFFIX:
        destination = destination.with_name(destination.name + SUFFIX)
    destination.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(info.path, destination)
    return destination


def import_model(path: str | os.PathLike, name: str | None = None) -> ModelInfo:
    """Copy a model file into the saved-models folder (checked first); returns the saved model."""
    path = Path(path).expanduser()
    read_metadata(path)  # raises ModelFileError for anything that is not our model
    name = _registry.safe_model_name(name or path.stem)
    target = _path(name)
    if target.exists() or any(m.name == name for m in _registry.all_models()):
        raise FileExistsError(f"a model named {name!r} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, target)
    return ModelInfo(name, target, False)


def _path(name: str) -> Path:
    return _registry.saved_models_dir() / f"{name}{SUFFIX}"


def _existing(name: str) -> Path:
    path = _path(name)
    if not path.is_file():
        raise _registry.ModelNotFoundError(f"no saved model named {name!r}")
    return path
