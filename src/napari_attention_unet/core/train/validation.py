"""Scoring the network on the held-out validation region.

The network is scored there (foreground Dice and IoU, and AP@0.5 of the objects when the
model makes objects; Dice of each class for a semantic model, :func:`semantic_scores`), on a
crop of the image around the labelled validation pixels (:func:`validation_view`), so that an
evaluation costs what the region scored costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from napari_attention_unet.core.augment import IGNORE
from napari_attention_unet.core.instances import BACKGROUND, probabilities_to_instances
from napari_attention_unet.core.metrics import match_counts
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.predict import class_values
from napari_attention_unet.core.train.holdout import bounding_box
from napari_attention_unet.core.train.samples import TrainingSample

#: Pixels of context kept around the labelled validation pixels when they are scored. The
#: network sees the image's own content there rather than padding, so scores match those of
#: the whole image to within the receptive field's far edge, while the time and memory of
#: each evaluation follow the region scored, not the size of the image it sits in.
VALIDATION_MARGIN = 64


def validation_view(
    sample: TrainingSample, margin: int = VALIDATION_MARGIN
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(image, target, instances)`` of a validation sample, cropped to its labelled pixels plus
    ``margin`` pixels of context on every side (less at the image's edges).

    The target is the held-out region's (``val_target``) when there is one, else the whole
    ``target``; ``instances`` is ``val_instances`` (None when the sample has none).
    """
    target = sample.val_target if sample.val_target is not None else sample.target
    instances = sample.val_instances
    valid = target != IGNORE
    if not valid.any():
        return sample.image, target, instances
    box = tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(bounding_box(valid), target.shape)
    )
    return sample.image[(slice(None), *box)], target[box], None if instances is None else instances[box]


