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
from napari_attention_unet.core.images import match_channels, normalize, to_channel_first
from napari_attention_unet.core.instances import as_instances, instances_to_classes
from napari_attention_unet.core.train.config import TrainConfig


@dataclass
class TrainingSample:
    """One image ready for sampling: normalised channel-first image and class target.

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


def prepare_image(image: np.ndarray, axes: str | None, in_channels: int) -> tuple[np.ndarray, str]:
    """Channel-first, normalised float32, exactly as :func:`core.predict.predict` sees it.

    Grey images keep one channel (repeated to ``in_channels`` per batch, which is
    what predict does too) so that big data sets cost a third of the memory.
    """
    channels_first, spatial = to_channel_first(image, axes)
    if channels_first.shape[0] == 1:
        return normalize(channels_first), spatial
    return normalize(match_channels(channels_first, in_channels)), spatial


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
) -> TrainingSample:
    """Turn an (image, labels) pair into a :class:`TrainingSample`.

    ``labels`` are instance ids or a binary mask (0 = background); ``ignore`` marks
    pixels that must not count; ``edited`` marks pixels the user painted (patches
    are centred near them more often). ``val_fraction`` holds out a right-hand strip
    of the labelled region (of the painted one when there are edits); see
    :func:`held_out_region`.
    """
    x, spatial = prepare_image(image, axes, in_channels)
    labels = np.asarray(labels)
    if labels.shape != x.shape[1:]:
        raise ValueError(f"labels of shape {labels.shape} do not match the image's spatial shape {x.shape[1:]}")
    instances = as_instances(labels)
    target = instances_to_classes(instances)
    if ignore is not None:
        target[np.asarray(ignore, dtype=bool)] = IGNORE
    edited_mask = None if edited is None else np.asarray(edited, dtype=bool) & (target != IGNORE)
    val_target = val_instances = None
    box = held_out_region(target != IGNORE, edited_mask, val_fraction) if val_fraction > 0 else None
    if box is not None:
        val_target = np.full_like(target, IGNORE)
        val_target[box] = target[box]
        val_instances = np.zeros(instances.shape, np.int32)
        val_instances[box] = instances[box]
        val_instances[val_target == IGNORE] = 0
        target[box] = IGNORE  # never trained on
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
) -> list[TrainingSample]:
    """:func:`prepare_sample` of every ``(image, labels)`` or ``(image, labels, axes)`` pair, with
    the i-th ignore mask, weight map and edit mask (each list may be None: none for any pair)."""
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
        )
        for i, pair in enumerate(pairs)
    ]


def check_samples(samples: Sequence[TrainingSample], spatial_dims: int) -> None:
    """Raise ValueError unless every sample has ``spatial_dims`` axes and some pixel is left to train on."""
    if any(s.target.ndim != spatial_dims for s in samples):
        raise ValueError(f"a {spatial_dims}D model trains on {spatial_dims}D images; split stacks into planes first")
    if not any((s.target != IGNORE).any() for s in samples):
        raise ValueError("every labelled pixel is ignored or held out: nothing to train on")


def patch_shape(patch_size: int, spatial_dims: int, multiple: int) -> tuple[int, ...]:
    """The shape of a training patch: ``patch_size`` (at most 64 in 3D) on every axis, rounded
    up to a ``multiple`` of the network's size step."""
    size = patch_size if spatial_dims == 2 else min(patch_size, 64)
    return tuple(-(-size // multiple) * multiple for _ in range(spatial_dims))


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) holding every True pixel of a non-empty ``mask``."""
    return tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(mask))


def held_out_region(labelled: np.ndarray, edited: np.ndarray | None, fraction: float) -> tuple[slice, ...] | None:
    """The held-out validation box: the right-most ``fraction`` of the columns of the
    bounding box of the labelled pixels, or of the painted ones when there are any.

    Without an ignore mask or edits that is the right-hand strip of the whole image. When
    the user trains on part of an image (only what they painted, or inside a shape), or
    corrected one corner of it, the strip lies where their labels are, not in a part of
    the image that holds no labels or only the model's own prediction.
    """
    region = labelled if edited is None or not edited.any() else edited
    if not region.any():
        return None  # nothing labelled here: nothing to hold out (the trainer checks the whole set)
    box = list(_bounding_box(region))
    columns = box[-1]
    width = columns.stop - columns.start
    n_val = max(1, int(round(width * fraction)))
    if width - n_val < 1:
        raise ValueError(
            f"the labelled region is too narrow ({width} px) to hold out {fraction:.0%} of it for validation"
        )
    box[-1] = slice(columns.stop - n_val, columns.stop)
    return tuple(box)


def draw_batch(
    samples: Sequence[TrainingSample],
    p: np.ndarray,
    rng: np.random.Generator,
    patch: tuple[int, ...],
    channels: int,
    config: TrainConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Random augmented patches (images, targets, loss weights or None); a share of them
    centred on user-edited pixels. Images are repeated to ``channels`` where grey."""
    images, targets, weights = [], [], []
    any_weights = any(s.weight_map is not None for s in samples)
    for _ in range(config.batch_size):
        sample = samples[rng.choice(len(samples), p=p)]
        centre = None
        if sample.edited is not None and rng.random() < config.edited_fraction:
            centre = tuple(sample.edited[rng.integers(len(sample.edited))])
        extra = sample.weight_map if any_weights else None
        if any_weights and extra is None:
            extra = np.ones((1, *sample.target.shape), np.float32)
        out = augment(sample.image, sample.target, rng, patch, centre, config.scale_range, extra=extra)
        images.append(np.broadcast_to(out[0], (channels, *patch)))
        targets.append(out[1])
        if any_weights:
            weights.append(out[2][0])
    return np.stack(images), np.stack(targets), np.stack(weights) if any_weights else None
