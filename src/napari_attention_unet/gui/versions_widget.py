"""Model versions controls: rename, export or delete the model in use (a magicgui Container).

The saved versions themselves (fine-tuned or imported models) live in ``models.versions``;
these controls only call it and tell the dock widget, through ``on_models_changed``, to
refresh its model list.
"""

from __future__ import annotations

from collections.abc import Callable

from magicgui.widgets import Container, FileEdit, LineEdit, PushButton
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from napari_attention_unet.gui.session import Session
from napari_attention_unet.models import versions as _versions

__all__ = ["VersionsWidget"]

#: How long the Delete button waits for the second click that confirms (ms).
DELETE_CONFIRM_MS = 5000


class VersionsWidget(Container):
    """Rename, export or delete the model in use; ``on_models_changed(name)`` refreshes the picker."""

    def __init__(self, session: Session, on_models_changed: Callable[[str | None], None]) -> None:
        self._session = session
        self._on_models_changed = on_models_changed
        self._new_name = LineEdit(label="new name", value="")
        self._rename = PushButton(text="Rename model")
        self._export_path = FileEdit(label="export to", mode="w", filter="*.safetensors", value="")
        self._export = PushButton(text="Export model")
        self._delete = PushButton(text="Delete model")
        self._armed: str | None = None  # the model a first click on Delete asked about
        self._disarm_timer = QTimer(self._delete.native)  # a child: it goes with the button
        self._disarm_timer.setSingleShot(True)
        self._disarm_timer.timeout.connect(self._disarm)
        super().__init__(widgets=[self._new_name, self._rename, self._export_path, self._export, self._delete])
        self._rename.changed.connect(self._on_rename)
        self._export.changed.connect(self._on_export)
        self._delete.changed.connect(self._on_delete)

    def rename(self, new_name: str) -> None:
        self._new_name.value = new_name
        self._on_rename()

    def export(self, path) -> None:
        self._export_path.value = path
        self._on_export()

    def _saved_name(self) -> str | None:
        """The current model's name if it is one of the user's saved models, else None (and a message)."""
        info = self._session.model_info
        if info is None or info.name not in {m.name for m in _versions.list_versions()} or info.bundled:
            show_error("Only saved models (fine-tuned or trained here) can be renamed or deleted.")
            return None
        return info.name

    def _on_rename(self) -> None:
        name = self._saved_name()
        if name is None or not self._new_name.value.strip():
            return
        try:
            renamed = _versions.rename_version(name, self._new_name.value)
        except (ValueError, OSError) as exc:
            show_error(str(exc))
            return
        if renamed.name != self._new_name.value.strip():  # characters a file name cannot hold became '-'
            show_info(f"Renamed to '{renamed.name}' (a model name holds letters, digits, '-', '_' and '.').")
        self._new_name.value = ""
        self._on_models_changed(renamed.name)

    def _on_export(self) -> None:
        info = self._session.model_info
        path = str(self._export_path.value or "")
        if info is None or not path or path == ".":
            show_error("Choose a file to export the model to.")
            return
        try:
            written = _versions.export_version(info.path, path)
        except (LookupError, OSError, ValueError) as exc:
            show_error(str(exc))
            return
        show_info(f"Model '{info.name}' exported to {written}.")

    def _on_delete(self) -> None:
        """Two clicks: the first asks (the button says what would go), the second deletes. A model
        file holds the user's training: one stray click must not lose it."""
        name = self._saved_name()
        if name is None:
            return
        if self._armed != name:
            self._armed = name
            self._delete.text = f"Click again to delete '{name}' for good"
            self._disarm_timer.start(DELETE_CONFIRM_MS)
            return
        self._disarm()
        _versions.delete_version(name)
        self._on_models_changed(None)

    def _disarm(self) -> None:
        self._disarm_timer.stop()
        self._armed = None
        self._delete.text = "Delete model"