def foreground_scores(predicted: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """(Dice, IoU, predicted foreground fraction) on pixels where ``target != IGNORE``.

    Both empty counts as a perfect score: nothing to find, nothing found.
    """
    valid = target != IGNORE
    p = predicted[valid]
    t = target[valid] != BACKGROUND
    inter, p_sum, t_sum = np.count_nonzero(p & t), np.count_nonzero(p), np.count_nonzero(t)
    union = p_sum + t_sum - inter
    dice = 1.0 if p_sum + t_sum == 0 else 2.0 * inter / (p_sum + t_sum)
    iou = 1.0 if union == 0 else inter / union
    return dice, iou, p_sum / max(valid.sum(), 1)


def _instance_counts(probabilities: np.ndarray, target: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """(TP, FP, FN) at IoU 0.5 of the predicted objects inside the labelled (non-IGNORE) region.

    Objects are made from the probabilities cropped to that region, so an object cut by its
    edge is cut alike in the prediction and in the labels.
    """
    valid = target != IGNORE
    if not valid.any():
        return np.zeros(3, np.int64)
    box = bounding_box(valid)
    predicted = probabilities_to_instances(probabilities[(slice(None), *box)])
    inside = valid[box]
    return np.array(match_counts(np.where(inside, instances[box], 0), np.where(inside, predicted, 0)))


def _pad_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``x`` padded at the far end of each spatial axis to a multiple of ``multiple``, and the
    slices that crop the network's output back to the original size."""
    shape = x.shape[2:]
    pads = []
    for n in reversed(shape):
        pads += [0, -(-n // multiple) * multiple - n]
    mode = "reflect" if all(p < n for p, n in zip(pads[1::2], reversed(shape))) else "replicate"
    return F.pad(x, pads, mode=mode), tuple(slice(0, n) for n in shape)


@torch.no_grad()
def predict_probabilities(
    model: AttentionUNet, image: np.ndarray, device: torch.device, amp: torch.dtype | None
) -> np.ndarray:
    """Class probabilities ``(classes, *spatial)`` of an image (one forward pass; the caller
    sets eval mode), under autocast to ``amp`` when it is not None."""
    x = torch.from_numpy(image)[None].to(device)
    x = x.expand(-1, model.config.in_channels, *x.shape[2:])
    x, crop = _pad_multiple(x, model.config.size_multiple)
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        logits, _ = model(x)
    return torch.softmax(logits.float(), dim=1)[0][(slice(None), *crop)].cpu().numpy()


def score_samples(
    samples: Sequence[TrainingSample],
    model: AttentionUNet,
    predict: Callable[[AttentionUNet, np.ndarray], np.ndarray],
    select_by: str,
) -> dict:
    """Foreground ``dice``, ``iou`` and predicted ``fraction`` (means over ``samples``), ``labelled``:
    whether the held-out labels hold any object and, when ``select_by == "instances"``, ``ap``:
    AP@0.5 of the objects, all samples pooled, and ``objects``: how many labelled objects that is.

    ``predict(model, image)`` gives the class probabilities of each :func:`validation_view`;
    the model is in eval mode meanwhile and back in its own mode afterwards.
    """
    was_training = model.training
    model.eval()
    scores, counts, labelled = [], np.zeros(3, np.int64), False
    for sample in samples:
        image, target, instances = validation_view(sample)
        labelled |= bool(((target != IGNORE) & (target != BACKGROUND)).any())
        probabilities = predict(model, image)
        scores.append(foreground_scores(probabilities[BACKGROUND] < 0.5, target))
        if select_by == "instances":
            counts += _instance_counts(probabilities, target, instances)
    model.train(was_training)
    dice, iou, fraction = (float(v) for v in np.mean(scores, axis=0)) if scores else (math.nan,) * 3
    ap = objects = None
    if select_by == "instances":
        ap = 1.0 if counts.sum() == 0 else float(counts[0] / counts.sum())
        objects = int(counts[0] + counts[2])  # matched and missed: the labelled objects held out
    return {"dice": dice, "iou": iou, "fraction": fraction, "ap": ap, "labelled": labelled, "objects": objects}


def semantic_scores(
    samples: Sequence[TrainingSample],
    model: AttentionUNet,
    predict: Callable[[AttentionUNet, np.ndarray], np.ndarray],
) -> dict:
    """Scores of a semantic model on the labelled pixels of each :func:`validation_view`, all samples
    pooled: ``class_dice`` (Dice of each foreground class 1..K by name, for the classes labelled or
    predicted there), ``dice`` and ``iou`` (their means: the selection score; 1.0 when no class is
    in either), ``fraction`` (share of labelled pixels predicted as a class other than 0),
    ``classes_predicted`` and ``classes_labelled`` (how many distinct values each holds), ``ap`` None.
    """
    classes = model.config.classes
    n = len(classes)
    inter, p_sum, t_sum = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    was_training = model.training
    model.eval()
    for sample in samples:
        image, target, _ = validation_view(sample)
        valid = target != IGNORE
        predicted = class_values(predict(model, image), model.config)[valid]
        truth = np.minimum(target[valid], n - 1)  # values past the head are refused before training
        inter += np.bincount(truth[predicted == truth], minlength=n)[:n]
        p_sum += np.bincount(predicted, minlength=n)[:n]
        t_sum += np.bincount(truth, minlength=n)[:n]
    model.train(was_training)
    scored = [c for c in range(1, n) if p_sum[c] + t_sum[c] > 0]
    class_dice = {classes[c]: float(2 * inter[c] / (p_sum[c] + t_sum[c])) for c in scored}
    ious = [inter[c] / (p_sum[c] + t_sum[c] - inter[c]) for c in scored]
    total = max(int(t_sum.sum()), 1)
    return {
        "dice": float(np.mean(list(class_dice.values()))) if scored else 1.0,
        "iou": float(np.mean(ious)) if scored else 1.0,
        "fraction": float(p_sum[1:].sum() / total),
        "ap": None,
        "class_dice": class_dice,
        "classes_predicted": int(np.count_nonzero(p_sum)),
        "classes_labelled": int(np.count_nonzero(t_sum)),
    }
