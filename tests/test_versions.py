"""Model versions: save, list, rename, export, import and delete round-trip."""

from __future__ import annotations

from datetime import datetime

import pytest
import torch

from napari_attention_unet.core.weights import load_model
from napari_attention_unet.models import registry as _registry
from napari_attention_unet.models import versions as _versions


def test_versions_round_trip(tiny_model_path, tmp_path):
    model, _ = load_model(tiny_model_path)
    saved = _versions.save_version(model, "tiny", steps=5, best_val_dice=0.5, image_name="nuclei")
    assert saved.name.startswith("tiny-ft-")
    assert {m.name for m in _versions.list_versions()} == {"tiny", saved.name}
    info = _versions.version_info(saved.name)
    assert info["parent"] == "tiny" and info["steps"] == 5 and info["best_val_dice"] == 0.5
    assert info["image"] == "nuclei" and info["date"]

    renamed = _versions.rename_version(saved.name, "my nuclei")
    assert renamed.name == "my-nuclei"
    assert "my-nuclei" in [m.name for m in _registry.all_models()]
    assert saved.name not in [m.name for m in _registry.all_models()]
    with pytest.raises(FileExistsError):
        _versions.rename_version("my-nuclei", "tiny")
    with pytest.raises(FileExistsError, match="'tiny' already exists"):  # one file on macOS and Windows
        _versions.rename_version("my-nuclei", "Tiny")
    assert _versions.rename_version("my-nuclei", "My-Nuclei").name == "My-Nuclei"  # its own name in other letters
    _versions.rename_version("My-Nuclei", "my-nuclei")

    exported = _versions.export_version("my-nuclei", tmp_path / "out" / "shared")
    assert exported.name == "shared.safetensors" and exported.is_file()
    # Into an existing folder: named after the model inside it, not "out.safetensors" beside it.
    assert _versions.export_version("my-nuclei", tmp_path / "out") == tmp_path / "out" / "my-nuclei.safetensors"
    with pytest.raises(ValueError, match="run: attention-unet export my-nuclei --format onnx --out .*em.onnx"):
        _versions.export_version("my-nuclei", tmp_path / "em.onnx")  # not a safetensors copy named .onnx
    assert not list(tmp_path.glob("em.onnx*"))
    _versions.delete_version("my-nuclei")
    assert "my-nuclei" not in [m.name for m in _versions.list_versions()]

    imported = _versions.import_model(exported, name="back")
    loaded, _, _ = _registry.open_model("back")
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert _versions.version_info(imported.name)["parent"] == "tiny"


def test_version_names_do_not_collide(tiny_model_path):
    model, _ = load_model(tiny_model_path)
    when = datetime(2026, 11, 24, 17, 12)
    assert _versions.version_name("nuclei", when) == "nuclei-ft-20261124-1712"
    assert _versions.version_name("nuclei-ft-20261101-0900", when) == "nuclei-ft-20261124-1712"
    first = _versions.save_version(model, "tiny", name=_versions.version_name("tiny", when))
    assert _versions.version_name("tiny", when) == f"{first.name}-2"


def test_import_refuses_foreign_files(model_home, tmp_path):
    from napari_attention_unet.core.weights import ModelFileError

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        _versions.import_model(junk)
    with pytest.raises(_registry.ModelNotFoundError):
        _versions.delete_version("nothing")


def test_a_fine_tuned_version_keeps_what_its_parent_is_for(tiny_model_path, model_home):
    """A 3D model fine-tuned in the dock or with `finetune` keeps the voxel size it was trained at (without
    it `predict` took TIFF volumes as cubic: AP@0.5 0.39 instead of 0.82 on anisotropic nuclei), its task
    and class names; not the parent's own history (steps, scores, date)."""
    from napari_attention_unet.core.weights import ModelInfo, read_metadata, save_model

    model, _ = load_model(tiny_model_path)
    parent_info = {
        "task": "semantic",
        "classes": ["background", "cell"],
        "zero_is": "slices",
        "spacing": [2.0, 0.5, 0.5],
    }
    parent = save_model(model, model_home / "models" / "vol.safetensors", info={**parent_info, "steps": 600})
    kept = _versions.inherited_info(ModelInfo("vol", parent, False))
    assert kept == parent_info
    child = _versions.save_version(model, "vol", steps=30, extra=kept)
    info = read_metadata(child.path)[1]
    assert info["spacing"] == [2.0, 0.5, 0.5] and info["classes"] == ["background", "cell"] and info["steps"] == 30
    assert _versions.inherited_info(ModelInfo("gone", model_home / "gone.safetensors", False)) == {}
    assert _versions.inherited_info({"spacing": None, "task": "instances"}) == {"task": "instances"}
