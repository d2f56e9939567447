"""What the network learns from the user's labels, and the checks of what the user gave.

- Instances (``ModelConfig.task == "instances"``): object ids, or a binary mask split into its
  connected components, become background / interior / boundary (:mod:`core.instances`). 0 is the
  background, or with ``zero_is="slices"`` the background of the slices that hold labels.
- Semantic: the label value is the class, output channel k learns label value k. With
  ``zero_is="background"`` (dense labels, as medical label files are) 0 is class 0, the
  background; with ``zero_is="unlabelled"`` (strokes) 0 is IGNORE: only painted pixels count,
  painted value v still trains channel v, and channel 0 is never a target, so the background
  must be painted as a class of its own. With ``zero_is="slices"`` (a few labelled slices of a
  volume) 0 is the background in the planes along the first axis that hold labels, and the
  planes without any are IGNORE, except those the user marked as background (``background_slices``:
  a slice beyond the structure holds no label, so only a mark can say it was looked at).

Each check raises ``ValueError`` (:class:`ImageShapeError` for shapes) with one line that says
what would work; ``attention-unet train`` prints the same line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from napari_attention_unet.core.augment import IGNORE
from napari_attention_unet.core.images import ImageShapeError
from napari_attention_unet.core.instances import as_instances, instances_to_classes, mask_top

__all__ = [
    "MAX_CLASS_VALUE",
    "check_corrections",
    "check_image",
    "check_label_values",
    "check_labels_shape",
    "check_not_constant",
    "check_sizes",
    "check_spatial_dims",
    "format_slices",
    "labels_to_target",
    "parse_slices",
    "semantic_values",
]

#: The largest class value a semantic label may hold (255 is IGNORE): 255 classes with the background.
MAX_CLASS_VALUE = IGNORE - 1


def check_image(image: np.ndarray, axes: str | None) -> None:
    """Refuse an empty image, a 4D stack whose axes are not given (a time series, most likely) and NaN pixels."""
    image = np.asarray(image)
    if image.size == 0:
        raise ImageShapeError(f"the image is empty (shape {image.shape}): nothing to train on")
    if axes is None and image.ndim == 4 and image.shape[-1] not in (3, 4):
        raise ImageShapeError(
            f"the image is 4D (shape {image.shape}), a time series? Train on one time point (image[t], or "
            "--time-point T on the command line), or give its axes (e.g. CZYX for channels first)"
        )
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        nan, inf = int(np.count_nonzero(np.isnan(image))), int(np.count_nonzero(np.isinf(image)))
        what = " and ".join(f"{n} {kind} pixel(s)" for n, kind in ((nan, "NaN"), (inf, "infinite")) if n)
        raise ValueError(f"the image holds {what}; replace them (e.g. with 0 or the image's minimum) before training")


def axes_beside_labels(image_shape: tuple[int, ...], labels_shape: tuple[int, ...]) -> str | None:
    """The axes of an image whose only axis missing from its labels is a short one (1-4: channels) at
    its start or end, e.g. ``CYX`` for a 2-channel (2, Y, X) image with (Y, X) labels; None otherwise."""
    image_shape, labels_shape = tuple(image_shape), tuple(labels_shape)
    n = len(labels_shape)
    if n not in (2, 3) or len(image_shape) != n + 1:
        return None
    if image_shape[:-1] == labels_shape and image_shape[-1] <= 4:
        return "ZYX"[-n:] + "C"
    if image_shape[1:] == labels_shape and image_shape[0] <= 4:
        return "C" + "ZYX"[-n:]
    return None


def check_labels_shape(labels_shape: tuple[int, ...], spatial_shape: tuple[int, ...]) -> None:
    """Refuse labels whose shape is not the image's spatial shape."""
    if tuple(labels_shape) != tuple(spatial_shape):
        raise ImageShapeError(
            f"labels of shape {tuple(labels_shape)} do not match the image's spatial shape {tuple(spatial_shape)}"
        )


def semantic_values(labels: np.ndarray) -> np.ndarray:
    """``labels`` as whole class values 0..MAX_CLASS_VALUE (uint8), or a ValueError saying why not."""
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.number) or np.issubdtype(labels.dtype, np.complexfloating):
        raise ValueError(f"labels of dtype {labels.dtype} are not class values: use integer labels")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise ValueError("semantic labels must be whole class values 0..254; these hold fractions or NaN")
    low, high = labels.min(initial=0), labels.max(initial=0)
    if low < 0:
        raise ValueError(f"semantic labels are class values 0..{MAX_CLASS_VALUE}; these hold {low}")
    if high > MAX_CLASS_VALUE:
        raise ValueError(
            f"semantic labels hold at most {MAX_CLASS_VALUE + 1} classes (values 0..{MAX_CLASS_VALUE}); these hold "
            f"values up to {high}. Object ids? Train them as instances (task 'instances', --task instances)"
        )
    return labels.astype(np.uint8)


