"""Where models are: bundled in the package, saved by the user, or any file.

Bundled models live in this package folder (``models/``), each with a model card
(``<name>.json`` or ``<name>.md``) beside it.

Saved (fine-tuned) models live in the user's data directory (platformdirs), or in
``$NAPARI_ATTENTION_UNET_HOME/models`` when that variable is set (tests use it).
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from platformdirs import user_data_dir

from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.weights import SUFFIX, ModelFileError, ModelInfo, load_model, unwritable_reason

BUNDLED_DEFAULT = "nuclei"

__all__ = [
    "BUNDLED_DEFAULT",
    "ModelNotFoundError",
    "bundled_dir",
    "bundled_models",
    "all_models",
    "resolve_model",
    "saved_models",
    "saved_models_dir",
]


class ModelNotFoundError(LookupError):
    """No model of that name or path; the message lists what exists."""


def bundled_dir() -> Path:
    return Path(str(resources.files("napari_attention_unet") / "models"))


def bundled_models() -> list[ModelInfo]:
    """Models shipped inside the package."""
    folder = bundled_dir()
    if not folder.is_dir():
        return []
    return [ModelInfo(p.name[: -len(SUFFIX)], p, True) for p in sorted(folder.glob("*" + SUFFIX))]


def home_dir() -> Path:
    env = os.environ.get("NAPARI_ATTENTION_UNET_HOME")
    return Path(env) if env else Path(user_data_dir("napari-attention-unet", appauthor=False))


def saved_models_dir() -> Path:
    return home_dir() / "models"


def saved_models() -> list[ModelInfo]:
    folder = saved_models_dir()
    if not folder.is_dir():
        return []
    return [ModelInfo(p.name[: -len(SUFFIX)], p, False) for p in sorted(folder.glob("*" + SUFFIX))]


def all_models() -> list[ModelInfo]:
    """Bundled models first (the default first of all), then saved ones."""
    bundled = sorted(bundled_models(), key=lambda m: (m.name != BUNDLED_DEFAULT, m.name))
    return bundled + saved_models()


def safe_model_name(name: str) -> str:
    """A file-system-safe version of a user-chosen model name."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name.strip()).strip("-.")
    if not cleaned:
        raise ValueError(f"{name!r} is not usable as a model name: use letters, digits, '-', '_' or '.'")
    return cleaned


def resolve_model(name_or_path: str | os.PathLike | None = None, *, listed: bool = False) -> ModelInfo:
    """Find a model: a file (``PATH`` or ``PATH.safetensors``), else a bundled or saved name.

    None is the bundled default and ``listed=True`` a name from :func:`all_models` (the dock's
    picker): neither looks at files, so a ``nuclei.safetensors`` in the current folder never
    stands in for the bundled ``nuclei``."""
    if name_or_path is None:
        for info in bundled_models():
            if info.name == BUNDLED_DEFAULT:
                return info
        raise ModelNotFoundError(
            "no bundled model is installed yet: pass --model with a model file or a saved model's name "
            f"(saved models: {[m.name for m in saved_models()] or 'none'})"
        )
    text = str(name_or_path)
    if not listed and os.sep not in text and "/" not in text:
        # A bundled model's name typed bare is that model, whatever the current folder holds (train and
        # finetune refuse to write it; a file of that name is reached as ./nuclei).
        for info in bundled_models():
            if info.name == text:
                return info
    if listed:
        for info in all_models():
            if info.name == text:
                return info
        raise ModelNotFoundError(f"no model named {text!r}: it may have been deleted (press Refresh model list)")
    path = Path(text).expanduser()
    # A file the user typed wins, with or without the suffix the writers add: `finetune --out
    # my-model` writes my-model.safetensors, and `predict --model my-model` must find it; a
    # folder (`--out results/`) holds model.safetensors (see model_out_path).
    if path.is_dir() and (path / FOLDER_MODEL).is_file():
        return ModelInfo(path.resolve().name or "model", path / FOLDER_MODEL, False)
    for candidate in (path, path.with_name(path.name + SUFFIX)) if path.name else ():
        if candidate.name and candidate.suffix != ".tmp" and candidate.is_file():
            return ModelInfo(candidate.name.removesuffix(SUFFIX), candidate, False)
    if path.suffix == SUFFIX or os.sep in text or "/" in text:
        raise ModelNotFoundError(f"no model file at {path} (nor {path.name + SUFFIX} beside it)")
    for info in all_models():
        if info.name == text:
            return info
    names = [m.name for m in all_models()]
    raise ModelNotFoundError(
        f"no model named {text!r}; available: {', '.join(names) if names else 'none'} (or a model file's path, "
        f"e.g. ./{text}.safetensors, as train and finetune --out wrote it)"
    )


def open_model(
    name_or_path: str | os.PathLike | None = None, *, listed: bool = False
) -> tuple[AttentionUNet, dict, ModelInfo]:
    """Resolve (:func:`resolve_model`) and load a model; errors are :class:`ModelNotFoundError` or
    :class:`ModelFileError`."""
    info = resolve_model(name_or_path, listed=listed)
    model, meta = load_model(info.path)
    return model, meta, info


__all__ += ["ModelFileError", "model_out_path", "open_model", "safe_model_name"]

#: The file name of a model written into a folder (``train --out results/``).
FOLDER_MODEL = "model" + SUFFIX


def model_out_path(typed: str | os.PathLike) -> Path:
    """Where ``train`` / ``finetune --out PATH`` write the model, so that ``--model PATH`` typed the
    same way finds it (:func:`resolve_model`): ``PATH.safetensors`` (the suffix added when missing),
    or ``PATH/model.safetensors`` when PATH is a folder or ends with a slash. ``~`` is the home
    folder. Raises ``ValueError`` (one line) when the model cannot be written there, before any
    training is spent on it."""
    text = os.fspath(typed)
    path = Path(text).expanduser()
    if text.endswith(("/", os.sep)) or path.is_dir() or not path.name or path.name in (".", ".."):
        path = path / FOLDER_MODEL
    elif path.suffix != SUFFIX:
        path = path.with_name(path.name + SUFFIX)
    for parent in [path.parent, *path.parent.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"cannot write the model to {path}: {parent} is a file, not a folder")
            break
    if path.is_dir():
        raise ValueError(f"cannot write the model to {path}: a folder of that name is there")
    # Made and written to, not asked: access() says yes under /proc, and to root everywhere.
    if (reason := unwritable_reason(path.parent)) is not None:
        raise ValueError(f"cannot write the model to {path}: {reason}")
    return path
