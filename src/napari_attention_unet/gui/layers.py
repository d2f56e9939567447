"""Prediction results -> napari layers: placement, updates, ownership; no Qt (how they look: :mod:`.layer_style`).

:func:`result_layers` turns a :class:`~napari_attention_unet.gui.session.PartPrediction`
and the source layer's geometry into :class:`ResultLayer` objects (each one a napari
layer data tuple plus where its block goes). :func:`apply_results` puts them into a
layer list: it updates the plugin's own layers from an earlier run and never touches a
layer the user made or painted on; such a layer is kept and the new result gets a new
name (``"<image> masks [2]"``).

Our layers carry ``metadata[MARKER]`` with the source layer's id, their role, and a
fingerprint of the data we last wrote (:mod:`~napari_attention_unet.gui.ownership`), so a
change by the user is noticed even when it did not come through a paint event. Layers on
zarr arrays (:func:`lazy_result_layers`, large and lazy images) have no fingerprint, which
would read all their data: for them only paint events count, and ``metadata[MARKER]["store"]``
names the zarr store they read. :func:`predict_into_layers` does the hashing in the worker.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_attention_unet.core.images import leading_channels
from napari_attention_unet.core.orientation import axcodes
from napari_attention_unet.gui.layer_style import (
    Placement,
    attention_kwargs,
    attention_name,
    class_features,
    display_range,
    labels_dtype,
    masks_kwargs,
    masks_name,
)
from napari_attention_unet.gui.ownership import (
    MARKER,
    OwnLayerState,
    changed_by_user,
    fingerprint,
    fingerprint_after_write,
    is_ours,
    is_user_modified,
    on_paint,
    own_layer_states,
    own_layers,
    stamp,
    store_of,
)

if TYPE_CHECKING:
    import napari.layers
    from napari.components import LayerList

    from napari_attention_unet.core.model import ModelConfig
    from napari_attention_unet.gui.scratch import LazyOutputs
    from napari_attention_unet.gui.session import PartPrediction

__all__ = [
    "MARKER",
    "OwnLayerState",
    "Placement",
    "ResultLayer",
    "apply_results",
    "attention_name",
    "fingerprint",
    "is_ours",
    "is_user_modified",
    "layer_orientation",
    "lazy_result_layers",
    "masks_name",
    "own_layer_states",
    "placement_from_layer",
    "predict_into_layers",
    "result_layers",
    "slice_index",
    "store_of",
]


@dataclass
class ResultLayer:
    """One result layer: napari ``(data, kwargs, type)`` for the predicted block ``data`` at ``index``.

    ``data`` is a numpy array, or for :func:`lazy_result_layers` a zarr array or a list of
    them (a pyramid, finest first) covering the whole image.
    """

    role: str  # "masks" or "attention"
    gate: str | None
    data: np.ndarray
    kwargs: dict
    layer_type: str
    index: tuple[int, ...]
    shape: tuple[int, ...]
    # Set by prepare() (in the worker): the full-shape array and its fingerprint, so that the main
    # thread only hands napari the array (hashing a 60-plane 1024² stack takes 0.4 s).
    full: np.ndarray | None = field(default=None, repr=False)
    full_fingerprint: str | None = None
    # Set by check_against() (in the worker) for a block going into our earlier layer:
    # (that layer's array, whether it still holds what we wrote, its fingerprint once the block is in).
    checked: tuple[np.ndarray, bool, str | None] | None = field(default=None, repr=False)

    def full_data(self) -> np.ndarray:
        """The data for a new layer of the full image shape, zeros outside the predicted block."""
        if self.full is not None:
            return self.full
        if not self.index:
            return self.data
        full = np.zeros(self.shape, dtype=self.data.dtype)
        full[self.index] = self.data
        return full

    def prepare(self) -> ResultLayer:
        """Build the full-shape data and its fingerprint now (call in a worker thread); returns self."""
        if isinstance(self.data, np.ndarray):
            self.full = self.full_data()
            self.full_fingerprint = fingerprint(self.full)
        return self

    def check_against(self, earlier: OwnLayerState | None) -> None:
        """Compare our earlier layer's data with the fingerprint we recorded, and for a block, say what
        it will be once the block is in (call in a worker thread; the array is read, never written)."""
        if earlier is None or tuple(earlier.data.shape) != self.shape:
            return
        unchanged = fingerprint(earlier.data) == earlier.fingerprint
        after = fingerprint_after_write(earlier.data, self.index, self.data) if unchanged and self.index else None
        self.checked = (earlier.data, unchanged, after)

    def as_layer_data_tuple(self) -> tuple:
        return (self.full_data(), self.kwargs, self.layer_type)


def placement_from_layer(layer: napari.layers.Image, config: ModelConfig | None = None) -> Placement:
    """The geometry of an image layer (spatial axes only for RGB, and when its first axis holds the
    input channels of the model of ``config``: :func:`~napari_attention_unet.core.images.leading_channels`)."""
    shape = tuple(layer.data.shape[:-1] if layer.rgb else layer.data.shape)
    channels = config is not None and leading_channels(shape, layer.rgb, config.in_channels, config.spatial_dims)
    return Placement(
        shape=shape[int(channels) :],
        scale=tuple(float(s) for s in layer.scale)[int(channels) :],
        translate=tuple(float(t) for t in layer.translate)[int(channels) :],
        source_id=str(layer.unique_id),
        source_name=layer.name,
        nifti=layer.metadata.get("nifti"),
        bright=bool(layer.rgb),
    )


def slice_index(world_point: Sequence[float], placement: Placement, n_leading: int) -> tuple[int, ...]:
    """Data indices of the leading axes at a world point (the viewer's current slice).

    ``world_point`` is ``viewer.dims.point``; a layer's axes are the last ones of the viewer's.
    """
    if n_leading <= 0:
        return ()
    point = list(world_point)[-len(placement.shape) :]
    index = []
    for axis in range(n_leading):
        i = round((point[axis] - placement.translate[axis]) / placement.scale[axis]) if axis < len(point) else 0
        index.append(int(min(max(i, 0), placement.shape[axis] - 1)))
    return tuple(index)


def result_layers(prediction: PartPrediction, placement: Placement, visible_gates: int = 1) -> list[ResultLayer]:
    """Layer data for the masks and each gate map, aligned with the source image.

    Only the first ``visible_gates`` attention layers start visible: several additive
    magma layers on top of each other would hide the image.
    """
    index = tuple(prediction.index)
    masks = {**masks_kwargs(placement, prediction.model_name), **class_features(prediction.extra.get("classes"))}
    labels = prediction.labels.astype(labels_dtype(prediction.labels), copy=False)
    layers = [ResultLayer("masks", None, labels, masks, "labels", index, placement.shape)]
    for k, (gate, values) in enumerate(prediction.gate_maps.items()):
        shown = display_range(values)
        kwargs = attention_kwargs(placement, prediction.model_name, gate, k < visible_gates, shown=shown)
        layers.append(ResultLayer("attention", gate, values, kwargs, "image", index, placement.shape))
    return layers


def predict_into_layers(steps, placement: Placement, earlier: dict[tuple, OwnLayerState] | None = None):
    """Drive a prediction generator (``Session.predict``) and return ``(prediction, its result layers)``.

    Run it in the worker: the hashing that tells our data from a user's edits happens here, so
    the main thread only hands arrays to napari. Each of our ``earlier`` layers
    (:func:`own_layer_states`) is checked against what we wrote (:meth:`ResultLayer.check_against`);
    results for a new layer or a whole one get their full-size data and fingerprint
    (:meth:`ResultLayer.prepare`).
    """
    prediction = yield from steps
    results = result_layers(prediction, placement)
    for result in results:
        result.check_against((earlier or {}).get((result.role, result.gate)))
        if result.checked is None or not result.index or not result.checked[1]:
            result.prepare()  # a new layer, or a whole one: full-size data and its fingerprint
    warm_up_drawing()
    return prediction, results


@functools.cache
def warm_up_drawing() -> None:
    """Pay a one-time cost of napari's first Labels layer here, in the worker, not on the main thread.

    The outline of a process's first Labels layer makes vispy compute its dash patterns (about
    0.1-0.2 s of numpy in ``DashAtlas``; cached for every later line). No GL is involved.
    """
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:  # a vispy without it: nothing to warm up
        return
    DashAtlas()


def lazy_result_layers(
    outputs: LazyOutputs, placement: Placement, model_name: str, visible_gates: int = 1, classes=None
) -> list[ResultLayer]:
    """Layers on the zarr arrays of a block-by-block run (empty at first, filled as blocks arrive);
    ``classes``: a semantic model's class names."""
    extra = {"store": str(outputs.path)}
    pyramid = {"multiscale": True} if outputs.levels > 1 else {}
    masks = {**masks_kwargs(placement, model_name, extra), **class_features(classes)}
    layers = [
        ResultLayer(
            "masks", None, outputs.layer_data(outputs.labels), {**masks, **pyramid}, "labels", (), placement.shape
        )
    ]
    for k, (gate, arrays) in enumerate(outputs.gates.items()):
        kwargs = {**attention_kwargs(placement, model_name, gate, k < visible_gates, extra), **pyramid}
        layers.append(ResultLayer("attention", gate, outputs.layer_data(arrays), kwargs, "image", (), placement.shape))
    return layers


