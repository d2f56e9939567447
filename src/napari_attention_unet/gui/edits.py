"""Which pixels to fine-tune on: the pixels the user painted, or those inside their shapes; no Qt.

:class:`EditTracker` records the painted pixels from ``Labels.events.paint``;
:func:`edited_from_prediction` is the fallback when nothing was recorded (where a corrected
layer differs from our untouched masks); :func:`shapes_mask` rasterises a Shapes layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Labels

from napari_attention_unet.gui import layers as _layers

if TYPE_CHECKING:
    import napari

__all__ = ["EditTracker", "edited_from_prediction", "shapes_mask"]


class EditTracker:
    """Which pixels the user painted on each Labels layer, from ``Labels.events.paint``; no Qt.

    Keeps one boolean mask per layer (by ``unique_id``), the union of every stroke, fill
    and polygon since the layer was added (or since :meth:`forget`).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._masks: dict[str, np.ndarray] = {}
        for layer in viewer.layers:
            self._watch(layer)
        viewer.layers.events.inserted.connect(lambda event: self._watch(event.value))

    def _watch(self, layer) -> None:
        if isinstance(layer, Labels):
            layer.events.paint.connect(self._on_paint)

    def _on_paint(self, event) -> None:
        layer = event.source
        mask = self._masks.get(str(layer.unique_id))
        if mask is None or mask.shape != tuple(layer.data.shape):
            mask = self._masks[str(layer.unique_id)] = np.zeros(layer.data.shape, dtype=bool)
        for atom in event.value:
            if hasattr(atom, "slice_key"):  # napari's masked paint atom (paint, fill, polygon)
                if atom.mask is None:
                    mask[atom.slice_key] = True
                else:
                    mask[atom.slice_key] |= atom.mask
            else:  # (indices, old values, new values)
                mask[atom[0]] = True

    def edited_mask(self, layer) -> np.ndarray | None:
        """The pixels painted on ``layer``, or None when no painting was recorded."""
        mask = self._masks.get(str(layer.unique_id))
        return mask if mask is not None and mask.any() else None

    def forget(self, layer) -> None:
        self._masks.pop(str(layer.unique_id), None)


def edited_from_prediction(layers, corrected, image) -> np.ndarray | None:
    """Fallback when no paint was recorded: where ``corrected`` differs from our untouched masks of ``image``."""
    source = str(image.unique_id)
    for layer in reversed(list(layers)):
        info = layer.metadata.get(_layers.MARKER)
        if (
            layer is not corrected
            and isinstance(info, dict)
            and info.get("role") == "masks"
            and info.get("source") == source
            and not _layers.is_user_modified(layer)
            and tuple(layer.data.shape) == tuple(corrected.data.shape)
        ):
            changed = (np.asarray(layer.data) > 0) != (np.asarray(corrected.data) > 0)
            return changed if changed.any() else None
    return None


def shapes_mask(shapes, shape: tuple[int, ...]) -> np.ndarray | None:
    """Pixels inside any shape of a Shapes layer (drawn in the labels' data coordinates), or None."""
    if shapes is None or len(shapes.data) == 0:
        return None
    inside = np.asarray(shapes.to_masks(mask_shape=shape)).any(axis=0)
    return inside if inside.any() else None
