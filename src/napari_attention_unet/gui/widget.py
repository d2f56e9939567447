"""The "Attention U-Net" dock widget: a thin magicgui Container over a :class:`Session`.

Controls only: the model lives in the session, compute in ``core.predict`` (in a napari worker, with
the layers' data), ``_layers`` adds the layers on the main thread. Large and lazy images go block by
block through ``_lazy`` into layers on zarr stores that ``gui.block_prediction`` refreshes.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    ProgressBar,
    PushButton,
    Select,
    create_widget,
)
from napari.layers import Image
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from napari_attention_unet.core.predict import PredictOptions
from napari_attention_unet.gui import layers as _layers
from napari_attention_unet.gui import lazy as _lazy
from napari_attention_unet.gui.block_prediction import BlockPrediction, done_message, layer_settings, outcome_message
from napari_attention_unet.gui.collector import RunFreeze
from napari_attention_unet.gui.finetune_widget import FinetuneWidget
from napari_attention_unet.gui.scroll import in_scroll_area, wrap_text
from napari_attention_unet.gui.session import (
    DEVICE_CHOICES,
    PROGRESS_STEPS,
    Session,
    explain_error,
    missing_bundled_model_message,
)
from napari_attention_unet.gui.turns import add_one_per_turn
from napari_attention_unet.gui.versions_widget import VersionsWidget

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from napari_attention_unet.core.predict import Progress

__all__ = ["AttentionUNetWidget"]

NO_MODEL = "(no model found)"
# None = auto: the core fits the tiles to the image.
TILE_CHOICES = [("auto", None)] + [(str(n), n) for n in (64, 96, 128, 256, 384, 512, 768, 1024)]
INSTANCES, SEMANTIC = "instances (one id per nucleus)", "semantic (foreground = 1)"
CURRENT_SLICE = {2: "current slice only (3D stacks, time series)", 3: "current time point only (time series)"}


class AttentionUNetWidget(Container):
    """Segment the chosen image layer with an Attention U-Net and show its attention maps."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self._viewer = viewer
        self._session = Session()
        self._worker: GeneratorWorker | None = None
        self._blocks = BlockPrediction(viewer, self._session)  # large and lazy images
        self._adding = False  # result layers are going in, one per event-loop turn (gui.turns.add_one_per_turn)
        self._freeze = RunFreeze()  # napari's full garbage collections stalled the viewer for 0.3-0.4 s
        #: Block edge (px) for large and lazy images; smaller blocks show the first results sooner.
        self.block_size = _lazy.LAZY_BLOCK_SIZE
        self._picked: str | None = None  # a model file picked below, listed with the models while in use
        self._loaded: str | None = None  # the model in use: name or path
        self._image = create_widget(annotation="napari.layers.Image", label="image")
        self._model = ComboBox(label="model", choices=self._model_choices, nullable=False)
        self._refresh = PushButton(text="Refresh model list")
        self._model_file = FileEdit(label="model file", mode="r", filter="*.safetensors", value="")
        self._model_info = Label(label="")
        self._device = ComboBox(label="device", choices=list(DEVICE_CHOICES), value="auto")
        self._device_info = Label(label="in use", value=self._session.describe_device())
        self._tile_size = ComboBox(label="tile size", choices=TILE_CHOICES, value=None)
        self._output = ComboBox(label="masks", choices=[INSTANCES, SEMANTIC], value=INSTANCES)
        self._gates = Select(label="attention maps", choices=self._gate_choices, allow_multiple=True)
        self._current_slice = CheckBox(text=CURRENT_SLICE[2], value=True)
        self._predict = PushButton(text="Predict")
        self._cancel = PushButton(text="Cancel", enabled=False)
        self._progress = ProgressBar(label="progress", min=0, max=PROGRESS_STEPS, value=0)
        self._status = Label(label="", value="")
        self._finetune = FinetuneWidget(
            viewer, self._session, lambda: self._image.value, self._on_new_model, on_busy=self._on_finetune_busy
        )
        self._versions = VersionsWidget(self._session, self._on_models_changed)
        controls = [self._image, self._model, self._refresh, self._model_file, self._model_info, self._device]
        controls += [self._device_info, self._tile_size, self._output, self._gates, self._current_slice, self._predict]
        controls += [self._cancel, self._progress, self._status, self._finetune, self._versions]
        self._panel = Container(widgets=controls)
        super().__init__(widgets=[self._panel], labels=False)
        self.scroll_area = in_scroll_area(self, self._panel)  # a dock taller than the screen scrolls
        wrap_text(self._status, self._model_info)
        self._panel.native.layout().addStretch(1)  # keep the controls together at the top of the dock
        self._gates.native.setFixedHeight(64)  # room for four gates without taking over the dock
        self._current_slice.tooltip = "Predict only the plane (or time point) shown; untick to predict the whole stack"
        self._tile_size.tooltip = "Tiles the image is predicted in (auto: fitted to it); smaller ones need less memory"
        self._model.changed.connect(self._on_model_changed)
        self._refresh.changed.connect(self._on_refresh)
        self._model_file.changed.connect(self._on_model_file)
        self._device.changed.connect(self._on_device_changed)
        self._predict.changed.connect(self._on_predict)
        self._cancel.changed.connect(self._on_cancel)
        viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.reset_choices()
        self._on_active_layer()
        self._on_model_changed()

    def reset_choices(self, *_) -> None:
        """Refresh the layer choices (napari calls this when layers change), keeping the chosen gates; the
        image closed, the picker takes another image rather than one of our attention maps."""
        gates = list(self._gates.value)
        super().reset_choices()
        self._gates.value = [g for g in gates if g in self._gates.choices]
        images = [layer for layer in self._image.choices if not _layers.is_ours(layer)]
        if self._image.value is not None and _layers.is_ours(self._image.value) and images and not self.is_running:
            self._image.value = images[0]

    # -- public, for scripts and tests --------------------------------------------------
    @property
    def session(self) -> Session:
        return self._session

    @property
    def is_running(self) -> bool:
        return self._worker is not None or self._blocks.run is not None or self._adding

    def use_model(self, name_or_path: str) -> None:
        """Choose a model by name (bundled or saved) or by file path, as the pickers do."""
        if name_or_path in self._model.choices:
            self._model.value = name_or_path
        else:
            self._model_file.value = name_or_path

    @property
    def finetune(self) -> FinetuneWidget:
        """The fine-tune controls (corrected labels, budget, Fine-tune, Cancel)."""
        return self._finetune

    def predict(self) -> None:
        """Start a prediction, as the Predict button does."""
        self._on_predict()

    def cancel(self) -> None:
        """Stop the running prediction at the next tile; no layers are added (block by block: the blocks done stay)."""
        self._on_cancel()

    # -- models and device --------------------------------------------------------------
    def _model_choices(self, _widget=None) -> list:
        choices = [(m.name, m.name) for m in self._session.available_models()]
        if self._picked is not None:  # the list shows the model in use, and picking a name loads it again
            choices.append((f"{Path(self._picked).name} (file)", self._picked))
        return choices or [NO_MODEL]

    def _gate_choices(self, _widget=None) -> list[str]:
        return list(self._session.gate_names)

    def _on_refresh(self) -> None:
        current = self._model.value
        self._model.reset_choices()
        if current in self._model.choices and self._model.value != current:
            self._model.value = current
        elif self._model.value == NO_MODEL:
            self._on_model_changed()

    def _on_new_model(self, info, use: bool = True) -> None:
        """A model was saved: list it; unless it is only listed (``use``), pick it and show what it predicts."""
        self._model.reset_choices()
        if use:  # the session holds it already (set_model): reading it back from disk cost the viewer 90 ms
            with self._model.changed.blocked():
                self._model.value = info.name
            self._show_model(info.name)
        if use and self._image.value is self._finetune.trained_on is not None and not self.is_running:
            self.predict()  # on the image trained on only (not another the picker fell back to)

    def _on_models_changed(self, name: str | None) -> None:
        """A saved model was renamed (pick it under its new name) or deleted (fall back to the first)."""
        self._model.reset_choices()
        if name is not None:
            self._model.value = name
        self._on_model_changed()

    def _on_finetune_busy(self, running: bool) -> None:  # nor is the model trained on renamed or deleted meanwhile
        self._lock(running)
        self._versions.enabled = not running

    def _lock(self, running: bool) -> None:
        """While a run goes on: the controls that would change it off, old objects out of full collections."""
        self._freeze.hold(running)
        for widget in (self._predict, self._image, self._model, self._refresh, self._model_file, self._device):
            widget.enabled = not running

    def _on_model_file(self) -> None:
        path = self._model_file.value
        if path and str(path) != "." and not Path(path).is_file():
            in_use = self._session.model_info.name if self._session.model_info else "none"
            show_error(f"No model file at {path}: the model in use stays '{in_use}'.")
            return
        if path and self._load(str(path)):
            self._picked = str(path)
            self._model.reset_choices()
            with self._model.changed.blocked():  # loaded already
                self._model.value = self._picked

    def _on_model_changed(self) -> None:
        if self._model.value == NO_MODEL:
            self._model_info.value = "No model yet: choose a model file below."
            self._status.value = missing_bundled_model_message()
            return
        loaded = self._load(self._model.value, listed=self._model.value != self._picked)
        if not loaded and self._loaded in self._model.choices:  # show the model still in use, not the one that failed
            with self._model.changed.blocked():
                self._model.value = self._loaded

    def _load(self, name_or_path: str, listed: bool = False) -> bool:
        try:
            self._session.load_model(name_or_path, listed=listed)
        except Exception as exc:  # noqa: BLE001 - any failure becomes a notification; the widget stays usable
            show_error(explain_error(exc))
            return False
        self._show_model(name_or_path)
        return True

    def _show_model(self, name_or_path: str) -> None:
        """Show the session's model (``name_or_path``) in the dock: what it is, and what it can output."""
        self._loaded = name_or_path
        self._model_info.value = self._session.describe_model()
        missing = self._session.bundled_model_missing()
        self._status.value = "Bundled 'nuclei' model not installed; using another model." if missing else ""
        config = self._session.model.config
        self._output.visible = config.task != "semantic"  # a semantic model's masks are its class values
        self._current_slice.text = CURRENT_SLICE[config.spatial_dims]  # a 3D model takes whole volumes
        self._gates.reset_choices()
        self._gates.value = list(self._session.gate_names)

    def _on_device_changed(self) -> None:
        try:
            self._session.set_device(self._device.value)
        except (RuntimeError, ValueError) as exc:
            show_warning(f"{exc}. Using the automatic choice instead.")
            self._device.value = "auto"
            return
        self._device_info.value = self._session.describe_device()

    def _on_active_layer(self, event=None) -> None:
        active = self._viewer.layers.selection.active
        if active is not None and active in self._image.choices and not self.is_running and not _layers.is_ours(active):
            self._image.value = active

    # -- predicting -----------------------------------------------------------------------
    def _on_predict(self) -> None:
        if self.is_running:
            return
        layer = self._image.value
        if layer is None:
            show_error("Choose an image layer to segment (for a try: File > Open Sample > Attention U-Net).")
            return
        if self._session.model is None:
            show_error(missing_bundled_model_message())
            return
        if not isinstance(layer, Image) or _layers.is_ours(layer):
            what = "a result of this plugin" if isinstance(layer, Image) else "not an image layer"
            show_error(f"'{layer.name}' is {what}: choose an image to segment.")
            return
        if _lazy.uses_blocks(layer, self._session.spatial_dims):
            self._predict_blocks(layer, self._options())
            return
        if layer.multiscale:
            show_error("Multiscale (pyramid) images need a 2D model: choose one, or open one level as an image.")
            return
        placement = _layers.placement_from_layer(layer, self._session.model.config)  # (C, Y, X): YX outputs
        n_leading = len(placement.shape) - self._session.spatial_dims
        index = None
        if self._current_slice.value and n_leading > 0:
            index = _layers.slice_index(self._viewer.dims.point, placement, n_leading)
        settings, note = layer_settings(placement, layer.data.shape, bool(layer.rgb), self._session)
        options = PredictOptions.of(self._options(), **settings)  # 3D: cubic voxels, the model's orientation
        self._start_worker(  # the layers' data is built and checked in the worker too
            _layers.predict_into_layers,
            self._session.predict(layer.data, options, rgb=bool(layer.rgb), index=index),
            placement,
            _layers.own_layer_states(self._viewer.layers, placement.source_id),
            returned=lambda result: self._on_returned(result, placement, note),
            message=f"Predicting {layer.name} on {self._session.describe_device()}…",
        )

    def _start_worker(self, func, *args, returned, message: str) -> None:
        """Run ``func(*args)`` (a generator of progress) in a napari worker, the dock showing it runs."""
        connect = {"yielded": self._on_progress, "returned": returned, "errored": self._on_error}
        connect.update(aborted=self._on_aborted, finished=self._on_finished)
        self._worker = create_worker(func, *args, _start_thread=False, _connect=connect)
        self._set_running(True, message)
        self._worker.start()

    def _options(self) -> PredictOptions:
        """The prediction settings chosen in the dock."""
        return PredictOptions(
            tile_size=self._tile_size.value, instances=self._output.value == INSTANCES, gates=self._gates.value
        )

    def _predict_blocks(self, layer: Image, options: PredictOptions) -> None:
        """A large or lazy image: layers on empty zarr arrays now, filled block by block by the worker."""
        started = self._blocks.start(
            layer, options, current_slice=self._current_slice.value, block_size=self.block_size, on_error=self._on_error
        )
        if started is None:
            return
        run, placement, results = started
        n, returned = len(run.order) * len(run.planes), lambda outcome: self._on_blocks_returned(outcome, placement)
        message = f"Predicting {layer.name} in {n} block(s) of {run.plan.block_size} px on "
        message += f"{self._session.describe_device()}, the region on screen first…"
        start = partial(self._start_worker, run.steps, returned=returned, message=message)  # once the layers are in
        self._set_running(True, "Adding the result layers…")  # Cancel works from here: the worker then stops at once

        def failed(exc: BaseException) -> None:
            self._on_error(exc)
            self._set_running(False)

        self._blocks.add_layers(results, placement, then=start, on_error=failed)

    def _on_cancel(self) -> None:
        if self._blocks.run is not None:
            self._blocks.run.cancel()  # the run stops at the next tile and keeps the blocks done
            self._status.value = "Cancelling; the blocks done so far are kept…"
        elif self._worker is not None:
            self._worker.quit()
            self._status.value = "Cancelling…"

    def _on_progress(self, progress: Progress) -> None:
        self._progress.value = progress.done
        if getattr(progress, "refresh", False):
            self._blocks.refresh(force=progress.stage == "done")
        if isinstance(progress, _lazy.BlockProgress):
            run = self._blocks.run
            if run is not None and not run.cancelled and progress.stage != "done":
                self._status.value = progress.describe(run.image.name)
        elif progress.stage not in ("predicting", "done"):  # a stack's planes each end "done": not the run
            self._status.value = f"{progress.stage.capitalize()}…"

    def _on_blocks_returned(self, outcome: _lazy.LazyOutcome, placement: _layers.Placement) -> None:
        self._blocks.refresh(force=True)
        self._device_info.value = self._session.describe_device()
        self._status.value, note = outcome_message(outcome, placement)
        if note is not None:
            show_info(note)

    def _on_returned(self, outcome, placement: _layers.Placement, note: str = "") -> None:
        result, results = outcome
        self._device_info.value = result.device
        done = done_message(result, placement) + note
        if not _layers.source_is_open(self._viewer.layers, placement):  # closed while it was predicted
            results, done = [], f"{placement.source_name} was closed while it was predicted: no layers added."
        self._adding = True  # still listed while they are added: the picker must not follow a new layer (is_running)
        self._status.value = "Adding the result layers…"

        def finish(message: str = done) -> None:
            self._adding = False
            self._status.value = message
            if self._worker is None:  # the worker finished while the layers were being added
                self._set_running(False)

        failed = lambda exc: finish(f"Not all result layers could be added: {exc}")  # noqa: E731
        add_one_per_turn(self._viewer, results, placement, done=finish, failed=failed)

    def _on_error(self, exc: BaseException) -> None:
        show_error(explain_error(exc))
        kept = " The blocks done so far stay in the layers." if self._blocks.run is not None else ""
        self._status.value = f"Failed; see the notification.{kept}"

    def _on_aborted(self) -> None:
        if self._blocks.run is not None:
            self._status.value = "Stopped; the blocks done so far stay in the layers."
            return
        self._status.value = "Cancelled; no layers were changed."
        show_info("Prediction cancelled.")

    def _on_finished(self) -> None:
        self._worker = None
        self._blocks.end()  # block by block: the layers can be painted again
        if not self._adding:
            self._set_running(False)

    def _set_running(self, running: bool, message: str | None = None) -> None:
        self._lock(running)
        self._cancel.enabled = running
        self._finetune.set_enabled(not running)
        if running:
            self._progress.value = 0
        if message is not None:
            self._status.value = message
