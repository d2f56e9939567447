"""Which layers are ours, and whether the user changed them since we wrote them; no Qt.

Our layers carry ``metadata[MARKER]`` with the source layer's id, their role, and a fingerprint
(a digest) of the data we last wrote, so a change by the user is noticed even when it did not
come through a paint event. Hashing a large layer takes a while (0.4 s for a 60-plane 1024²
stack), so the widget does it in its worker: :func:`own_layer_states` (main thread, at the
click) hands the worker our layers' arrays, and :func:`fingerprint_after_write` gives the digest
a layer will have once a block is written into it, without writing or copying it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import napari.layers

__all__ = [
    "MARKER",
    "OwnLayerState",
    "changed_by_user",
    "fingerprint",
    "fingerprint_after_write",
    "is_ours",
    "is_user_modified",
    "on_paint",
    "own_layer_states",
    "own_layers",
    "stamp",
    "store_of",
]

MARKER = "napari_attention_unet"


@dataclass(frozen=True)
class OwnLayerState:
    """One of our earlier layers as the worker sees it: its array and the fingerprint we recorded."""

    data: np.ndarray
    fingerprint: str | None


def own_layers(layers: Iterable[napari.layers.Layer], source_id: str) -> dict[tuple, napari.layers.Layer]:
    """Our layers of ``source_id`` by (role, gate), the latest (last in the list) of each."""
    found = {}
    for layer in layers:
        info = layer.metadata.get(MARKER)
        if isinstance(info, dict) and info.get("source") == source_id:
            found[(info.get("role"), info.get("gate"))] = layer
    return found


def own_layer_states(layers: Iterable[napari.layers.Layer], source_id: str) -> dict[tuple, OwnLayerState]:
    """:func:`own_layers` that hold numpy arrays, as the worker checks them (:func:`predict_into_layers`):
    taken on the main thread at the click."""
    return {
        key: OwnLayerState(layer.data, layer.metadata[MARKER].get("fingerprint"))
        for key, layer in own_layers(layers, source_id).items()
        if isinstance(layer.data, np.ndarray)
    }


def fingerprint(data: np.ndarray) -> str:
    """A digest of an array's contents, to notice edits that bypassed paint events."""
    array = np.ascontiguousarray(data)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{array.shape}{array.dtype}".encode())
    digest.update(array.view(np.uint8).reshape(-1) if array.size else b"")
    return digest.hexdigest()


def fingerprint_after_write(data: np.ndarray, index: tuple[int, ...], block: np.ndarray) -> str:
    """:func:`fingerprint` of ``data`` once ``data[index] = block`` is done, without writing or copying
    ``data``: the digest runs over its planes in order, with ``block`` (cast as numpy would) at ``index``."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{data.shape}{data.dtype}".encode())
    lead = len(index)
    planes = data.reshape(-1, *data.shape[lead:]) if data.size else data
    at = int(np.ravel_multi_index(index, data.shape[:lead])) if data.size else -1
    for k in range(len(planes) if data.size else 0):
        plane = np.asarray(block).astype(data.dtype, copy=False) if k == at else planes[k]
        digest.update(np.ascontiguousarray(plane).view(np.uint8).reshape(-1))
    return digest.hexdigest()


def is_ours(layer: napari.layers.Layer) -> bool:
    return isinstance(layer.metadata.get(MARKER), dict)


def is_user_modified(layer: napari.layers.Layer) -> bool:
    """True when the user painted on one of our layers, or its data changed since we set it.

    Layers on zarr arrays (not numpy) are only checked for paint events.
    """
    info = layer.metadata.get(MARKER) or {}
    if info.get("painted"):
        return True
    if not isinstance(layer.data, np.ndarray):
        return False
    return info.get("fingerprint") != fingerprint(layer.data)


def store_of(layer: napari.layers.Layer) -> str | None:
    """The zarr store one of our layers reads, or None."""
    info = layer.metadata.get(MARKER)
    return info.get("store") if isinstance(info, dict) else None


def on_paint(event) -> None:
    layer = event.source
    if is_ours(layer):
        layer.metadata[MARKER]["painted"] = True


def changed_by_user(layer: napari.layers.Layer, checked: tuple | None) -> bool:
    """:func:`is_user_modified`, from the worker's check (``ResultLayer.checked``) when it hashed this very array."""
    if checked is not None and checked[0] is layer.data:
        return bool(layer.metadata[MARKER].get("painted")) or not checked[1]
    return is_user_modified(layer)


def stamp(layer: napari.layers.Layer, known: tuple[np.ndarray, str] | None = None) -> None:
    """Record the layer's data as ours: ``known`` is ``(array, its fingerprint)`` when computed before
    (:meth:`ResultLayer.prepare`), used if the layer holds that very array."""
    data = layer.data
    if known is not None and data is known[0]:
        digest = known[1]
    else:
        digest = fingerprint(data) if isinstance(data, np.ndarray) else None
    layer.metadata[MARKER]["fingerprint"] = digest
    layer.metadata[MARKER]["painted"] = False
