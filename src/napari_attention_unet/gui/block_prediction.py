"""The layers of a block-by-block prediction (large and lazy images) in the dock widget; no Qt widgets (a timer).

:class:`BlockPrediction` sets up a :class:`~napari_attention_unet.gui.lazy.LazyRun` and its
result layers on empty zarr arrays (``gui.scratch``), keeps them from being painted while the
worker writes blocks into them, refreshes them at a bounded rate as blocks arrive, and deletes
the stores no layer reads any more. All of it runs on the main thread; the worker only goes
through ``run.steps``. The dock widget keeps the controls, the worker and the notifications.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from napari_attention_unet.core.images import NOT_NUMBERS
from napari_attention_unet.core.orientation import valid_orientation
from napari_attention_unet.gui import layers as _layers
from napari_attention_unet.gui import lazy as _lazy
from napari_attention_unet.gui.scratch import ScratchStores
from napari_attention_unet.gui.turns import add_one_per_turn
from napari_attention_unet.models.versions import inherited_info

if TYPE_CHECKING:
    import napari
    from napari.layers import Image

    from napari_attention_unet.core.predict import PredictOptions
    from napari_attention_unet.gui.session import Session

__all__ = ["BlockPrediction", "outcome_message"]

# While blocks stream in, the layers are refreshed (on the main thread) at most once a second,
# and never for more than a fifth of the time, so that napari stays responsive.
REFRESH_INTERVAL_S, REFRESH_SHARE = 1.0, 0.2


class BlockPrediction:
    """The block-by-block run in progress (``run``, None when there is none) and its result layers."""

    def __init__(self, viewer: napari.viewer.Viewer, session: Session) -> None:
        self._viewer = viewer
        self._session = session
        self._scratch = ScratchStores()
        self.run: _lazy.LazyRun | None = None
        self._layers: list = []
        self._editable: list = []  # (layer, editable) to restore after a block-by-block run
        self._next_refresh = 0.0
        self._limits: dict[int, tuple] = {}  # per attention layer, the contrast limits last set here
        self._source_id: str | None = None
        viewer.layers.events.removed.connect(self._on_layer_removed)

    def _on_layer_removed(self, event) -> None:
        """The image being predicted was closed: stop the run (it went on for minutes, for an image that
        was gone); the blocks done stay in the layers. Then delete the stores no layer reads any more."""
        if self.run is not None and str(getattr(event.value, "unique_id", "")) == self._source_id:
            self.run.cancel()
        self.release_stores()

    def start(
        self,
        layer: Image,
        options: PredictOptions,
        *,
        current_slice: bool,
        block_size: int,
        on_error: Callable[[BaseException], None],
    ) -> tuple[_lazy.LazyRun, _layers.Placement, list] | None:
        """Set up the run whose worker fills layers on empty zarr arrays through ``run.steps``.

        Returns the run, the placement of ``layer`` and its result layers, to put in the viewer with
        :meth:`add_layers` before the worker starts; None (after ``on_error``) when the run cannot be set up.
        """
        placement = _layers.placement_from_layer(layer)
        image = _lazy.LazyImage.from_layer(layer)
        current = _layers.slice_index(self._viewer.dims.point, placement, len(image.leading_shape))
        try:
            run = _lazy.LazyRun(
                self._session,
                image,
                self._scratch,
                planes=_lazy.default_planes(image.leading_shape, current, current_slice),
                view=_lazy.view_box(self._viewer, layer),
                options=options,
                block_size=block_size,
            )
        except Exception as exc:  # noqa: BLE001 - any failure becomes a notification; the widget stays usable
            on_error(exc)
            return None
        config = self._session.model.config
        classes = config.classes if config.task == "semantic" else None
        results = _layers.lazy_result_layers(run.outputs, placement, run.model_name, classes=classes)
        self.run, self._next_refresh, self._source_id = run, 0.0, placement.source_id
        self._layers, self._editable, self._limits = [], [], {}
        return run, placement, results

    def add_layers(self, results: list, placement: _layers.Placement, then: Callable[[], None], on_error) -> None:
        """Put the run's result layers in the viewer one per event-loop turn, then call ``then`` (start the worker).

        All five in the click's turn held the viewer for 0.83-1.14 s at 4096² (benchmarks/README.md). A layer napari
        refuses ends the run, after ``on_error``.
        """

        def added(shown) -> None:
            self._layers.append(shown)
            self._editable.append((shown, shown.editable))
            if _gate(shown):
                self._limits[id(shown)] = tuple(shown.contrast_limits)
            shown.editable = False  # no painting while blocks are written into the layer

        def done() -> None:
            self.release_stores()  # the stores of an earlier run whose layers now read this one
            then()

        def failed(exc: BaseException) -> None:
            self.end()
            on_error(exc)

        add_one_per_turn(self._viewer, results, placement, added=added, done=done, failed=failed)

    def refresh(self, force: bool = False) -> None:
        """Show the blocks written so far, unless the last refresh was too recent (``force``: now)."""
        start = time.monotonic()
        if not force and start < self._next_refresh:
            return  # the next refresh shows these blocks too
        for layer in self._layers:
            if layer.multiscale:  # napari keeps the coarse levels it read when the layer was made: hand them anew
                layer.data = layer.data  # (refresh() alone left a zoomed-out 8192² result empty)
            else:
                layer.refresh()
        self._show_contrast()
        took = time.monotonic() - start
        self._next_refresh = start + max(REFRESH_INTERVAL_S, took / REFRESH_SHARE)

    def _show_contrast(self) -> None:
        """Each attention map drawn from the median to the top of its blocks so far, as a map predicted whole is
        (it stayed at 0..1, tinting the whole image alike); a map whose contrast the user set is left alone."""
        ranges = self.run.display_ranges() if self.run is not None else {}
        for layer in self._layers:
            shown, last = ranges.get(_gate(layer)), self._limits.get(id(layer))
            if shown is not None and last is not None and np.allclose(layer.contrast_limits, last):
                layer.contrast_limits = shown
                self._limits[id(layer)] = tuple(layer.contrast_limits)

    def release_stores(self, *_) -> None:
        """Delete the zarr stores no layer reads any more (and no run writes)."""
        in_use = {_layers.store_of(layer) for layer in self._viewer.layers} - {None}
        if self.run is not None:
            in_use.add(str(self.run.outputs.path))
        self._scratch.release_unused(in_use)

    def end(self) -> None:
        """The worker finished: the layers can be painted again, and the run's stores may go."""
        for layer, editable in self._editable:
            layer.editable = editable
        self.run, self._layers, self._editable = None, [], []
        self.release_stores()


