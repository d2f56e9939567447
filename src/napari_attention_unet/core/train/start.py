"""A new model for a task: its classes, where it starts, and the training settings that suit it.

- :func:`task_classes`: the output channels' names. Instances: background / interior /
  boundary. Semantic: channel k is label value k; channel 0 is ``"background"`` for dense
  labels (``zero_is="background"``) or ``"unlabelled"`` for strokes (never trained), then the
  user's classes (``"class 1"`` .. ``"class K"`` unless named).
- :func:`new_model`: from scratch (sized by :data:`SCRATCH`), or from another model of the same
  dimension (transfer): every weight whose shape matches is copied, except the head, which is
  new (K+1 outputs), unless the start already has this task and these classes.
- :func:`infer_task`: instances or semantic, from the labels, when the user does not say.
- :func:`default_train_config`: the settings of ``attention-unet train`` for a task, and
  :func:`split_samples`: what it trains on and what it validates on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from skimage.measure import label as connected_components

from napari_attention_unet.core.model import AttentionUNet, ModelConfig
from napari_attention_unet.core.resampling import grid_zoom, isotropic_shape
from napari_attention_unet.core.train.config import INSTANCE_CLASSES, TrainConfig, counted
from napari_attention_unet.core.train.samples import TrainingSample, fitted_patch, prepare_samples
from napari_attention_unet.core.train.targets import MAX_CLASS_VALUE

__all__ = [
    "SCRATCH",
    "default_train_config",
    "infer_task",
    "network_shape",
    "new_model",
    "patch_3d",
    "patch_as_predicted",
    "split_samples",
    "task_classes",
    "whole_images_held_out",
]

#: Network sizes of a model trained from scratch, per spatial dimension. 3D: base width 16 and
#: depth 4 (1.4 M parameters); see benchmarks/README.md (bench_tasks.py) for the measurements.
SCRATCH: dict[int, dict] = {2: {"base_width": 16, "depth": 5}, 3: {"base_width": 16, "depth": 4}}

#: Voxels in a 3D training patch (24x32x24). On a CPU the time budget is won by steps per second:
#: on MR hippocampi in 2 minutes, whole-volume 48x56x40 patches two a batch reached a mean Dice of
#: 0.76, 32x32x32 four a batch 0.82, 24x32x24 four a batch 0.84 (benchmarks/README.md, bench_tasks.py);
#: chosen again on half of the training volumes, scored on the other half, 4 minutes: 16x24x16 0.870,
#: 24x32x24 0.867, 32x32x32 0.865, 32x48x32 0.847.
PATCH_VOXELS_3D = 24 * 32 * 24

#: From this many images on, :func:`split_samples` holds out whole images (every fifth) for validation.
WHOLE_IMAGE_VALIDATION = 5
#: A new semantic model keeps the latest state within this much (mean class Dice) of the best one
#: on the held-out images (``TrainConfig.keep_within``). Chosen on the MR hippocampi's inner split
#: (train on 10 training volumes, score the other 10; 3 seeds, 650 steps): the best state 0.862 /
#: 0.867 / 0.866, the latest within 0.005 of it 0.874 / 0.874 / 0.866 (within 0.01: 0.873 / 0.873 /
#: 0.865; the last state 0.873 / 0.873 / 0.863).
KEEP_WITHIN_SEMANTIC = 0.005

#: More distinct label values than this (or any above 255) are object ids, not classes.
MAX_INFERRED_CLASSES = 30


def task_classes(
    task: str, n_classes: int = 0, names: Sequence[str] | None = None, zero_is: str = "background"
) -> tuple[str, ...]:
    """The output channels' names of a model for ``task``; ``n_classes`` = K, the largest class value."""
    if task == "instances":
        return INSTANCE_CLASSES
    if task != "semantic":
        raise ValueError(f"task must be instances or semantic, not {task!r}")
    if names:
        names = tuple(str(n).strip() for n in names)
        if n_classes and len(names) != n_classes:
            raise ValueError(
                f"{len(names)} class name(s) given ({', '.join(names)}) but the labels hold classes 1..{n_classes}"
            )
        n_classes = len(names)
    if not 1 <= n_classes <= MAX_CLASS_VALUE:
        raise ValueError(f"a semantic model needs 1..{MAX_CLASS_VALUE} classes besides class 0, not {n_classes}")
    first = "unlabelled" if zero_is == "unlabelled" else "background"
    classes = (first, *(names or tuple(f"class {k}" for k in range(1, n_classes + 1))))
    # Scores and the viewer's legend go by name: every class needs its own.
    if "" in classes:
        raise ValueError(f"class {classes.index('')} has an empty name: give one name per class, e.g. a,b,c")
    twice = sorted({n for n in classes if classes.count(n) > 1})
    if twice:
        raise ValueError(f"class names must differ ({', '.join(twice)} given twice; class 0 is {first!r})")
    return classes


