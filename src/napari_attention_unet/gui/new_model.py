"""Training a new model for the user's own task from napari layers: semantic classes or instances, 2D or 3D.

No Qt here. :func:`train_new_model` is the generator the dock's Train button runs in a napari
worker, like :meth:`Session.finetune`: the run is planned (task, dimension and classes inferred
from the labels, see :func:`core.train.plan.plan_training`) and the :class:`Trainer` built on its
first step, in the worker; the trainer stays in ``session.trainer`` so that Cancel keeps the
best state so far. :func:`describe_labels` is what the dock shows before the click.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from datetime import datetime

import numpy as np

from napari_attention_unet.core.images import ImageShapeError
from napari_attention_unet.core.instances import as_mask
from napari_attention_unet.core.orientation import (
    axcodes,
    labels_on_image_grid,
    reorient_spacing,
    reorient_volumes,
    valid_orientation,
)
from napari_attention_unet.core.train import StepReport, Trainer, TrainResult
from napari_attention_unet.core.train.config import class_scores
from napari_attention_unet.core.train.plan import TrainingPlan, infer_dims, plan_training
from napari_attention_unet.core.train.start import infer_task
from napari_attention_unet.core.train.targets import (
    axes_beside_labels,
    format_slices,
    mask_value,
    slices_between,
    unlabelled_slices,
)
from napari_attention_unet.gui.session import Session
from napari_attention_unet.models import registry as _registry
from napari_attention_unet.models.versions import inherited_info, save_version

__all__ = [
    "channels_note",
    "describe_labels",
    "final_scores",
    "labels_for_image",
    "save_new_model",
    "time_point_shown",
    "train_new_model",
]

#: Labels larger than this are looked at through a strided subsample before the click.
PREVIEW_PIXELS = 4_000_000


def time_point_shown(layer, labels_shape: Sequence[int], point: Sequence[float]) -> tuple[np.ndarray, int | None]:
    """``(volume, t)``: for a time series (a 4D NIfTI layer, or a leading axis not taken for channels by
    :func:`axes_beside_labels`) with labels of one volume, the time point the viewer shows (``point``:
    ``viewer.dims.point``), over which the labels were painted; else ``(layer.data, None)``. The time points
    taken as channels trained a 3-channel model, silently."""
    data = layer.data
    series = _is_series(layer)
    channels = axes_beside_labels(np.shape(data), tuple(labels_shape)) is not None
    if getattr(layer, "rgb", False) or np.ndim(data) != len(labels_shape) + 1 or (channels and not series):
        return data, None
    t = int(np.clip(np.round(layer.world_to_data(point)[0]), 0, np.shape(data)[0] - 1))
    return np.asarray(data[t]), t


def _is_series(layer) -> bool:
    """A 4D NIfTI opened by our reader: its first axis is time."""
    return len(((layer.metadata or {}).get("nifti") or {}).get("shape") or ()) == 4


def channels_note(layer, labels_shape: Sequence[int]) -> str | None:
    """What to tell the user when the image's leading axis is taken as channels (2-4 planes beside the
    labels' axes, :func:`axes_beside_labels`): napari shows it as a slider, and a time series of 3 volumes
    trained a 3-channel model without a word. None otherwise (RGB, time series, or no such axis)."""
    if getattr(layer, "rgb", False) or _is_series(layer):
        return None
    if np.ndim(layer.data) != len(labels_shape) + 1 or axes_beside_labels(np.shape(layer.data), labels_shape) is None:
        return None
    n = np.shape(layer.data)[0]
    return (
        f"'{layer.name}' holds {n} images beside the labels' grid (the slider): taken as {n} channels of one "
        f"image, for a {n}-channel model. If they are time points, add the one to train on as a layer of its own"
    )


def describe_labels(labels: np.ndarray, zero_is: str, background_slices: Sequence[int] = ()) -> tuple[str | None, str]:
    """``(task, text)``: what a new model would learn from ``labels`` ("semantic", "3 classes found: ..."
    or "instances", "412 objects: instances"; None when nothing is labelled). ``background_slices``:
    slices marked as labelled background (with ``zero_is="slices"``)."""
    labels = full = np.asarray(labels)
    if labels.size > PREVIEW_PIXELS:  # on the main thread: keep it quick on large layers
        step = int(np.ceil((labels.size / PREVIEW_PIXELS) ** (1 / labels.ndim)))
        labels = labels[(slice(None, None, step),) * labels.ndim]
    if not labels.any():
        return None, "nothing labelled yet"
    if labels.dtype.kind in "if" and labels.min() < 0:  # plan_training refuses them: say so before the click
        return None, f"negative values ({labels.min():g}): labels are 0 and 1, 2, ... (objects or classes)"
    if (value := mask_value([labels])) is not None:  # a 0/255 mask, taken as 0/1 as plan_training does
        labels = as_mask(labels, value)
    painted = np.unique(labels[labels > 0]) if zero_is != "background" else ()
    if len(painted) == 1:  # strokes of one value: a binary mask would be taken as objects, and refused
        return None, f"one class painted ({painted[0]}): paint a second one (the background as a class of its own)"
    task, why = infer_task([labels], zero_is)
    if task == "instances" and zero_is == "unlabelled":  # plan_training refuses it: say so before the click
        return task, f"{why}; objects need 0 = background (label 0 is: background, or background in labelled slices)"
    zero = "0 = unlabelled: only painted pixels count" if zero_is == "unlabelled" else "0 = background"
    if full.ndim >= 3 and zero_is != "unlabelled":
        empty = unlabelled_slices(full)
        if zero_is == "slices":
            n_empty = int(unlabelled_slices(full, background_slices).sum())
            marked = int(empty.sum()) - n_empty
            zero = f"0 = background in the {len(full) - n_empty} labelled slices"
            zero += f" ({marked} marked as background: {format_slices(background_slices)})" if marked else ""
            zero += f", the other {n_empty} not labelled"
            if not marked and task == "semantic":
                zero += ": mark slices beyond the structure as background"
        elif gaps := slices_between(empty):
            zero += f"; {gaps} empty slices between labelled ones: labelled only some? "
            zero += "choose 'background in labelled slices'"
    if full.ndim == 3:  # which model a volume's labels train, as plan_training decides it
        if infer_dims([full], zero_is) == 3:
            zero += "; a 3D model"
        else:  # its objects would be cut plane by plane: a 3D user needs to know how to get a 3D model
            zero += "; a 2D model, for every plane (label two slices or more for a 3D model)"
    if len(background_slices) and zero_is != "slices":  # kept in the layer, but they mean nothing here
        zero += f"; the {len(background_slices)} slices marked as background are not used with this label 0"
    return task, f"{why}; {zero}"


def train_new_model(
    session: Session,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    rgb: bool = False,
    spacing: Sequence[float] | None = None,
    ignore: np.ndarray | None = None,
    zero_is: str = "background",
    background_slices: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    from_current: bool | None = None,
    minutes: float | None = 5.0,
    steps: int | None = None,
    orientation: str | None = None,
) -> Generator[StepReport, None, TrainResult]:
    """Train a new model on one image (or volume) and its labels; yields reports, returns the result.

    A volume with volume labels trains a 3D model (``spacing``, the layer's scale, resamples it
    to cubic voxels); a 2D image a 2D one. ``from_current`` starts from the session's model (its
    weights where shapes match, a new head) instead of from scratch; by default 2D models do
    (as ``attention-unet train`` starts 2D models from the bundled one) and 3D ones start from
    scratch. ``background_slices``: slices of a volume marked as labelled background (with
    ``zero_is="slices"``). ``orientation``: a scan's (``"RAS"``..., its layer's NIfTI header), kept in the
    model's info so that scans stored otherwise are turned to it. Shape errors raise at once.
    """
    if not rgb and (axes_beside_labels(image.shape, labels.shape) or "").startswith("C"):
        image, rgb = np.moveaxis(image, 0, -1), True  # (C, Y, X) with (Y, X) labels: napari's planes are channels
    spatial_shape = tuple(image.shape[:-1] if rgb else image.shape)
    if tuple(labels.shape) != spatial_shape:
        raise ImageShapeError(f"the labels (shape {tuple(labels.shape)}) do not match the image {spatial_shape}")
    if len(spatial_shape) not in (2, 3):
        raise ImageShapeError(
            f"a new model trains on a 2D image or a 3D volume; this one is {len(spatial_shape)}D: "
            "pick one time point or channel first"
        )
    axes = "ZYX"[-len(spatial_shape) :] + ("C" if rgb else "")
    current = session.model
    if from_current is None:
        dims = infer_dims([labels], zero_is)  # strokes on one slice of a stack: a 2D model, as plan_training says
        from_current = dims == 2 and current is not None and current.config.spatial_dims == 2
    start = current if from_current and current is not None else "scratch"
    session.trainer, session.plan = None, None
    pixels = None if spacing is None else tuple(float(s) for s in spacing)[-len(spatial_shape) :]

    def run() -> Generator[StepReport, None, TrainResult]:
        plan = plan_training(
            [(np.asarray(image), np.asarray(labels), axes, pixels)],
            class_names=class_names,
            zero_is=zero_is,
            start=start,
            minutes=minutes,
            steps=steps,
            background_slices=[background_slices] if background_slices else None,
        )
        plan.orientation = orientation if plan.dims == 3 else None
        masks = None if ignore is None else [ignore]
        session.plan = plan
        session.trainer = Trainer(
            plan.model,
            plan.pairs,
            config=plan.config,
            device=session.device,
            ignore_masks=masks,
            background_slices=plan.background_slices,
        )
        return (yield from session.trainer.run())

    return run()


def plan_notes(session: Session) -> str:
    """What the plan of the new model being trained inferred that the dock did not show before the click (the
    starting model's class names kept, a 2D model for labels in one slice, large volumes seen shrunk...), for
    the readout: " Note: ...". Command-line flags in the notes are left out (the dock has its own controls)."""
    plan = session.plan
    if plan is None:
        return ""
    notes = [re.sub(r"\s*\([^()]*--[^()]*\)", "", note) for note in plan.notes if "(inferred" not in note]
    notes = [note for note in notes if "--" not in note]
    return " Note: " + "; ".join(notes) + "." if notes else ""


def labels_for_image(image, labels_layer, arrays: Sequence, shape) -> tuple[list, str]:
    """Labels opened from a scan file of their own (their layer's ``metadata["nifti"]``), with their masks
    (``arrays``: labels, then masks or None), put on the grid of the image opened from another
    (:func:`~napari_attention_unet.core.orientation.labels_on_image_grid`), and what was done: napari shows
    each layer as stored, so labels saved from a RAS copy lie mirrored over a LAS scan."""
    source = getattr(labels_layer, "metadata", {}).get("nifti") or {}
    target = getattr(image, "metadata", {}).get("nifti") or {}
    if "affine" not in source or "affine" not in target:
        return list(arrays), ""
    names = (f"'{labels_layer.name}'", f"'{image.name}'")
    labels, notes = labels_on_image_grid(arrays[0], source["affine"], target["affine"], shape, names)
    rest = list(arrays[1:])
    if labels is not arrays[0]:  # turned: the masks painted with them too
        rest = reorient_volumes(rest, axcodes(source["affine"]), axcodes(target["affine"]))
    return [labels, *rest], " ".join(note[0].upper() + note[1:] for note in notes) + ("." if notes else "")


def in_model_orientation(session: Session, stored: str | None, arrays: Sequence, spacing: Sequence[float]):
    """A scan's volumes (image, labels, masks; None stays None) and voxel size turned from its orientation,
    ``stored``, to the one the session's 3D model was trained on, to fine-tune it as it predicts; and a note."""
    trained = inherited_info(session.model_info).get("orientation")
    if session.spatial_dims != 3 or stored is None or not valid_orientation(trained) or stored == trained:
        return arrays, spacing, ""
    if any(a is not None and np.ndim(a) != 3 for a in arrays):
        return arrays, spacing, ""
    spacing = reorient_spacing(tuple(spacing)[-3:], stored, trained)
    note = f"The scan is stored {stored}: turned to {trained}, as the model was trained."
    return reorient_volumes(arrays, stored, trained), spacing, note


def save_new_model(result: TrainResult, plan: TrainingPlan, image_name: str) -> tuple[object, str]:
    """Save the best trained state as a new saved model; returns ``(ModelInfo, what to tell the user)``.

    A new model is kept even when the sanity check doubts it (there is no earlier model for this
    task to fall back on); the message says so.
    """
    taken = {m.name for m in _registry.all_models()}
    base = _registry.safe_model_name(f"{image_name}-{plan.task}-{plan.dims}d-{datetime.now():%Y%m%d-%H%M}")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    info = save_version(
        result.trained_model,
        f"new {plan.task} model",
        steps=result.steps,
        kept_step=result.best_step,
        best_val_dice=result.best_val_dice,
        best_val_ap=result.best_val_ap,
        image_name=image_name,
        name=name,
        extra=_described(plan, result),
    )
    doubt = "" if result.accepted else f" (keep an eye on it: {result.message})"
    voxel = plan.model.config.voxel_size  # large objects: volumes seen shrunk (core.resampling)
    grid = f" Its objects are large: it sees volumes at {voxel:.3g} units per voxel." if voxel else ""
    few = plan.few_steps(result.steps, "the time budget")
    return info, f"Saved {plan.describe()} as '{info.name}'{doubt}.{grid}" + (f" Note: {few}." if few else "")


def _described(plan: TrainingPlan, result: TrainResult) -> dict:
    """What ``attention-unet train`` stores with a model, so that the CLI uses a model made here alike:
    the task, classes, what 0 meant, and a 3D model's voxel size (``predict`` takes TIFF volumes at it)."""
    spacing = plan.pairs[0][3] if plan.dims == 3 and plan.pairs else None
    return {
        "task": plan.task,
        "classes": list(plan.classes),
        "zero_is": plan.config.zero_is,
        **({"background_slices": plan.background_slices} if plan.background_slices else {}),
        "spacing": None if spacing is None else [float(v) for v in spacing],
        **({"orientation": plan.orientation} if plan.orientation else {}),
        "best_val_class_dice": result.best_val_class_dice,
    }


def final_scores(result: TrainResult) -> str:
    """The kept state's held-out scores, to stay in view after the run: " Kept step 350: mean Dice
    0.84 (anterior 0.86, posterior 0.83)." ("" when nothing was held out)."""
    if result.best_val_dice is None:
        return ""
    mean = "mean Dice" if result.best_val_class_dice else "Dice"
    parts = [f"{mean} {result.best_val_dice:.2f}"]
    if result.best_val_class_dice and len(result.best_val_class_dice) > 1:
        parts[0] += f" ({class_scores(result.best_val_class_dice, digits=2)})"
    if result.best_val_ap is not None:
        parts.append(f"AP@0.5 {result.best_val_ap:.2f}")
    return f" Kept step {result.best_step}: " + ", ".join(parts) + " on the held-out part."