def _gate(layer) -> str | None:
    """The gate an attention layer of ours shows (None for other layers)."""
    info = layer.metadata.get(_layers.MARKER, {})
    return info.get("gate") if info.get("role") == "attention" else None


def done_message(result, placement: _layers.Placement) -> str:
    """The status line once a whole-image prediction's layers are in: the model (the nuclei model on a CT
    finds no objects, and should say whose answer that is), objects found, a second look at small objects,
    NaN values."""
    n, by = int(result.labels.max(initial=0)), f" with {result.model_name}" if result.model_name else ""
    done = f"Done{by}: {n} object(s) in {placement.source_name}." if not result.semantic else f"Done{by}."
    done += f" Small objects: looked again at {result.zoom:.1f}x." if result.zoom else ""
    done += f" {result.nan_values} pixel value(s) were {NOT_NUMBERS}." if result.nan_values else ""
    return done


def outcome_message(outcome: _lazy.LazyOutcome, placement: _layers.Placement) -> tuple[str, str | None]:
    """The status line for a finished block-by-block run, and a notification (cancelled runs) or None."""
    blocks = _lazy.blocks_for_message(outcome)
    if outcome.cancelled:
        status = (
            f"Cancelled after {blocks}: the blocks done are kept in the layers, the rest of "
            f"{placement.source_name} is empty."
        )
        return status, f"Prediction cancelled; {blocks} kept."
    if outcome.semantic:
        return f"Done ({blocks}).", None
    zoom = f" Small objects: looked again at {outcome.zoom:.1f}x." if outcome.zoom else ""
    return f"Done: {outcome.n_objects} object(s) in {placement.source_name} ({blocks}).{zoom}", None