def new_model(
    task: str,
    classes: Sequence[str],
    spatial_dims: int = 2,
    in_channels: int = 1,
    start: str | AttentionUNet = "scratch",
    *,
    base_width: int | None = None,
    depth: int | None = None,
) -> AttentionUNet:
    """A model whose output channels are ``classes`` (from :func:`task_classes`), in train mode.

    ``start="scratch"``: random weights, sized by :data:`SCRATCH` unless ``base_width`` / ``depth``
    say otherwise. ``start=model``: the same architecture as ``model`` (its width, depth and
    input channels; a grey ``in_channels=1`` start from a colour model sums the first kernels over
    colours, which is the same network on a grey image repeated to colour), with every weight of
    matching shape copied, the head excepted unless ``model`` has this task and these classes (a
    new head starts at zero), the voxel size of its grid (a 3D instance model's
    ``ModelConfig.voxel_size``) and its intensity window (a CT model's ``ModelConfig.intensity_window``).
    """
    classes = tuple(classes)
    if isinstance(start, str):
        if start != "scratch":
            raise ValueError(f"start must be 'scratch' or a model, not {start!r}")
        size = {**SCRATCH[spatial_dims], **{k: v for k, v in (("base_width", base_width), ("depth", depth)) if v}}
        return AttentionUNet(ModelConfig(spatial_dims, in_channels, classes, task=task, **size)).train()
    if start.members is not None:  # a model that averages members (core.train.folds): its first one's weights
        start = start.members[0]
    source = start.config
    if source.spatial_dims != spatial_dims:
        raise ValueError(
            f"the starting model is {source.spatial_dims}D, so it cannot start a {spatial_dims}D model: "
            f"start from scratch, or from a {spatial_dims}D model"
        )
    channels = in_channels if in_channels == 1 else source.in_channels
    config = ModelConfig(spatial_dims, channels, classes, source.base_width, source.depth, task=task)
    if source.voxel_size is not None:  # the grid the copied weights learnt on (core.resampling.grid_zoom)
        config.extra["voxel_size"] = source.voxel_size
    if source.intensity_window is not None and channels == source.in_channels:  # the intensities they learnt on
        config.extra["intensity_window"] = [list(w) for w in source.intensity_window]
    model = AttentionUNet(config)
    keep_head = source.task == task and source.classes == classes
    state, own = start.state_dict(), model.state_dict()
    first = "encoder.0.0.weight"
    with torch.no_grad():
        for key, value in state.items():
            if key.startswith("head.") and not keep_head:
                continue
            if key == first and channels == 1 and value.shape[1] > 1:
                value = value.sum(dim=1, keepdim=True)  # grey repeated to colour, through one kernel
            if key in own and own[key].shape == value.shape:
                own[key].copy_(value)
        if not keep_head:  # every class equally likely at first, not a random head's guesses on large
            for param in model.head.parameters():  # borrowed features (ISBI EM, 150 steps: membrane
                param.zero_()  # Dice 0.754 -> 0.780; benchmarks/README.md)
    return model.train()


def _one_piece_each(labels: np.ndarray) -> bool:
    """Whether (almost) every id of ``labels`` is one connected piece, as objects are."""
    boxes = ndimage.find_objects(labels.astype(np.int64, copy=False))
    ids = [(i, box) for i, box in enumerate(boxes, start=1) if box is not None]
    whole = sum(int(connected_components(labels[box] == i).max()) == 1 for i, box in ids)
    return whole >= 0.9 * len(ids)