def labels_to_target(
    labels: np.ndarray, task: str, zero_is: str = "background", background_slices: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(target, instances)``: uint8 classes (IGNORE where the loss skips) and, for the
    instance task, the object ids the target was made from (None for semantic labels).
    ``background_slices`` (``zero_is="slices"``): planes along the first axis that count as
    labelled even without a label, so that their 0s are background."""
    labels = np.asarray(labels)
    if task == "instances":
        instances = as_instances(labels)
        target = instances_to_classes(instances)
        if zero_is == "slices" and labels.ndim == 3:
            target = _sliced_instance_target(instances, target, unlabelled_slices(labels, background_slices or ()))
        return target, instances
    target = semantic_values(labels)
    if zero_is == "unlabelled":
        target[target == 0] = IGNORE
    elif zero_is == "slices":
        target[unlabelled_slices(target, background_slices or ())] = IGNORE
    return target, None


def _sliced_instance_target(instances: np.ndarray, target: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Objects outlined in a few slices of a volume: the unlabelled slices (``empty``) are IGNORE, and a
    labelled slice next to one takes its objects' outlines in the plane. In 3D each voxel of a lone
    labelled slice would be a boundary: its neighbours above and below are not labelled, not background."""
    before, after = np.r_[False, empty[:-1]], np.r_[empty[1:], False]
    for z in np.flatnonzero(~empty & (before | after)):
        target[z] = instances_to_classes(instances[z])
    target[empty] = IGNORE
    return target


def parse_slices(text: str, n_slices: int | None = None) -> list[int]:
    """Slice numbers from text such as ``"0-4, 31-35"`` (0-based, ranges inclusive; ``""`` or ``"-"``:
    none), sorted and unique; ``ValueError`` (one line) for bad text or a slice past ``n_slices``."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if part in ("", "-"):
            continue
        low, sep, high = part.partition("-")
        try:
            first, last = int(low), int(high) if sep else int(low)
        except ValueError:
            raise ValueError(f"slices are numbers and ranges such as 0-4,31-35, not {part!r}") from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a range of slices (0-based, low-high, e.g. 0-4)")
        if n_slices is not None and last >= n_slices:
            raise ValueError(f"slice {last} is past the volume's last slice ({n_slices - 1})")
        out.update(range(first, last + 1))
    return sorted(out)


def format_slices(slices: Sequence[int]) -> str:
    """``[0, 1, 2, 4]`` as ``"0-2, 4"`` (what :func:`parse_slices` reads back)."""
    runs: list[list[int]] = []
    for z in sorted(set(int(v) for v in slices)):
        if runs and z == runs[-1][1] + 1:
            runs[-1][1] = z
        else:
            runs.append([z, z])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def slices_between(empty: np.ndarray) -> int:
    """How many empty slices (``empty``, from :func:`unlabelled_slices`) lie between labelled ones:
    dense labels of one structure have none, a few labelled slices have many."""
    labelled = np.flatnonzero(~np.asarray(empty))
    return 0 if len(labelled) < 2 else int(np.asarray(empty)[labelled[0] : labelled[-1]].sum())


def unlabelled_slices(labels: np.ndarray, marked: Sequence[int] = ()) -> np.ndarray:
    """The planes along the first axis that hold no label (all 0) and are not ``marked`` as background,
    as a mask of ``labels``' first axis (a 2D image is one plane: the whole image when it holds none)."""
    if labels.ndim < 3:
        return np.full(labels.shape, not np.asarray(labels).any())
    empty = ~np.asarray(labels).reshape(labels.shape[0], -1).any(axis=1)
    empty[np.asarray(marked, dtype=int)] = False
    return empty


def check_not_constant(labels: Sequence[np.ndarray], zero_is: str = "background") -> None:
    """Refuse labels that hold one value only (over all pairs): there is nothing to tell apart."""
    values: set = set()
    for lbl in labels:
        values.update(np.unique(np.asarray(lbl)).tolist())
        if len(values) > 2:
            return
    if zero_is == "unlabelled":
        values.discard(0)
        if not values:
            raise ValueError("nothing is painted: with zero_is='unlabelled' only values other than 0 count")
    if len(values) == 1:
        only = values.pop()
        what = "paint at least two classes, the background as one of its own (e.g. 1)"
        if zero_is != "unlabelled":
            what = "label at least two classes (e.g. background 0 and objects 1)"
        raise ValueError(f"the labels hold one value only ({only}): nothing to tell apart; {what}")


def check_not_negative(labels: Sequence[np.ndarray]) -> None:
    """Refuse negative label values: 0 is background (or not labelled), objects and classes are 1 and up.
    (Labels of -1 on 0 were read as a binary mask of objects, then refused as "no objects".)"""
    for lbl in labels:
        array = np.asarray(lbl)
        if array.dtype.kind in "if" and array.size and (low := array.min()) < 0:
            raise ValueError(
                f"the labels hold negative values ({low:g}): label values are 0 for the background (or not "
                "labelled) and 1, 2, ... for objects or classes"
            )


def mask_value(labels: Sequence[np.ndarray]) -> float | None:
    """The value of a mask saved as 0 and one other value than 1 (0/255 from Fiji or ImageJ), the
    same in every label image; None for anything else. Train and fine-tune take it as 1: as ids,
    255 was one object (touching nuclei never split), and as a class, 255 classes with 254 empty."""
    value = None
    for lbl in labels:
        array = np.asarray(lbl)
        if not array.any():
            continue
        top = mask_top(array)
        if top is None or (value is not None and top != value):
            return None
        value = top
    return None if value is None or value == 1 else float(value)


def check_label_values(targets: Sequence[np.ndarray], classes: Sequence[str], zero_is: str = "background") -> None:
    """For a semantic model: refuse class values it has no output for, and labels of one class only."""
    present: set[int] = set()
    for target in targets:
        present.update(int(v) for v in np.unique(target) if v != IGNORE)
    if not present:
        return  # nothing labelled at all: check_samples says so
    check_not_constant([np.array(sorted(present), np.uint8)], zero_is)
    high = max(present)
    if high >= len(classes):
        raise ValueError(
            f"the labels hold class value {high} but the model has {len(classes)} outputs (class values "
            f"0..{len(classes) - 1}: {', '.join(classes)}); make a model with {high + 1} classes"
        )


def check_spatial_dims(shapes: Sequence[tuple[int, ...]], spatial_dims: int) -> None:
    """Refuse images whose number of spatial axes differs from the model's, saying what to do."""
    for i, shape in enumerate(shapes, start=1):
        if len(shape) == spatial_dims:
            continue
        if spatial_dims == 3:
            raise ImageShapeError(
                f"a 3D model trains on volumes (ZYX), but image {i} is 2D ({'x'.join(map(str, shape))}): "
                "train a 2D model (--dims 2) or give volumes"
            )
        raise ImageShapeError(
            f"a 2D model trains on 2D images, but image {i} is {len(shape)}D ({'x'.join(map(str, shape))}): "
            "train a 3D model (--dims 3), or split stacks into planes first"
        )


def check_sizes(shapes: Sequence[tuple[int, ...]], depth: int) -> None:
    """Refuse images smaller than the network's coarsest grid (``2**(depth-1)`` px on an axis)."""
    need = 2 ** (depth - 1)
    for i, shape in enumerate(shapes, start=1):
        if min(shape) >= need:
            continue
        fits = max(2, int(math.log2(max(min(shape), 2))) + 1)
        raise ImageShapeError(
            f"image {i} is {'x'.join(map(str, shape))} px, too small for this network: depth {depth} halves it "
            f"{depth - 1} times and needs at least {need} px on every axis. Use images of at least {need} px "
            f"per axis, or a new network of depth {fits} (works from {2 ** (fits - 1)} px; "
            f"on the command line: `attention-unet train ... --start scratch --depth {fits}`)"
        )


def check_corrections(labels: np.ndarray, ignore: np.ndarray | None, dims: int = 2) -> None:
    """Refuse labels a fine-tune cannot learn from: one object covering every pixel trained on, or,
    on the whole image, no object at all (erasing false objects in painted pixels only is fine); for a
    3D model (``dims``) on the whole volume, labels in a few slices only (fine-tuning takes 0 as background in
    every slice, so the empty ones would teach "nothing here": a new user's 2 minutes, refused at the end)."""
    check_not_negative([labels])
    region = np.asarray(labels) if ignore is None else np.asarray(labels)[~np.asarray(ignore, bool)]
    if region.size == 0:
        return
    if dims == 3 and ignore is None and np.ndim(labels) == 3 and len(labels) > 1:
        empty = unlabelled_slices(np.asarray(labels))
        if slices_between(empty) or (~empty).sum() == 1:
            raise ValueError(
                f"the labels fill {int((~empty).sum())} of the volume's {len(empty)} slices: fine-tuning takes 0 as "
                "background in every slice, so the empty ones would teach 'nothing here'. Label the slices in "
                "between (or correct a whole prediction), fine-tune on only what you edited, or train a new model "
                "with 0 as 'background in labelled slices' (train --zero-is slices) for longer"
            )
    low, high = region.min(), region.max()
    if low == high and ignore is not None and high != 0:  # only what was painted: one object, no background
        raise ValueError(
            f"the pixels you painted are all one object ({high}), and only they count: fine-tuning learns objects "
            "against background, so also erase some wrong objects (or paint label 0 next to the object), or "
            "train on the whole image"
        )
    if low == high and ignore is None:
        what = "no objects (every pixel is 0)" if high == 0 else f"one value only ({high}) on every pixel"
        raise ValueError(
            f"the labels hold {what}: fine-tuning learns objects against background, so paint (or correct) "
            "some objects and leave the background at 0"
        )
