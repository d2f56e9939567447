"""Marking slices of a volume as labelled background, for a new model trained on a few labelled slices.

With label 0 as "background in labelled slices", a slice that holds no label is not labelled. A
slice beyond the structure holds none by nature, so without a mark the model never sees where the
structure ends, and marks it there too (one MR volume with 4 labelled slices: benchmarks/README.md,
"Marking slices without the structure"). The dock's button marks (or unmarks) the slice shown; the
marks live in the Labels layer's ``metadata["background_slices"]``, so they stay with the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import Container, PushButton
from napari.utils.notifications import show_info

if TYPE_CHECKING:
    import napari

__all__ = ["KEY", "BackgroundSlices", "marked_slices"]

#: Where a Labels layer keeps its slices marked as background.
KEY = "background_slices"


def marked_slices(layer) -> list[int]:
    """The slices of ``layer`` (first axis) marked as background, within its current extent."""
    if layer is None or np.ndim(layer.data) != 3:
        return []
    n = layer.data.shape[0]
    return sorted({int(z) for z in layer.metadata.get(KEY, ()) if 0 <= int(z) < n})


class BackgroundSlices(Container):
    """A "Mark this slice as background" button (or "Unmark slice N") for the slice of ``layer()`` shown.

    ``on_change`` is called after each mark: the dock's description of the labels lists the marked
    slices. A click that changes nothing (a slice holding labels) says why in a notification.
    """

    def __init__(
        self, viewer: napari.viewer.Viewer, layer: Callable[[], object], on_change: Callable[[], None]
    ) -> None:
        self._viewer = viewer
        self._layer = layer
        self._on_change = on_change
        self._button = PushButton(text="Mark this slice as background")
        super().__init__(widgets=[self._button], labels=False)
        self.margins = (0, 0, 0, 0)
        self._button.tooltip = (
            "A slice without the structure holds no label, so it does not count as labelled: mark a few slices "
            "beyond each end of the structure as background, so that the model learns where it ends"
        )
        self._button.changed.connect(lambda *_: self.toggle())
        viewer.dims.events.current_step.connect(self.refresh)
        self.refresh()

    def current_slice(self) -> int | None:
        """The slice of the layer shown in the viewer (its first data axis), or None."""
        layer = self._layer()
        if layer is None or np.ndim(layer.data) != 3:
            return None
        point = self._viewer.dims.point[-layer.ndim :]
        z = int(np.round(layer.world_to_data(point)[0]))
        return z if 0 <= z < layer.data.shape[0] else None

    def toggle(self) -> str:
        """Mark the slice shown as background, or unmark it; returns what happened."""
        layer, z = self._layer(), self.current_slice()
        marks = marked_slices(layer)
        if z is None:
            message = "Show a slice of the labels volume to mark it."
        elif z in marks:
            layer.metadata[KEY] = [v for v in marks if v != z]
            message = f"Slice {z} is no longer marked."
        elif np.asarray(layer.data[z]).any():
            message = f"Slice {z} holds labels: it is labelled already, its 0s are background."
        else:
            layer.metadata[KEY] = sorted([*marks, z])
            message = f"Slice {z} marked as background."
        if marked_slices(layer) == marks:
            show_info(message)  # nothing changed: say why, or the click looks lost
        self.refresh()
        self._on_change()
        return message

    def refresh(self, *_) -> None:
        z = self.current_slice()
        marked = z is not None and z in marked_slices(self._layer())
        self._button.text = f"Unmark slice {z} (marked as background)" if marked else "Mark this slice as background"
