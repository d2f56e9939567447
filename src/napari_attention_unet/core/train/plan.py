"""A training run planned from labelled images: the task, the dimension, the classes, the model and its settings.

``attention-unet train`` and the dock's "new model" training both call :func:`plan_training`,
so that what is inferred from the labels (and said to the user) is the same in both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_attention_unet.core.images import ImageShapeError, to_channel_first
from napari_attention_unet.core.instances import as_instances, as_mask
from napari_attention_unet.core.intensity import choose_window
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.resampling import (
    MAX_VOXELS_3D,
    OBJECT_VOXELS_3D,
    fitting_voxel_size,
    object_voxel_size,
)
from napari_attention_unet.core.train.config import TrainConfig
from napari_attention_unet.core.train.start import (
    default_train_config,
    infer_task,
    network_shape,
    new_model,
    task_classes,
)
from napari_attention_unet.core.train.targets import (
    axes_beside_labels,
    check_image,
    check_labels_shape,
    check_not_constant,
    check_not_negative,
    check_spatial_dims,
    mask_value,
    semantic_values,
    slices_between,
    unlabelled_slices,
)

__all__ = ["FEW_STEPS_FROM_SCRATCH", "TrainingPlan", "infer_dims", "plan_training"]

#: A new model from random weights is seldom done learning before this many steps (3D semantic, MR:
#: mean Dice 0.35-0.77 after 60 steps, 0.84 after 336; 3D instances: test AP@0.5 0.38-0.74 at step 200,
#: 0.84-0.89 at 600; benchmarks/README.md).
FEW_STEPS_FROM_SCRATCH = 200


@dataclass
class TrainingPlan:
    """What :func:`plan_training` decided; ``notes`` are the inferences to show the user."""

    model: AttentionUNet
    config: TrainConfig
    pairs: list[tuple]
    task: str
    dims: int
    classes: tuple[str, ...]
    notes: list[str] = field(default_factory=list)
    #: Per pair, the slices marked as labelled background (``zero_is="slices"``), for the Trainer.
    background_slices: list[list[int] | None] | None = None
    #: Whether the model starts from random weights (also when the start given takes other channels).
    scratch: bool = True
    #: Where the volumes' voxel axes point (``"RAS"``..., NIfTI scans; :mod:`core.orientation`), for the model's info.
    orientation: str | None = None

    def describe(self) -> str:
        what = f"semantic ({', '.join(self.classes[1:])})" if self.task == "semantic" else "instances"
        return f"a new {self.dims}D {what} model"

    def few_steps(self, steps: int, budget: str = "--minutes") -> str | None:
        """What to say of a model from scratch that stopped after few ``steps`` (None: nothing)."""
        if not self.scratch or not 0 < steps < FEW_STEPS_FROM_SCRATCH:
            return None
        return (
            f"only {steps} steps: a new model from scratch is seldom done learning before a few hundred; "
            f"give it more time ({budget}) before trusting its predictions"
        )


def plan_training(
    pairs: Sequence[tuple],
    *,
    task: str | None = None,
    dims: int | None = None,
    class_names: Sequence[str] | None = None,
    zero_is: str = "background",
    start: str | AttentionUNet = "scratch",
    minutes: float | None = None,
    steps: int | None = None,
    base_width: int | None = None,
    depth: int | None = None,
    background_slices: Sequence[Sequence[int] | None] | None = None,
    intensity: str = "auto",
    **settings,
) -> TrainingPlan:
    """Plan a new model's training on ``pairs`` of ``(image, labels, axes, spacing)``.

    Not given: ``task`` is inferred from the labels (a few class values: semantic; many ids:
    instances), ``dims`` from the shapes (volumes with volume labels: 3D; a 2D model trains on
    their planes). ``start`` is ``"scratch"`` or a model whose weights are copied where shapes
    match (the head is new). A new 3D instance model of large objects works on the volumes shrunk
    so that its median object is about 17 voxels across (``ModelConfig.voxel_size``, see
    :func:`core.resampling.object_voxel_size`). ``background_slices`` (with ``zero_is="slices"``): per
    pair, the slices without the structure that the user marked as background (a slice holding no
    label is otherwise not labelled). ``intensity`` (:data:`core.intensity.INTENSITY_CHOICES`): ``"auto"``
    gives a new model of CT-like images one fixed window (:func:`core.intensity.choose_window`), ``"image"``
    each image's own percentiles, ``"window"`` a window whatever the images. ``settings`` are other
    :class:`TrainConfig` fields (seed, precision, ...). Bad input raises ``ValueError`` / ``ImageShapeError``
    with one line saying what works.
    """
    pairs, shapes, in_channels = _checked(pairs)
    original_shapes = list(shapes)
    notes = []
    check_not_constant([p[1] for p in pairs], zero_is)
    check_not_negative([p[1] for p in pairs])
    if (value := mask_value([p[1] for p in pairs])) is not None:  # a 0/255 mask: 255 is not 255 objects or classes
        strays = sum(int(np.count_nonzero((np.asarray(p[1]) != 0) & (np.asarray(p[1]) != value))) for p in pairs)
        pairs = [(p[0], as_mask(p[1], value), *p[2:]) for p in pairs]
        notes.append(
            f"the labels hold 0 and {value:g} only: taken as a mask (0 and 1)"
            if not strays
            else f"the labels hold 0 and {value:g}, and {strays} pixel(s) of other values: taken as a mask (0 and 1; "
            f"values of {np.ceil(value / 2):g} and above in it)"
        )
    inferred = task is None
    if task is None:
        task, why = infer_task([p[1] for p in pairs], zero_is)
        notes.append(f"{why} (inferred: --task chooses another)")
    if task == "instances" and zero_is == "unlabelled":
        raise ValueError(
            "an instance model learns the background from label 0, so 0 must be background: outline every "
            "object of the labelled area (or of a few slices of a volume: --zero-is slices), or train classes "
            "(task semantic) from strokes"
        )
    if dims is None:
        dims = infer_dims([p[1] for p in pairs], zero_is)
        if dims == 2 and all(len(s) == 3 and s[0] > 1 for s in shapes):
            notes.append("the labels lie in one slice of each volume: a 2D model, for every plane (--dims 3: a 3D one)")
    if dims == 3:
        check_spatial_dims(shapes, 3)
    elif any(len(s) == 3 for s in shapes):
        _check_z_first(pairs)  # each volume is normalised whole, then cut into planes (samples.planes_of)
        pairs = [(*p[:3], None) for p in pairs]  # planes as they are: resampling Z would make planes up
        shapes = [s[1:] if len(s) == 3 else s for s in shapes]
        notes.append("volumes are trained on as Z planes by a 2D model (3D for a 3D model)")
    marks = _background_slices(pairs, background_slices, zero_is)
    volumes = [(np.asarray(p[1]), m or ()) for p, m in zip(pairs, marks or [None] * len(pairs)) if np.ndim(p[1]) == 3]
    planes = [unlabelled_slices(labels) for labels, _ in volumes]
    if zero_is == "slices" and planes:
        empty = sum(int(unlabelled_slices(labels, m).sum()) for labels, m in volumes)
        marked, total = sum(int(u.sum()) for u in planes) - empty, sum(len(u) for u in planes)
        how = f" ({marked} marked as background)" if marked else ""
        hint = (
            ""
            if marked or task != "semantic"
            else ". Mark slices beyond the structure as background, or the model never learns where it ends"
        )
        notes.append(
            f"0 = background in the {total - empty} labelled slices{how}; the other {empty} are not labelled "
            f"(nor scored: the held-out score covers labelled slices only){hint}"
        )
    gaps = sum(slices_between(m) for m in planes)
    if zero_is == "background" and gaps:
        notes.append(
            f"{gaps} empty slice(s) lie between labelled ones and are trained on as background: if you labelled "
            "only some slices, give --zero-is slices"
        )
    n_classes = int(max(semantic_values(p[1]).max() for p in pairs)) if task == "semantic" else 0
    if task == "semantic" and not inferred and infer_task([p[1] for p in pairs], zero_is)[0] == "instances":
        # e.g. a nuclei label image trained with --task semantic: 98 classes, one per nucleus
        notes.append(
            f"the labels look like object ids: each value 1..{n_classes} becomes a class of its own "
            "(--task instances makes objects)"
        )
    if task == "instances" and class_names:
        notes.append("objects have no class names: the names given are not used (they name semantic classes)")
    classes = task_classes(task, n_classes, class_names, zero_is)
    if not class_names and _same_kind_of_classes(start, task, classes):  # its names, and its head, carry on
        classes = tuple(start.config.classes)
        notes.append(f"the classes keep the starting model's names: {', '.join(classes[1:])} (--class-names renames)")
    if start != "scratch" and (base_width or depth):
        raise ValueError("a width and depth size a model from scratch; a starting model keeps its own size")
    if not isinstance(start, str) and in_channels not in (1, start.config.in_channels):
        # e.g. nuclei and a membrane stain: the colour model's kernels do not carry over (2 channels, 60 steps:
        # class Dice 0.00 / 0.00 from the bundled weights, 0.96 / 0.89 from scratch)
        notes.append(f"{in_channels} channels: a new model from scratch (the start takes {start.config.in_channels})")
        start = "scratch"
    with torch.random.fork_rng(devices=[]):  # the new weights follow the seed, the caller's generator is left alone
        torch.manual_seed(settings.get("seed", 0))
        model = new_model(task, classes, dims, in_channels, start, base_width=base_width, depth=depth)
    _set_window(model, pairs, in_channels, intensity, notes)
    if dims == 3 and task == "instances" and isinstance(start, str):
        objects = [as_instances(np.asarray(p[1])) for p in pairs]
        voxel = object_voxel_size(objects, [p[3] for p in pairs], sections=zero_is == "slices")
        if voxel is not None:  # large objects: seen shrunk (see core.resampling.object_voxel_size)
            model.config.extra["voxel_size"] = voxel
            notes.append(
                f"objects are about {voxel * OBJECT_VOXELS_3D:.3g} units across: the model sees the volumes at "
                f"{voxel:.3g} units per voxel, so that they are about {OBJECT_VOXELS_3D:g} voxels across"
            )
    if dims == 3 and task == "semantic" and isinstance(start, str):
        voxel = fitting_voxel_size(shapes, [p[3] for p in pairs])
        if voxel is not None:  # large volumes (a CT): seen shrunk, or a CPU spends the budget before a step
            model.config.extra["voxel_size"] = voxel
            notes.append(
                f"the volumes are large: the model sees them at {voxel:.3g} units per voxel (about "
                f"{MAX_VOXELS_3D / 1e6:g} M voxels for the largest) and predicts back on their grid; for "
                "structures a few voxels thin, train a 2D model (--dims 2)"
            )
    voxel = model.config.voxel_size  # a new model's, or the starting model's grid
    sizes = [network_shape(s, p[3], voxel) for s, p in zip(shapes, pairs)] if dims == 3 else shapes
    config = default_train_config(
        task,
        dims,
        sizes,
        from_scratch=isinstance(start, str),
        minutes=minutes,
        steps=steps,
        depth=model.config.depth,
        from_volumes=any(len(s) == 3 for s in original_shapes),
        zero_is=zero_is,
        **settings,
    )
    return TrainingPlan(model, config, list(pairs), task, dims, classes, notes, marks, isinstance(start, str))


def infer_dims(labels: Sequence[np.ndarray], zero_is: str = "background") -> int:
    """3 for volumes with volume labels; 2 for images, one-slice "volumes" (a 2D NIfTI is X x Y x 1),
    and volumes whose strokes or labelled slices all lie in one slice (a 3D model would have nothing
    along Z to learn from, and an EM user painting one section wants every section segmented)."""
    shapes = [np.shape(lbl) for lbl in labels]
    if not all(len(s) == 3 and s[0] > 1 for s in shapes):
        return 2
    if zero_is != "background" and all((~unlabelled_slices(np.asarray(lbl))).sum() <= 1 for lbl in labels):
        return 2
    return 3


def _background_slices(
    pairs: list[tuple], marks: Sequence[Sequence[int] | None] | None, zero_is: str
) -> list[list[int] | None] | None:
    """The slices marked as background, checked: one list (or None) per pair, of volumes' slices."""
    if not marks or not any(m is not None and len(m) for m in marks):
        return None
    if zero_is != "slices":
        raise ValueError(
            "slices marked as background go with label 0 as 'background in labelled slices' (--zero-is slices)"
        )
    if len(marks) != len(pairs):
        raise ValueError(f"background slices are given for {len(marks)} label images, but there are {len(pairs)}")
    out: list[list[int] | None] = []
    for i, (mark, pair) in enumerate(zip(marks, pairs), start=1):
        mark = sorted({int(z) for z in mark}) if mark is not None else []
        n = np.shape(pair[1])[0] if np.ndim(pair[1]) == 3 else 0
        if mark and not n:
            raise ValueError(f"labels {i} are 2D: slices marked as background are slices of a volume")
        bad = [z for z in mark if not 0 <= z < n]
        if n and bad:
            raise ValueError(f"labels {i} have slices 0..{n - 1}; slice {bad[0]} is not one of them")
        held = [z for z in mark if np.any(np.asarray(pair[1][z]))]
        if held:  # the dock refuses to mark such a slice; here a typo, or labels painted after marking
            raise ValueError(
                f"labels {i}: slice {held[0]} is marked as background but holds labels: a slice marked as "
                "background must hold none (unmark it, or clear its labels)"
            )
        out.append(mark or None)
    return out