def infer_task(labels: Sequence[np.ndarray], zero_is: str = "background") -> tuple[str, str]:
    """``(task, why)`` from label images. Instances ("412 objects: instances"): values past 255,
    more than :data:`MAX_INFERRED_CLASSES` ids, 8 or more ids each in one piece, or a binary mask
    of many separate pieces. Else semantic ("3 classes found (0, 1, 2): semantic"; for strokes,
    ``zero_is="unlabelled"``, 0 is no class: "2 classes painted (1, 2): semantic")."""
    labels = [np.asarray(lbl) for lbl in labels]
    per_image = [np.unique(lbl) for lbl in labels]
    values = np.unique(np.concatenate(per_image))
    foreground = values[values != 0]
    objects = sum(int(np.count_nonzero(ids)) for ids in per_image)
    if foreground.max(initial=0) > MAX_CLASS_VALUE or len(foreground) > MAX_INFERRED_CLASSES:
        return "instances", f"{objects} objects: instances"
    if len(foreground) >= 8 and all(_one_piece_each(lbl) for lbl in labels):
        return "instances", f"{objects} objects: instances"
    if len(foreground) == 1:  # a binary mask: objects when it falls apart into many pieces
        pieces = sum(int(connected_components(lbl != 0).max()) for lbl in labels)
        if pieces >= 5 * len(labels):
            return "instances", f"a binary mask of {pieces} objects: instances"
    if zero_is == "unlabelled":
        return "semantic", f"{counted(len(foreground), 'class', 'classes')} painted ({_listed(foreground)}): semantic"
    return "semantic", f"{counted(len(values), 'class', 'classes')} found ({_listed(values)}): semantic"


def _listed(values: np.ndarray) -> str:
    return ", ".join(str(v) for v in values.tolist())


def network_shape(shape: Sequence[int], spacing: Sequence[float] | None, voxel: float | None = None) -> tuple[int, ...]:
    """The spatial shape a volume has for a 3D model once resampled to cubic voxels (of ``voxel``
    world units when given: :func:`.resampling.grid_zoom`)."""
    zoom = grid_zoom(spacing, 3, voxel) if len(shape) == 3 else None
    return tuple(shape) if zoom is None else isotropic_shape(shape, zoom)


def default_train_config(
    task: str,
    spatial_dims: int,
    shapes: Sequence[tuple[int, ...]],
    *,
    from_scratch: bool,
    minutes: float | None = None,
    steps: int | None = None,
    depth: int = 4,
    from_volumes: bool = False,
    **settings,
) -> TrainConfig:
    """The settings of ``attention-unet train``: ``shapes`` are the images' spatial shapes as the
    network sees them (:func:`network_shape`); ``settings`` set other :class:`TrainConfig` fields.

    A new model (or a new head) is trained, not fine-tuned: batch norm learns, the learning rate is a
    new model's (1e-3, from the bundled weights too: benchmarks/README.md, "The learning rate of a new
    model from the bundled weights"), the start is no bar to clear, and patience is long (a new 3D instance
    model has none: it keeps its last state, :attr:`TrainConfig.keep_last`). Patches
    are fitted to the images (:func:`patch_3d` in 3D; 2D ones 256 px, less for smaller images), four
    per batch. Semantic models of volumes (3D, or 2D
    on their planes: ``from_volumes``) learn without flips: volumes are mostly anatomy, whose
    classes can depend on the orientation (MR hippocampi, anterior / posterior: in 3D, anterior Dice
    0.00 with flips, 0.51 without, after 60 steps; a 2D model on the planes, 2 minutes: mean Dice
    0.52 with flips, 0.71 without).
    """
    multiple = 2 ** (depth - 1)
    patch = fitted_patch(shapes, 256, multiple) if spatial_dims == 2 else patch_3d(shapes, multiple)
    base = dict(
        flips=not (task == "semantic" and (spatial_dims == 3 or from_volumes)),
        max_steps=steps,
        time_budget=None if minutes is None else 60.0 * minutes,
        patch_size=patch,
        batch_size=4,
        lr=1e-3,  # a new head learns from zero: at fine-tuning's 3e-4, EM strokes gave membrane Dice 0.00 in 150 steps
        warmup_steps=20,
        eval_every=25,
        patience=20,
        freeze_batchnorm=False,
        from_scratch=from_scratch,
        must_beat_start=False,
        keep_within=KEEP_WITHIN_SEMANTIC if task == "semantic" else 0.0,
        keep_share=1.0,  # a new model: all of it (its start is random, or a head of zeros)
        keep_last=task == "instances" and spatial_dims == 3 and from_scratch,  # see TrainConfig.keep_last
    )
    return TrainConfig(**{**base, **settings})


