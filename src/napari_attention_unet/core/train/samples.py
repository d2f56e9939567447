"""From (image, labels) pairs to training samples, and from samples to augmented batches.

Validation: unless explicit validation pairs are given, the right-most ``val_fraction``
of every image's labelled region (a vertical strip; of the painted region when the
user's edits are known) is held out (:func:`held_out_region`). Its labels are never
trained on: :func:`prepare_sample` moves them from the sample's ``target`` to its
``val_target``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_attention_unet.core.augment import IGNORE, augment
from napari_attention_unet.core.images import network_channels, normalize, to_channel_first
from napari_attention_unet.core.model import ModelConfig
from napari_attention_unet.core.resampling import grid_zoom, isotropic_shape, resample, resample_labels
from napari_attention_unet.core.train.config import TrainConfig
from napari_attention_unet.core.train.holdout import held_out_region
from napari_attention_unet.core.train.targets import (
    check_image,
    check_label_values,
    check_labels_shape,
    check_sizes,
    check_spatial_dims,
    labels_to_target,
)


@dataclass(eq=False)
class TrainingSample:
    """One image ready for sampling: normalised channel-first image and class target.

    Samples compare by identity (``eq=False``): ``s in samples`` asks whether it is one of
    them, and comparing the arrays inside would raise.

    ``target`` holds IGNORE where the loss must skip; ``val_target`` (optional) is
    the target of the held-out region with IGNORE elsewhere.
    """

    image: np.ndarray
    target: np.ndarray
    val_target: np.ndarray | None = None
    weight_map: np.ndarray | None = None
    edited: np.ndarray | None = None  # (n, ndim) coordinates of user-edited pixels
    val_instances: np.ndarray | None = None  # object ids in the held-out region, 0 elsewhere
    # False when the held-out region holds labelled pixels the user did not paint (accepted
    # predictions of the starting model, which it matches by construction).
    val_trusted: bool = True


def prepare_image(
    image: np.ndarray,
    axes: str | None,
    in_channels: int,
    intensity_range: tuple | None = None,
    window: tuple | None = None,
) -> tuple[np.ndarray, str]:
    """Channel-first, normalised float32, exactly as :func:`core.predict.predict` sees it
    (``intensity_range``: as :attr:`~core.predict.PredictOptions.intensity_range`; ``window``: the
    model's :attr:`~.model.ModelConfig.intensity_window`, which wins).

    Grey images keep one channel (repeated to ``in_channels`` per batch, which is
    what predict does too) so that big data sets cost a third of the memory.
    """
    channels_first, spatial = to_channel_first(image, axes)
    return normalize(network_channels(channels_first, in_channels), ranges=intensity_range, window=window), spatial


def prepare_sample(
    image: np.ndarray,
    labels: np.ndarray,
    *,
    axes: str | None = None,
    in_channels: int = 3,
    ignore: np.ndarray | None = None,
    weight_map: np.ndarray | None = None,
    edited: np.ndarray | None = None,
    val_fraction: float = 0.0,
    task: str = "instances",
    zero_is: str = "background",
    spacing: tuple[float, ...] | None = None,
    intensity_range: tuple | None = None,
    voxel: float | None = None,
    background_slices: Sequence[int] | None = None,
    held_out: bool = False,
    window: tuple | None = None,
) -> TrainingSample:
    """Turn an (image, labels) pair into a :class:`TrainingSample`.

    ``labels`` are instance ids or a binary mask (0 = background) for the ``"instances"``
    task, class values for ``"semantic"`` (0 background or, with ``zero_is="unlabelled"``,
    not labelled; see :mod:`.targets`); ``ignore`` marks pixels that must not count;
    ``edited`` marks pixels the user painted (patches are centred near them more often).
    ``val_fraction`` holds out a right-hand strip of the labelled region (of the painted one
    when there are edits); see :func:`held_out_region`. ``spacing`` (Z, Y, X) resamples a
    volume to cubic voxels (labels and masks nearest) as prediction does: of ``voxel`` world units
    when given (a 3D instance model's own size, see :func:`.resampling.grid_zoom`). ``intensity_range``
    normalises with given percentiles (a plane with its stack's), as prediction then does; ``window``
    with the model's fixed window (:attr:`~.model.ModelConfig.intensity_window`) instead.
    ``background_slices`` (``zero_is="slices"``): planes marked as labelled background. ``held_out``:
    the whole sample is for validation only, its objects kept (``val_instances``) so that AP@0.5 is scored.
    """
    check_image(image, axes)
    x, spatial = prepare_image(image, axes, in_channels, intensity_range, window)
    labels = np.asarray(labels)
    check_labels_shape(labels.shape, x.shape[1:])
    zoom = grid_zoom(spacing, 3, voxel) if labels.ndim == 3 else None
    if zoom is not None:
        zoom_source_shape = labels.shape
        shape = isotropic_shape(labels.shape, zoom)
        x, labels = resample(x, shape, antialias=True), resample_labels(labels, shape)
        ignore = None if ignore is None else resample_labels(np.asarray(ignore, np.uint8), shape).astype(bool)
        edited = None if edited is None else resample_labels(np.asarray(edited, np.uint8), shape).astype(bool)
        weight_map = None if weight_map is None else resample(np.asarray(weight_map, np.float32)[None], shape)[0]
        if background_slices:  # the marked planes, on the resampled grid
            marks = np.zeros(zoom_source_shape, np.uint8)
            marks[np.asarray(background_slices, dtype=int)] = 1
            marks = resample_labels(marks, shape).reshape(shape[0], -1).any(axis=1)
            background_slices = np.flatnonzero(marks).tolist()
    target, instances = labels_to_target(labels, task, zero_is, background_slices)
    if ignore is not None:
        target[np.asarray(ignore, dtype=bool)] = IGNORE
    edited_mask = None if edited is None else np.asarray(edited, dtype=bool) & (target != IGNORE)
    val_target = val_instances = None
    region, classes = target != IGNORE, None
    if task == "semantic" and zero_is != "unlabelled" and (target[region] > 0).any():
        # Dense class labels: the strip goes where the classes are. The right-hand margin of a
        # scan is often background alone (MR hippocampi: class Dice 0.002 there while the model
        # reached 0.7 on other volumes), and a strip without the classes cannot choose a state.
        region, classes = region & (target > 0), target
    if task == "semantic" and zero_is == "unlabelled":
        classes = target  # strokes: the painted classes
    # Semantic labels: a strip holding each class in proportion. The right-most strip holding every class
    # held a sliver of one (under 5 % of its voxels in 56 of the 60 MR hippocampi), whose Dice is noise.
    box = held_out_region(region, edited_mask, val_fraction, classes) if val_fraction > 0 else None
    if box is not None:
        val_target = np.full_like(target, IGNORE)
        val_target[box] = target[box]
        if instances is not None:
            val_instances = np.zeros(instances.shape, np.int32)
            val_instances[box] = instances[box]
            val_instances[val_target == IGNORE] = 0
        target[box] = IGNORE  # never trained on
    elif held_out and instances is not None:
        val_instances = np.where(target != IGNORE, instances, 0).astype(np.int32)
    val_trusted = True
    edited_coords = None
    if edited_mask is not None:
        if val_target is not None:
            # Labelled held-out pixels the user did not paint are the model's own accepted output.
            val_trusted = not ((val_target != IGNORE) & ~edited_mask).any()
        edited_mask &= target != IGNORE
        edited_coords = np.argwhere(edited_mask) if edited_mask.any() else None
    weights = None if weight_map is None else np.asarray(weight_map, dtype=np.float32)[np.newaxis]
    return TrainingSample(x, target, val_target, weights, edited_coords, val_instances, val_trusted)


def prepare_samples(
    pairs: Sequence[tuple],
    *,
    in_channels: int,
    ignore_masks: Sequence[np.ndarray | None] | None = None,
    weight_maps: Sequence[np.ndarray | None] | None = None,
    edited_masks: Sequence[np.ndarray | None] | None = None,
    val_fraction: float = 0.0,
    task: str = "instances",
    zero_is: str = "background",
    spacing: tuple[float, ...] | None = None,
    voxel: float | None = None,
    background_slices: Sequence[Sequence[int] | None] | None = None,
    held_out: bool = False,
    window: tuple | None = None,
) -> list[TrainingSample]:
    """:func:`prepare_sample` of every ``(image, labels)``, ``(image, labels, axes)``, ``(image,
    labels, axes, spacing)`` or ``(..., spacing, intensity_range)`` pair (a pair's spacing wins over
    ``spacing``), with the i-th ignore mask, weight map, edit mask and background slices (each list
    may be None: none for any pair); ``held_out``: validation images, held out whole; ``window``: the
    model's fixed intensity window (None: each image's percentiles)."""
    if not pairs:
        raise ValueError("training needs at least one (image, labels) pair")
    n = len(pairs)
    return [
        prepare_sample(
            pair[0],
            pair[1],
            axes=pair[2] if len(pair) > 2 else None,
            in_channels=in_channels,
            ignore=(ignore_masks or [None] * n)[i],
            weight_map=(weight_maps or [None] * n)[i],
            edited=(edited_masks or [None] * n)[i],
            val_fraction=val_fraction,
            task=task,
            zero_is=zero_is,
            spacing=pair[3] if len(pair) > 3 and pair[3] is not None else spacing,
            intensity_range=pair[4] if len(pair) > 4 else None,
            voxel=voxel,
            background_slices=(background_slices or [None] * n)[i],
            held_out=held_out,
            window=window,
        )
        for i, pair in enumerate(pairs)
    ]


def training_samples(
    model: ModelConfig,
    config: TrainConfig,
    pairs: Sequence[tuple] | None,
    *,
    ignore_masks: Sequence[np.ndarray | None] | None = None,
    weight_maps: Sequence[np.ndarray | None] | None = None,
    edited_masks: Sequence[np.ndarray | None] | None = None,
    samples: Sequence[TrainingSample] | None = None,
    validation: Sequence[TrainingSample] | None = None,
    background_slices: Sequence[Sequence[int] | None] | None = None,
) -> tuple[list[TrainingSample], list[TrainingSample]]:
    """``(samples, validation)`` for a model of ``model``'s config: :func:`prepare_samples` of ``pairs``
    (unless ``samples`` are given), the held-out regions (unless ``validation`` samples are
    given), and every check of :mod:`.targets` (dimensions, sizes, semantic class values)."""
    if samples is None:
        samples = prepare_samples(
            pairs,
            in_channels=model.in_channels,
            ignore_masks=ignore_masks,
            weight_maps=weight_maps,
            edited_masks=edited_masks,
            val_fraction=0.0 if validation is not None else config.val_fraction,
            task=model.task,
            zero_is=config.zero_is,
            spacing=config.spacing,
            voxel=model.voxel_size,
            background_slices=background_slices,
            window=model.intensity_window,
        )
    samples = list(samples)
    validation = list(validation) if validation is not None else [s for s in samples if s.val_target is not None]
    if model.spatial_dims == 2:
        samples = [p for s in samples for p in planes_of(s) if (p.target != IGNORE).any()]
        validation = [p for s in validation for p in planes_of(s) if _has_validation(p)]
    check_samples(samples, model.spatial_dims, objects=model.task != "semantic")
    check_sizes([s.target.shape for s in samples], model.depth)
    if model.task == "semantic":
        targets = [s.target for s in samples] + [s.target if s.val_target is None else s.val_target for s in validation]
        check_label_values(targets, model.classes, config.zero_is)
    return samples, validation


def planes_of(sample: TrainingSample) -> list[TrainingSample]:
    """A volume's sample as one sample per Z plane, for a 2D model (a 2D sample as itself).

    The volume was normalised as a whole, as prediction normalises a stack, so the planes keep
    one intensity scale (an empty edge plane is not stretched to the range of a full one)."""
    if sample.target.ndim != 3:
        return [sample]

    def plane(a: np.ndarray | None, z: int, channels: bool = False) -> np.ndarray | None:
        return None if a is None else (a[:, z] if channels else a[z])

    out = []
    for z in range(sample.target.shape[0]):
        edited = None
        if sample.edited is not None:
            edited = sample.edited[sample.edited[:, 0] == z][:, 1:]
            edited = edited if len(edited) else None
        out.append(
            TrainingSample(
                sample.image[:, z],
                sample.target[z],
                plane(sample.val_target, z),
                plane(sample.weight_map, z, channels=True),
                edited,
                plane(sample.val_instances, z),
                sample.val_trusted,
            )
        )
    return out


def _has_validation(sample: TrainingSample) -> bool:
    return ((sample.target if sample.val_target is None else sample.val_target) != IGNORE).any()


def check_samples(samples: Sequence[TrainingSample], spatial_dims: int, objects: bool = False) -> None:
    """Raise ValueError unless every sample has ``spatial_dims`` axes, some pixel is left to train on
    and, for ``objects`` (an instance model), some object is labelled."""
    check_spatial_dims([s.target.shape for s in samples], spatial_dims)
    if not any((s.target != IGNORE).any() for s in samples):
        raise ValueError("every labelled pixel is ignored or held out: nothing to train on")
    if objects and not any(((s.target != IGNORE) & (s.target > 0)).any() for s in samples):
        raise ValueError("the labels hold no objects, only background: label some objects to learn from")


def patch_shape(patch_size: int | Sequence[int], spatial_dims: int, multiple: int) -> tuple[int, ...]:
    """The shape of a training patch: ``patch_size`` (at most 64 in 3D) on every axis, or one size
    per axis as given, rounded up to a ``multiple`` of the network's size step."""
    if not isinstance(patch_size, int):
        if len(patch_size) != spatial_dims:
            raise ValueError(f"patch_size {tuple(patch_size)} does not give one size per axis ({spatial_dims}D model)")
        return tuple(-(-int(size) // multiple) * multiple for size in patch_size)
    size = patch_size if spatial_dims == 2 else min(patch_size, 64)
    return tuple(-(-size // multiple) * multiple for _ in range(spatial_dims))


def fitted_patch(shapes: Sequence[tuple[int, ...]], largest: int, multiple: int) -> tuple[int, ...]:
    """A patch no larger than ``largest`` per axis nor than the largest image along it (rounded up to
    ``multiple``): small volumes train on whole-volume patches, not on mostly padding."""
    return tuple(min(largest, -(-max(s[a] for s in shapes) // multiple) * multiple) for a in range(len(shapes[0])))


def class_points(target: np.ndarray, per_class: int = 4096) -> dict[int, np.ndarray]:
    """Class value -> ``(n, ndim)`` coordinates of up to ``per_class`` of its trained pixels
    (evenly spread over the class's pixels), for every class 1..K the target holds."""
    flat = target.ravel()
    counted = np.flatnonzero((flat > 0) & (flat != IGNORE))
    if not len(counted):
        return {}
    order = counted[np.argsort(flat[counted], kind="stable")]
    values, starts, counts = np.unique(flat[order], return_index=True, return_counts=True)
    points = {}
    for value, start, count in zip(values.tolist(), starts.tolist(), counts.tolist()):
        picks = order[start + np.linspace(0, count - 1, min(count, per_class)).astype(np.int64)]
        points[int(value)] = np.stack(np.unravel_index(picks, target.shape), axis=1)
    return points


def draw_batch(
    samples: Sequence[TrainingSample],
    p: np.ndarray,
    rng: np.random.Generator,
    patch: tuple[int, ...],
    channels: int,
    config: TrainConfig,
    points: Sequence[dict[int, np.ndarray]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random augmented patches (images, targets, loss weights or None); a share of them
    centred on user-edited pixels and, given each sample's :func:`class_points`, a share
    (``config.class_fraction``) on a pixel of a class drawn evenly among the sample's classes.
    Images are repeated to ``channels`` where grey."""
    images, targets, weights = [], [], []
    any_weights = any(s.weight_map is not None for s in samples)
    for _ in range(config.batch_size):
        index = rng.choice(len(samples), p=p)
        sample, centre = samples[index], None
        if sample.edited is not None and rng.random() < config.edited_fraction:
            centre = tuple(sample.edited[rng.integers(len(sample.edited))])
        elif points is not None and points[index] and rng.random() < config.class_fraction:
            classes = sorted(points[index])
            where = points[index][classes[rng.integers(len(classes))]]
            centre = tuple(where[rng.integers(len(where))])
        extra = sample.weight_map if any_weights else None
        if any_weights and extra is None:
            extra = np.ones((1, *sample.target.shape), np.float32)
        out = augment(
            sample.image,
            sample.target,
            rng,
            patch,
            centre,
            config.scale_range,
            extra=extra,
            flips=config.flips,
            stain=config.stain_jitter,
        )
        images.append(np.broadcast_to(out[0], (channels, *patch)))
        targets.append(out[1])
        if any_weights:
            weights.append(out[2][0])
    return np.stack(images), np.stack(targets), np.stack(weights) if any_weights else None