def _checked(pairs: Sequence[tuple]) -> tuple[list[tuple], list[tuple[int, ...]], int]:
    """Pairs padded to ``(image, labels, axes, spacing)`` and checked, their spatial shapes, the input channels."""
    out, shapes, channels = [], [], 1
    for pair in pairs:
        image, labels, axes, spacing = (*pair, None, None)[:4]
        axes = axes or axes_beside_labels(np.shape(image), np.shape(labels))  # (C, Y, X) with (Y, X) labels
        check_image(image, axes)
        channels_first, _ = to_channel_first(image, axes)
        check_labels_shape(np.shape(labels), channels_first.shape[1:])
        out.append((image, labels, axes, spacing))
        shapes.append(tuple(channels_first.shape[1:]))
        channels = max(channels, min(channels_first.shape[0], 3))
    return out, shapes, channels


def _set_window(model: AttentionUNet, pairs: list[tuple], in_channels: int, intensity: str, notes: list[str]) -> None:
    """Give a new ``model`` one intensity window for every image, or none (:func:`core.intensity.choose_window`).
    A starting model's window stays (its weights learnt on it) unless ``intensity`` is ``"image"``."""
    extra = model.config.extra
    if intensity == "image":
        extra.pop("intensity_window", None)
    if "intensity_window" in extra:
        return
    if in_channels != 1:
        if intensity == "window":
            raise ValueError(f"a fixed intensity window is for single-channel images, not {in_channels} channels")
        return
    images = [to_channel_first(p[0], p[2])[0][0] for p in pairs]
    window, note = choose_window(images, [p[1] for p in pairs], intensity)
    if window is not None:
        extra["intensity_window"] = [list(w) for w in window]
    if note:
        notes.append(note)


def _check_z_first(pairs: list[tuple]) -> None:
    """A 2D model trains on the Z planes of a volume: Z must be its first axis."""
    for _, labels, axes, _ in pairs:
        if np.ndim(labels) == 3 and axes is not None and not axes.upper().startswith("Z"):
            raise ImageShapeError(f"a 2D model trains on the Z planes of a volume with Z first, not axes {axes}")


def _same_kind_of_classes(start, task: str, classes: Sequence[str]) -> bool:
    """Whether a starting model is a semantic model for as many classes, with 0 meaning the same (background,
    or unlabelled): trained on new labels without names, a "membrane, mitochondria" model came back as
    "class 1, class 2", with a new head."""
    if isinstance(start, str) or task != "semantic" or start.config.task != "semantic":
        return False
    own = tuple(start.config.classes)
    return len(own) == len(classes) and own[0] == classes[0]