# -- putting results into a layer list (napari model objects only, no Qt) -------------------


def unique_name(existing: Iterable[str], base: str) -> str:
    """``base``, or ``base [2]``, ``base [3]``, ... whichever is free."""
    names = set(existing)
    if base not in names:
        return base
    n = 2
    while f"{base} [{n}]" in names:
        n += 1
    return f"{base} [{n}]"


def _update(layer: napari.layers.Layer, result: ResultLayer, placement: Placement) -> bool:
    """Write ``result`` into our earlier layer; False if it cannot take it (shape changed)."""
    if tuple(layer.data.shape) != placement.shape or layer.multiscale != isinstance(result.data, list):
        return False
    if result.layer_type == "labels" and not isinstance(result.data, list):
        if int(np.max(result.data, initial=0)) > np.iinfo(layer.data.dtype).max:
            return False  # this run's ids do not fit the earlier layer's type: a new layer takes them
    if result.index:
        layer.data[result.index] = result.data
        layer.refresh()
    else:
        layer.data = result.data
    for name in ("scale", "translate"):  # napari redraws the layer and re-measures the scene on every set
        if not np.array_equal(getattr(layer, name), getattr(placement, name)):
            setattr(layer, name, getattr(placement, name))
    # The layer now shows this run's result: say which model made it (and, on zarr, which store).
    layer.metadata[MARKER].pop("store", None)
    layer.metadata[MARKER].update(result.kwargs["metadata"][MARKER])
    if result.layer_type == "image":
        layer.contrast_limits = result.kwargs["contrast_limits"]
    else:  # the class names of this run's model (none for objects): never another model's
        layer.features = result.kwargs.get("features", {})
    return True


