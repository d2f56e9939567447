"""Fine-tune controls: a magicgui Container below the predict controls of the dock widget.

The user picks the corrected Labels layer, what to train on (the whole image or only the
pixels they painted), a time budget, and presses Fine-tune. Training is
:meth:`Session.finetune` (a generator over ``core.train.Trainer.run``) in a napari worker;
Cancel closes it. When it ends, the trainer's result is checked on the main thread: an
accepted model becomes the session's model and is saved as a new version (see
``_versions``); a refused one leaves everything as it was. The user's layers are only read.
Which pixels were painted, or lie inside the shapes, comes from ``gui.edits``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    create_widget,
)
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning

from napari_attention_unet.gui import new_model as _new_model
from napari_attention_unet.gui.background_slices import BackgroundSlices, marked_slices
from napari_attention_unet.gui.edits import EditTracker, edited_from_prediction, shapes_mask
from napari_attention_unet.gui.layers import layer_orientation
from napari_attention_unet.gui.plot import TrainingPlot, describe_report
from napari_attention_unet.gui.scroll import wrap_text
from napari_attention_unet.gui.session import Session, explain_error
from napari_attention_unet.models import versions as _versions

if TYPE_CHECKING:
    import napari
    from napari.qt.threading import GeneratorWorker

    from napari_attention_unet.core.train import StepReport, TrainResult
    from napari_attention_unet.core.weights import ModelInfo

__all__ = ["FinetuneWidget"]

WHOLE_IMAGE, ONLY_EDITED, IN_SHAPES = "whole image", "only what I edited", "inside the shapes"
FINE_TUNE, NEW_MODEL = "fine-tune the current model", "a new model for these labels"
ZERO_BACKGROUND, ZERO_UNLABELLED = "background", "unlabelled (only painted pixels count)"
ZERO_SLICES = "background in labelled slices (others not labelled)"
ZERO_MEANS = {ZERO_BACKGROUND: "background", ZERO_UNLABELLED: "unlabelled", ZERO_SLICES: "slices"}
PROGRESS_STEPS = 1000
#: A new model cancelled before this many steps (or before core.train.plan's few steps from scratch) is saved
#: but not put in place of the model in use: a few steps in, its masks would replace good ones with noise.
FEW_STEPS_TO_USE = 50


class FinetuneWidget(Container):
    """Fine-tune the session's model on the chosen image and a corrected Labels layer.

    ``image`` returns the image layer chosen in the predict controls; ``on_new_model(info,
    use)`` is called with the saved version (the dock widget refreshes its model list and, with
    ``use``, picks it and re-predicts; a new model the check doubts is only listed); ``on_busy(running)`` when training
    starts and ends (the dock widget locks its model and Predict controls meanwhile).
    """

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        session: Session,
        image: Callable[[], object],
        on_new_model: Callable[[ModelInfo, bool], None],
        on_busy: Callable[[bool], None] = lambda running: None,
    ) -> None:
        self._viewer = viewer
        self._session = session
        self._image = image
        self._on_new_model = on_new_model
        self._on_busy = on_busy
        self._worker: GeneratorWorker | None = None
        self._steps: int | None = None  # a step limit besides the time budget (tests, scripts)
        self._image_name, self._trained_image = "", lambda: None  # the image layer trained on (a weak reference)
        self._failed = False
        self._result: TrainResult | None = None
        self.edits = EditTracker(viewer)

        self._corrected = create_widget(annotation="napari.layers.Labels", label="corrected labels")
        self._start_from = ComboBox(label="train", choices=[FINE_TUNE, NEW_MODEL], value=FINE_TUNE)
        self._task = Label(label="labels hold", value="")
        self._class_names = LineEdit(label="class names", value="")
        self._zero = ComboBox(label="label 0 is", choices=list(ZERO_MEANS), value=ZERO_BACKGROUND)
        self._background = BackgroundSlices(viewer, lambda: self._corrected.value, lambda: self._show_task())
        self._region = ComboBox(label="train on", choices=[WHOLE_IMAGE, ONLY_EDITED, IN_SHAPES], value=WHOLE_IMAGE)
        self._shapes = create_widget(annotation="napari.layers.Shapes", label="shapes", options={"nullable": True})
        self._minutes = FloatSpinBox(label="time budget (min)", value=2.0, min=0.1, max=120.0, step=0.5)
        self._start = PushButton(text="Fine-tune")
        self._cancel = PushButton(text="Cancel training", enabled=False)
        self._progress = ProgressBar(label="training", min=0, max=PROGRESS_STEPS, value=0)
        self._readout = Label(label="", value="")
        controls = [self._corrected, self._start_from, self._task, self._class_names, self._zero, self._background]
        controls += [
            self._region,
            self._shapes,
            self._minutes,
            self._start,
            self._cancel,
            self._progress,
            self._readout,
        ]
        super().__init__(widgets=controls)
        wrap_text(self._readout, self._task)  # a long line would widen the dock and squeeze the canvas
        self.plot = TrainingPlot()
        self.native.layout().addWidget(self.plot)
        self._corrected.tooltip = "A Labels layer with your corrections (e.g. the painted masks layer)"
        self._region.tooltip = "Train on every pixel of the labels, or only on the pixels you painted"
        self._start.changed.connect(lambda *_: self.start())  # the button: the time budget only
        self._cancel.changed.connect(self._on_cancel)
        self._start_from.tooltip = (
            "Fine-tune the model in use on corrected masks, or train a new model for your own task: "
            "label values as classes (semantic) or objects (instances), 2D or 3D (a volume with volume labels)"
        )
        self._class_names.tooltip = "Names of classes 1, 2, ... separated by commas (e.g. membrane, mitochondria)"
        self._zero.tooltip = "Dense labels: 0 is the background. Strokes or a partial label map: 0 is not labelled"
        self._region.changed.connect(self._follow_region)
        for widget in (self._start_from, self._corrected, self._zero):
            widget.changed.connect(self._show_task)
        self._show_task()
        from napari_attention_unet.core.train import load_optimizer_code

        load_optimizer_code()  # here, not in the worker just after the click (see its docstring)

    # -- public, for scripts and tests --------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._worker is not None

    def start(self, steps: int | None = None) -> None:
        """Start fine-tuning, as the Fine-tune button does; ``steps`` adds a step limit."""
        self._steps = steps
        self._on_start()

    def cancel(self) -> None:
        self._on_cancel()

    @property
    def trained_on(self):
        """The image layer the last training ran on (None once it is gone)."""
        return self._trained_image()

    # -- starting -----------------------------------------------------------------------
    @property
    def zero_is(self) -> str:
        """What label 0 means for a new model, as the dock shows it (unlabelled for strokes)."""
        return ZERO_MEANS[self._zero.value]

    def _follow_region(self, *_) -> None:
        """Training on painted pixels only means that the unpainted 0s are unlabelled, not background."""
        self._zero.value = ZERO_UNLABELLED if self._region.value == ONLY_EDITED else self._zero.value

    def _show_task(self, *_) -> None:
        """Show or hide the new-model controls, and what the chosen labels would teach."""
        new = self._start_from.value == NEW_MODEL
        self._task.visible = self._class_names.visible = self._zero.visible = new
        self._start.text = "Train" if new else "Fine-tune"
        layer = self._corrected.value
        if layer is None:
            self._task.value = "choose a Labels layer"
        elif new and not getattr(layer, "multiscale", False):
            marks = marked_slices(layer)
            task, self._task.value = _new_model.describe_labels(np.asarray(layer.data), self.zero_is, marks)
            self._class_names.visible = task != "instances"  # objects have no class names to give
        self._background.visible = new and self.zero_is == "slices" and layer is not None and layer.ndim == 3
        self._background.refresh()

    def _training_inputs(self):
        """(image layer, labels, ignore, edited) or None after telling the user what is missing."""
        image, corrected = self._image(), self._corrected.value
        if image is None or corrected is None:
            show_error("Choose an image above and a corrected Labels layer to fine-tune on.")
            return None
        if self._session.model is None and self._start_from.value != NEW_MODEL:  # a new model may start from scratch
            show_error("Load a model first, or train a new model for these labels.")
            return None
        if getattr(image, "multiscale", False) or getattr(corrected, "multiscale", False):
            show_error("Multiscale (pyramid) layers cannot be fine-tuned on: open the full-resolution level.")
            return None
        edited = self.edits.edited_mask(corrected)
        if edited is None:
            edited = edited_from_prediction(self._viewer.layers, corrected, image)
        ignore = None
        if self._region.value == ONLY_EDITED:
            if edited is None:
                show_error(
                    f"No painted pixels were recorded on '{corrected.name}': "
                    "paint your corrections, or train on the whole image."
                )
                return None
            ignore = ~edited
        elif self._region.value == IN_SHAPES:
            inside = shapes_mask(self._shapes.value, tuple(corrected.data.shape))
            if inside is None:
                show_error(
                    "Choose a Shapes layer with at least one rectangle (or polygon) around the region to train on."
                )
                return None
            ignore = ~inside
        # Copies: the user may keep painting while the worker trains.
        return image, np.array(corrected.data, copy=True), ignore, None if edited is None else edited.copy()

    def _on_start(self) -> None:
        if self.is_running:
            return
        self._readout.value = ""  # a start refused below must not leave the last run's outcome in view
        inputs = self._training_inputs()
        if inputs is None:
            return
        image, labels, ignore, edited = inputs
        self._session.plan = None
        data, t = _new_model.time_point_shown(image, labels.shape, self._viewer.dims.point)
        if t is not None:
            show_info(f"'{image.name}' is a time series: training on the time point shown ({t}).")
        elif note := _new_model.channels_note(image, labels.shape):
            show_info(note + ".")
        stored, spacing = layer_orientation(image.metadata.get("nifti")), tuple(image.scale)
        arrays, note = _new_model.labels_for_image(image, self._corrected.value, [labels, ignore, edited], data.shape)
        if note:  # labels opened from another copy of the scan: put on its grid, or said to lie on another
            (show_warning if "different affines" in note else show_info)(note)
        labels, ignore, edited = arrays
        try:
            if self._start_from.value == NEW_MODEL:
                names = [n.strip() for n in self._class_names.value.split(",") if n.strip()] or None
                generator = _new_model.train_new_model(
                    self._session,
                    np.asarray(data),
                    labels,
                    rgb=bool(getattr(image, "rgb", False)),
                    spacing=spacing,
                    ignore=ignore if self.zero_is != "unlabelled" else None,
                    zero_is=self.zero_is,
                    background_slices=marked_slices(self._corrected.value) if self.zero_is == "slices" else None,
                    class_names=names,
                    minutes=float(self._minutes.value),
                    steps=self._steps,
                    orientation=stored,
                )
            else:
                arrays, spacing, turned = _new_model.in_model_orientation(
                    self._session, stored, [np.asarray(data), labels, ignore, edited], spacing
                )
                if turned:
                    show_info(turned)
                generator = self._session.finetune(
                    arrays[0],
                    arrays[1],
                    rgb=bool(getattr(image, "rgb", False)),
                    ignore=arrays[2],
                    edited=arrays[3],
                    minutes=float(self._minutes.value),
                    steps=self._steps,
                    spacing=spacing,
                )
        except Exception as exc:  # noqa: BLE001 - becomes a notification
            self._on_error(exc)
            return
        self._image_name, self._trained_image = image.name, weakref.ref(image)
        self._failed, self._result = False, None
        self._worker = create_worker(
            _forward,
            generator,
            _start_thread=False,
            _connect={
                "yielded": self._on_report,
                "errored": self._on_error,
                "aborted": lambda: setattr(self._readout, "value", "Cancelled; checking the best model so far…"),
                "finished": self._on_finished,
            },
        )
        self._set_running(True)
        self._on_busy(True)
        planes = [i for i in self._session.trained_planes if i]
        where = f" (slices {', '.join(str(i[0] if len(i) == 1 else i) for i in planes)})" if planes else ""
        new = self._start_from.value == NEW_MODEL
        first = "preparing the samples…" if new else "first scoring the start on the held-out part…"
        self._readout.value = f"{'Training a new model' if new else 'Fine-tuning'} on {image.name}{where}: {first}"
        self._worker.start()

    def _on_cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self._readout.value = "Cancelling…"

    # -- while training -----------------------------------------------------------------
    def _on_report(self, report: StepReport) -> None:
        if report.eta is not None and report.elapsed + report.eta > 0:
            fraction = report.elapsed / (report.elapsed + report.eta)
        elif report.total_steps:
            fraction = report.step / report.total_steps
        else:
            fraction = 0.0
        self._progress.value = round(PROGRESS_STEPS * min(max(fraction, 0.0), 1.0))
        self._readout.value = describe_report(report) + _new_model.plan_notes(self._session)
        self.plot.add(report.step, report.loss, report.val_dice, report.val_ap, report.val_class_dice)

    def _on_error(self, exc: BaseException) -> None:
        """Say what went wrong in the dock too: the readout must not go on saying "Training…"."""
        self._failed = True
        message = explain_error(exc, "Training a new model" if self._start_from.value == NEW_MODEL else "Fine-tuning")
        self._readout.value = message
        self._progress.value = 0
        show_error(message)

    def _on_finished(self) -> None:
        """Training ended (done, cancelled or failed): check the best model in a second worker."""
        trainer = self._session.trainer
        if self._failed or trainer is None or trainer.step == 0:
            if not self._failed:
                self._readout.value = "Stopped before the first step; the model is unchanged."
            self._end()
            return
        self._readout.value = (
            f"Checking the {'new' if self._session.plan else 'fine-tuned'} model on the held-out part…"
        )
        # The check predicts the validation region: off the main thread, like the training.
        self._worker = create_worker(
            trainer.result,
            _start_thread=False,
            _connect={"returned": self._on_result, "errored": self._on_error, "finished": self._end},
        )
        self._worker.start()

    def _on_result(self, result: TrainResult) -> None:
        self._result = result

    def _end(self) -> None:
        """Unlock the controls, then use an accepted model (which re-predicts) or say why not."""
        self._worker = None
        self._set_running(False)
        self._on_busy(False)
        result, self._result = self._result, None
        if result is None:
            return
        cancelled = f"Cancelled at step {result.steps}. " if result.stopped == "cancelled" else ""
        if self._session.plan is not None:  # a new model: kept even if doubted, there is none to fall back on
            info, message = _new_model.save_new_model(result, self._session.plan, self._image_name)
            message = cancelled + message + _new_model.final_scores(result)
            # Cancelled after a few steps: saved, but not put in place of the model in use.
            few = result.steps < FEW_STEPS_TO_USE or self._session.plan.few_steps(result.steps)
            use = result.accepted and not (cancelled and few)
            if use:
                self._session.set_model(result.trained_model, info)
            else:  # listed, not put in use: the masks shown stay those of the model in use
                message += f" Not put in use: pick '{info.name}' in the model list to try it."
            self._progress.value = PROGRESS_STEPS
            self._readout.value = message
            (show_info if use else show_warning)(message)
            self._on_new_model(info, use)
            return
        if not result.accepted:
            show_warning(f"Not used; the previous model is kept: {result.message}")
            self._readout.value = "Not used: " + result.message
            return
        parent = self._session.model_info.name if self._session.model_info else "model"
        info = _versions.save_version(
            result.model,
            parent,
            steps=result.steps,
            kept_step=result.best_step,
            best_val_dice=result.best_val_dice,
            best_val_ap=result.best_val_ap,
            image_name=self._image_name,
            extra=_versions.inherited_info(self._session.model_info),  # e.g. a 3D model's voxel size
        )
        self._session.set_model(result.model, info)
        self._progress.value = PROGRESS_STEPS
        self._readout.value = f"{cancelled}Saved as '{info.name}': {result.message}."
        show_info(f"Fine-tuned model saved as '{info.name}'.")
        self._on_new_model(info)

    def set_enabled(self, enabled: bool) -> None:
        """Allow or block starting a fine-tune (the dock widget blocks it while predicting)."""
        self._start.enabled = enabled and not self.is_running

    def _set_running(self, running: bool) -> None:
        controls = (self._start, self._corrected, self._region, self._shapes, self._minutes, self._start_from)
        for widget in (*controls, self._class_names, self._zero):
            widget.enabled = not running
        self._cancel.enabled = running
        if running:
            self._progress.value = 0
            self.plot.clear()


def _forward(generator):
    """The training generator, as a generator function (what create_worker expects)."""
    return (yield from generator)