def patch_3d(shapes: Sequence[tuple[int, ...]], multiple: int, voxels: int = PATCH_VOXELS_3D) -> tuple[int, ...]:
    """A 3D training patch: the volumes' extent (:func:`fitted_patch`, at most 64 per axis), shrunk
    by the same factor on every axis to about ``voxels`` voxels, each side a multiple of ``multiple``
    and at least two of them (so the coarsest level keeps two voxels a side)."""
    fitted = fitted_patch(shapes, 64, multiple)
    factor = min(1.0, (voxels / float(np.prod(fitted))) ** (1 / 3))
    return tuple(max(2 * multiple, int(round(n * factor / multiple)) * multiple) for n in fitted)


def patch_as_predicted(
    config: ModelConfig, shapes: Sequence[tuple[int, ...]], spacings: Sequence[Sequence[float] | None]
) -> tuple[int, ...]:
    """The 3D patch to fine-tune a 3D model on volumes of ``shapes`` (ZYX) and voxel ``spacings``:
    :func:`patch_3d` of the volumes as the model predicts them (:func:`network_shape`), as
    ``train`` fits it. The dock and ``attention-unet finetune`` both use it."""
    sized = [network_shape(tuple(s)[-3:], sp, config.voxel_size) for s, sp in zip(shapes, spacings)]
    return patch_3d(sized, config.size_multiple)


def whole_images_held_out(n_images: int, val_fraction: float, fold: int = 0) -> list[int]:
    """The images :func:`split_samples` holds out whole for ``fold`` (none: a strip of each is held out)."""
    if n_images < WHOLE_IMAGE_VALIDATION or not val_fraction:
        return []
    return list(range((4 - fold) % WHOLE_IMAGE_VALIDATION, n_images, WHOLE_IMAGE_VALIDATION))


def split_samples(
    config: ModelConfig,
    train: TrainConfig,
    pairs: Sequence[tuple],
    background_slices: Sequence[Sequence[int] | None] | None = None,
    fold: int = 0,
) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """``(samples, validation)`` for ``attention-unet train``: from :data:`WHOLE_IMAGE_VALIDATION`
    images on, every fifth image is held out whole (a strip of dense labels often sits at the
    image's edge, in the background): images 4, 9, 14, ... for ``fold`` 0, 3, 8, 13, ... for fold 1, and
    so on (the members of :mod:`.folds`); with fewer, a strip of each (``train.val_fraction``).
    ``background_slices``: per pair, slices marked as labelled background (see :mod:`.targets`)."""
    settings = dict(
        in_channels=config.in_channels,
        task=config.task,
        zero_is=train.zero_is,
        spacing=train.spacing,
        voxel=config.voxel_size,
        window=config.intensity_window,
    )
    marks = list(background_slices or [None] * len(pairs))
    held = set(whole_images_held_out(len(pairs), train.val_fraction, fold))
    if not held:
        samples = prepare_samples(pairs, val_fraction=train.val_fraction, background_slices=marks, **settings)
        return samples, [s for s in samples if s.val_target is not None]

    def part(keep: bool) -> list[TrainingSample]:
        chosen = [i for i in range(len(pairs)) if (i in held) != keep]
        return prepare_samples(
            [pairs[i] for i in chosen], background_slices=[marks[i] for i in chosen], held_out=not keep, **settings
        )

    return part(True), part(False)