def apply_results(layers: LayerList, results: Sequence[ResultLayer], placement: Placement) -> list:
    """Update our own layers from an earlier run, or add new ones; returns the layers shown.

    A layer the user painted on or changed is left as it is and the new result is
    added beside it under a free name. Call on the main thread only.
    """
    from napari.layers import Layer

    shown = []
    earlier = own_layers(layers, placement.source_id)
    for result in results:
        known = None if result.full_fingerprint is None else (result.full, result.full_fingerprint)
        own = earlier.get((result.role, result.gate))
        if own is not None and not changed_by_user(own, result.checked) and _update(own, result, placement):
            checked = result.checked
            if checked is not None and checked[0] is own.data and checked[2] is not None:
                known = (own.data, checked[2])  # the block went into the array the worker hashed
            stamp(own, known)
            shown.append(own)
            continue
        data, kwargs, layer_type = result.as_layer_data_tuple()
        kwargs = {**kwargs, "name": unique_name((layer.name for layer in layers), kwargs["name"])}
        layer = Layer.create(data, kwargs, layer_type)
        masks = earlier.get(("masks", None)) if result.role == "attention" else None
        if masks is not None and masks in layers:  # the maps go under the masks: they would tint them
            layers.insert(layers.index(masks), layer)
        else:
            layers.append(layer)
        stamp(layer, known)
        if layer_type == "labels":
            layer.events.paint.connect(on_paint)
        if result.role == "masks":  # the maps added after it in this call go under it too
            earlier[("masks", None)] = layer
        shown.append(layer)
    return shown


def source_is_open(layers: LayerList, placement: Placement) -> bool:
    """Whether the image a prediction was made of is still in the viewer (not closed while it ran)."""
    return any(str(layer.unique_id) == placement.source_id for layer in layers)


def select_masks(layers: LayerList, placement: Placement) -> None:
    """Make our masks layer of the image the active one, ready for the brush (not the last gate map added)."""
    masks = own_layers(layers, placement.source_id).get(("masks", None))
    if masks is not None:
        layers.selection.active = masks


def layer_orientation(nifti: dict | None) -> str | None:
    """The orientation (``"RAS"``...) of a volume opened from NIfTI, from its layer's ``metadata["nifti"]``."""
    if not nifti or "affine" not in nifti or len(nifti.get("shape") or ()) < 3:
        return None
    return axcodes(nifti["affine"])