def predict_spacing(scale, trained, dims: int) -> tuple[tuple[float, ...], str]:
    """``(spacing, note)``: the voxel size to predict a layer at. A 3D model given a layer at napari's default
    scale (1 on every spatial axis: no voxel size was set) takes it at the voxel size it was trained at
    (``trained``, from its info), as ``attention-unet predict`` takes a TIFF volume that states none, and the
    note says so; otherwise the layer's scale, and no note. Before, a forgotten scale went unsaid (a new user's
    nuclei: AP@0.5 0.39 instead of 0.65)."""
    scale = tuple(float(s) for s in scale)
    if dims != 3 or not trained or len(trained) != 3 or len(scale) < 3 or not np.allclose(scale[-3:], 1.0):
        return scale, ""
    trained = tuple(float(v) for v in trained)
    if np.allclose(trained, 1.0):
        return scale, ""
    size = ",".join(f"{v:g}" for v in trained)
    return scale[:-3] + trained, (
        f" The layer has no voxel size (scale 1,1,1): taken at the model's, {size} (Z,Y,X); if its voxels are "
        "cubic or of another size, set the layer's scale."
    )


def axes_note(shape, dims: int, rgb: bool) -> str:
    """A note when a 3D model is given a 4D layer whose second axis is short (1-4) and its first long: it takes
    the layer as time, Z, Y, X, but the shape says Z, C, Y, X (an ImageJ hyperstack opened whole), and each
    (C, Y, X) block predicted as a thin volume is nonsense (a new user's 40x2x128x128 stack: 6 objects in one
    slice, silently). "" otherwise."""
    if dims != 3 or rgb or len(shape) != 4 or not shape[1] <= 4 < shape[0]:
        return ""
    return (
        f" Its axes were taken as time, Z, Y, X; if they are Z, C, Y, X (a stack of {shape[1]} channels), open "
        "it with channel_axis=1 (one layer per channel) and predict the channel the model is for."
    )


def layer_settings(placement, shape, rgb: bool, session: Session) -> tuple[dict, str]:
    """For an image layer predicted whole: the :class:`PredictOptions` settings its geometry gives (``spacing``,
    :func:`predict_spacing`; ``orientation``, when a 3D model was trained on scans stored otherwise than this
    one) and the notes for the status line (those and :func:`axes_note`)."""
    info = inherited_info(session.model_info)
    spacing, note = predict_spacing(placement.scale, info.get("spacing"), session.spatial_dims)
    settings: dict = {"spacing": spacing}
    stored, trained = _layers.layer_orientation(placement.nifti), info.get("orientation")
    if not valid_orientation(trained) or stored == trained or len(placement.shape) < 3:
        pass
    elif session.spatial_dims == 3 and stored is not None:
        settings["orientation"] = (stored, trained)
        note += (
            f" The scan is stored {stored} and the model was trained on {trained} scans: it was turned to {trained} "
            "for the model, and the results put back on its grid."
        )
    elif session.spatial_dims == 3:
        note += (
            f" The layer states no orientation (it was not opened from a NIfTI file): it was predicted as stored, "
            f"as if it were {trained} like the model's training scans."
        )
    elif stored is not None:  # a 2D model gets one plane at a time here: the scan is not turned
        note += (
            f" The scan is stored {stored} and this 2D model was trained on {trained} scans: it was predicted as "
            f"stored, plane by plane; `attention-unet predict` turns it to {trained} first."
        )
    return settings, note + axes_note(shape, session.spatial_dims, rgb)
