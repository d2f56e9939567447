"""Training and fine-tuning as a generator.

``train(model, pairs, config=TrainConfig())`` yields a :class:`StepReport` every few
steps and returns a :class:`TrainResult`. The loop is one flat sequence in
:meth:`Trainer.run` (lr -> forward/backward -> clip -> step -> evaluate/keep best ->
report), in the shape of nanoGPT's ``train.py``.

Cancelling is closing the generator (``gen.close()``, or ``worker.quit()`` in napari).
The :class:`Trainer` object survives that: ``trainer.result()`` afterwards gives the
best model seen so far, checked like a finished run. The model passed in is never
modified; a result that fails the sanity check hands it back unchanged.

Validation: unless explicit validation pairs are given, the right-most
``val_fraction`` of every image's labelled region (a vertical strip; of the painted
region when the user's edits are known) is held out. Its labels are never trained
on; the network is scored there (foreground Dice and IoU, and AP@0.5 of the
objects when the model makes objects). The starting model is scored there first:
unless the strip holds labelled pixels the user did not paint (the model's own
accepted prediction, which it matches by construction), a trained state is kept
only when it beats it, so fine-tuning never hands back a model that does worse on
the user's own held-out annotation.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from napari_attention_unet.core.augment import IGNORE, augment
from napari_attention_unet.core.device import autocast_dtype, pick_device
from napari_attention_unet.core.images import match_channels, normalize, to_channel_first
from napari_attention_unet.core.instances import (
    BACKGROUND,
    as_instances,
    instances_to_classes,
    probabilities_to_instances,
)
from napari_attention_unet.core.metrics import match_counts
from napari_attention_unet.core.model import AttentionUNet

#: Output classes for which objects (and so an instance score) can be made.
INSTANCE_CLASSES = ("background", "interior", "boundary")

__all__ = [
    "StepReport",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingSample",
    "draw_batch",
    "foreground_scores",
    "held_out_region",
    "load_optimizer_code",
    "prepare_sample",
    "segmentation_loss",
    "train",
    "validation_view",
]


@dataclass
class TrainConfig:
    """Settings for one training run; defaults suit fine-tuning on a few images.

    Stops at ``max_steps`` or after ``time_budget`` seconds, whichever comes first
    (either may be None, not both), or after ``patience`` evaluations without a
    better validation Dice. ``freeze_batchnorm=None`` means "on when fine-tuning":
    batches of a few patches give noisy statistics that would wreck the ones learnt
    from a large data set.
    """

    max_steps: int | None = 300
    time_budget: float | None = None
    patch_size: int = 256
    batch_size: int = 4
    # 3e-4: on 3 H&E images the bundled model's Dice rises at 3e-4 and falls at 1e-3, and the
    # ISBI EM fine-tune still passes 0.90 in 4 CPU minutes (benchmarks/README.md, bench_finetune)
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    min_lr_fraction: float = 0.05
    grad_clip: float = 1.0
    dice_weight: float = 1.0
    val_fraction: float = 0.2
    eval_every: int = 25
    patience: int = 6
    edited_fraction: float = 0.5
    scale_range: tuple[float, float] = (0.8, 1.25)
    freeze_batchnorm: bool | None = None
    from_scratch: bool = False
    report_every: int = 1
    precision: str = "auto"
    seed: int = 0
    # Which validation score picks the best state: "instances" (AP@0.5 of the objects on the
    # held-out strip, ties broken by foreground Dice), "foreground" (Dice), or "auto": instances
    # when the model has background/interior/boundary classes and the strip has labels.
    select_by: str = "auto"
    # Keep the starting model unless a trained state beats it on the held-out strip. None: yes
    # when every labelled pixel of the strip is the user's (no record of edits: a full
    # annotation; or only painted pixels are trained on); no when the strip also holds
    # unpainted pixels, the model's own accepted prediction, which the starting model
    # matches by construction.
    must_beat_start: bool | None = None

    def __post_init__(self) -> None:
        if self.max_steps is None and self.time_budget is None:
            raise ValueError("give max_steps or time_budget (or both), so that training ends")


@dataclass(frozen=True)
class StepReport:
    """Progress after ``step`` optimiser steps. ``val_dice`` is None between evaluations."""

    step: int
    total_steps: int | None
    elapsed: float
    eta: float | None
    loss: float
    val_dice: float | None
    best_val_dice: float | None
    lr: float
    message: str = ""
    val_ap: float | None = None
    best_val_ap: float | None = None


@dataclass
class TrainResult:
    """What a run produced.

    ``model`` is the model to use from now on: the best trained one when
    ``accepted``, else the original model, untouched. ``trained_model`` is the best
    trained model either way (for inspection). ``stopped`` says why the loop ended.
    """

    model: AttentionUNet
    trained_model: AttentionUNet
    accepted: bool
    message: str
    steps: int
    best_step: int
    best_val_dice: float | None
    best_val_iou: float | None
    stopped: str
    history: list[StepReport] = field(default_factory=list, repr=False)
    best_val_ap: float | None = None
    start_scores: dict | None = None  # the starting model's validation scores


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


def load_optimizer_code() -> None:
    """Make torch load the code its optimisers import on first use.

    The first ``torch.optim.AdamW(...)`` of a process imports ``torch._dynamo`` (1.6 s on a
    2-core CPU). Import work holds the GIL, so when that first optimiser is built in a napari
    worker the viewer freezes for about a second just after Fine-tune is pressed. The widget
    calls this while its panel is built, where a second belongs to opening the plugin.
    """
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)


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


def _bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box (one slice per axis) holding every True pixel of a non-empty ``mask``."""
    return tuple(slice(int(idx.min()), int(idx.max()) + 1) for idx in np.nonzero(mask))


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
        slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(_bounding_box(valid), target.shape)
    )
    return sample.image[(slice(None), *box)], target[box], None if instances is None else instances[box]


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


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    dice_weight: float = 1.0,
    weight_map: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy over the classes plus soft Dice on foreground (1 - p_background).

    Pixels whose target is IGNORE count in neither term. Cross-entropy learns the
    three-class layout (interior vs boundary splits touching nuclei); Dice keeps
    small foreground fractions from being drowned by background.
    """
    logits = logits.float()
    valid = target != IGNORE
    safe_target = torch.where(valid, target, torch.zeros_like(target)).long()
    ce = F.cross_entropy(logits, safe_target, reduction="none")
    pixel_weight = valid.float() if weight_map is None else valid.float() * weight_map
    ce = (ce * pixel_weight).sum() / valid.sum().clamp(min=1)
    if dice_weight == 0:
        return ce
    p_fg = 1.0 - torch.softmax(logits, dim=1)[:, BACKGROUND]
    t_fg = ((safe_target != BACKGROUND) & valid).float()
    p_fg = p_fg * valid
    dice = 1.0 - (2.0 * (p_fg * t_fg).sum() + 1.0) / (p_fg.sum() + t_fg.sum() + 1.0)
    return ce + dice_weight * dice


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
    box = _bounding_box(valid)
    predicted = probabilities_to_instances(probabilities[(slice(None), *box)])
    inside = valid[box]
    return np.array(match_counts(np.where(inside, instances[box], 0), np.where(inside, predicted, 0)))


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


def _pad_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[slice, ...]]:
    shape = x.shape[2:]
    pads = []
    for n in reversed(shape):
        pads += [0, -(-n // multiple) * multiple - n]
    mode = "reflect" if all(p < n for p, n in zip(pads[1::2], reversed(shape))) else "replicate"
    return F.pad(x, pads, mode=mode), tuple(slice(0, n) for n in shape)


class Trainer:
    """Holds a run's state so that it outlives the generator.

    ``trainer.run()`` is the training generator; ``trainer.result()`` (any time,
    also after cancelling) returns the best model so far as a :class:`TrainResult`.
    ``checkpoint()`` / ``load_checkpoint()`` let long runs span several sessions.
    """

    def __init__(
        self,
        model: AttentionUNet,
        pairs: Sequence[tuple] | None = None,
        *,
        config: TrainConfig | None = None,
        device: str | torch.device = "auto",
        ignore_masks: Sequence[np.ndarray | None] | None = None,
        weight_maps: Sequence[np.ndarray | None] | None = None,
        edited_masks: Sequence[np.ndarray | None] | None = None,
        samples: Sequence[TrainingSample] | None = None,
        validation: Sequence[TrainingSample] | None = None,
        sample_weights: Sequence[float] | None = None,
    ) -> None:
        self.config = config = config or TrainConfig()
        if model.config.out_channels != len(INSTANCE_CLASSES):
            raise ValueError(
                "training learns the three classes background / interior / boundary from the labels; "
                f"this model has {len(model.config.classes)} ({', '.join(model.config.classes)})"
            )
        self.original_model = model
        self.device = pick_device(device)
        self.model = copy.deepcopy(model).to(self.device)
        self.channels_last = model.config.spatial_dims == 2
        if self.channels_last:
            # NHWC convolutions are ~25 % faster on the CPU (and on tensor cores).
            self.model = self.model.to(memory_format=torch.channels_last)
        in_channels = model.config.in_channels
        if samples is None:
            if not pairs:
                raise ValueError("training needs at least one (image, labels) pair")
            n = len(pairs)
            val_fraction = 0.0 if validation is not None else config.val_fraction
            samples = [
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
        self.samples = list(samples)
        self.validation = (
            list(validation) if validation is not None else [s for s in self.samples if s.val_target is not None]
        )
        spatial_dims = model.config.spatial_dims
        if any(s.target.ndim != spatial_dims for s in self.samples):
            raise ValueError(
                f"a {spatial_dims}D model trains on {spatial_dims}D images; split stacks into planes first"
            )
        if not any((s.target != IGNORE).any() for s in self.samples):
            raise ValueError("every labelled pixel is ignored or held out: nothing to train on")
        self.select_by = self._resolve_selection(config.select_by, model)
        self.must_beat_start = (
            config.must_beat_start
            if config.must_beat_start is not None
            else all(s.val_trusted for s in self.validation)
        )
        weights = np.asarray(sample_weights if sample_weights is not None else [1.0] * len(self.samples), float)
        self.sample_p = weights / weights.sum()
        multiple = model.config.size_multiple
        size = config.patch_size if spatial_dims == 2 else min(config.patch_size, 64)
        self.patch = tuple(-(-size // multiple) * multiple for _ in range(spatial_dims))

        self.freeze_bn = (not config.from_scratch) if config.freeze_batchnorm is None else config.freeze_batchnorm
        decay, no_decay = [], []
        for p in self.model.parameters():
            # Weight decay on conv kernels only: decaying norm scales and biases just fights the data.
            (decay if p.ndim > 1 else no_decay).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr,
        )
        self.amp = autocast_dtype(self.device, config.precision) if self.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        self.elapsed = 0.0
        self.best_state: dict | None = None
        self.best_step = 0
        self.best_dice: float | None = None
        self.best_iou: float | None = None
        self.best_ap: float | None = None
        self.start_scores: dict | None = None
        self.last_eval_step = -1
        self.evals_since_best = 0
        self.history: list[StepReport] = []
        self._run_start = (0, 0.0)  # (step, elapsed) when run() last started
        self.stopped = "not started"

    # -- the loop -----------------------------------------------------------------

    def run(self) -> Generator[StepReport, None, TrainResult]:
        """Train; yields :class:`StepReport`, returns :meth:`result`. Closing it cancels."""
        cfg = self.config
        t0 = time.perf_counter() - self.elapsed
        # The pace for the ETA is this run's own: a resumed trainer starts at a later step.
        self._run_start = (self.step, self.elapsed)
        self.stopped = "cancelled"  # stays so unless the loop ends by itself
        if self.step == 0 and self.validation and self.start_scores is None:
            self._score_start()
        try:
            while not self._budget_spent():
                lr = self._lr()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr

                self._set_train_mode()
                images, targets, weight_map = self._batch()
                # Grad mode is per thread: the caller's may have it off (e.g. inside torch.no_grad()).
                with torch.enable_grad():
                    with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                        logits, _ = self.model(images)
                    loss = segmentation_loss(logits, targets, dice_weight=cfg.dice_weight, weight_map=weight_map)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                # Clip after unscaling: one bad patch (e.g. a mislabelled blob) must not blow up the weights.
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                self.elapsed = time.perf_counter() - t0
                last_loss = float(loss.detach())
                if not math.isfinite(last_loss):
                    self.stopped = "diverged"
                    yield self._report(last_loss, None, lr, "loss is not finite; stopping")
                    break

                # Score every eval_every steps and at the very end, so the last state can win too.
                scores = None
                if self.validation and (self.step % cfg.eval_every == 0 or self._budget_spent()):
                    scores = self._evaluate_and_keep_best()
                    if self.evals_since_best >= cfg.patience:
                        self.stopped = "early stop"
                if scores is not None:
                    yield self._report(last_loss, scores["dice"], lr, val_ap=scores["ap"])
                elif self.step % cfg.report_every == 0:
                    yield self._report(last_loss, None, lr)
                if self.stopped == "early stop":
                    break
            else:
                self.stopped = "budget"
        finally:
            self.elapsed = time.perf_counter() - t0
        return self.result()

    # -- pieces of the loop ----------------------------------------------------------

    def _lr(self) -> float:
        """Linear warm-up, then cosine decay over the run's progress (steps or time)."""
        cfg = self.config
        if self.step < cfg.warmup_steps:
            return cfg.lr * (self.step + 1) / cfg.warmup_steps
        progress = self._progress()
        floor = cfg.lr * cfg.min_lr_fraction
        return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    def _progress(self) -> float:
        cfg = self.config
        parts = []
        if cfg.max_steps:
            parts.append((self.step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1))
        if cfg.time_budget:
            parts.append(self.elapsed / cfg.time_budget)
        return max(parts)

    def _budget_spent(self) -> bool:
        cfg = self.config
        return (cfg.max_steps is not None and self.step >= cfg.max_steps) or (
            cfg.time_budget is not None and self.elapsed >= cfg.time_budget
        )

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _host_batch(self) -> tuple:
        """(images, targets, weights or None) on the host: :func:`draw_batch` with this trainer's RNG."""
        return draw_batch(self.samples, self.sample_p, self.rng, self.patch, self.model.config.in_channels, self.config)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The next batch on the device (channels-last images for 2D)."""
        images, targets, weights = self._host_batch()
        x = torch.as_tensor(images).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(targets).to(self.device, non_blocking=True)
        w = None if weights is None else torch.as_tensor(weights).to(self.device)
        return x, y, w

    def _resolve_selection(self, choice: str, model: AttentionUNet) -> str:
        if choice not in ("auto", "instances", "foreground"):
            raise ValueError(f"select_by must be auto, instances or foreground, not {choice!r}")
        possible = (
            tuple(model.config.classes[:3]) == INSTANCE_CLASSES
            and bool(self.validation)
            and all(s.val_instances is not None for s in self.validation)
        )
        if choice == "instances" and not possible:
            raise ValueError(
                "select_by='instances' needs a model with background/interior/boundary classes "
                "and a held-out strip of the training labels (val_fraction > 0)"
            )
        return "instances" if possible and choice != "foreground" else "foreground"

    @torch.no_grad()
    def _predict_probabilities(self, model: AttentionUNet, image: np.ndarray) -> np.ndarray:
        """Class probabilities ``(classes, *spatial)`` of an image (one forward pass, eval mode)."""
        x = torch.from_numpy(image)[None].to(self.device)
        x = x.expand(-1, model.config.in_channels, *x.shape[2:])
        x, crop = _pad_multiple(x, model.config.size_multiple)
        with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
            logits, _ = model(x)
        return torch.softmax(logits.float(), dim=1)[0][(slice(None), *crop)].cpu().numpy()

    def validation_scores(self, model: AttentionUNet | None = None) -> dict:
        """Foreground ``dice``, ``iou`` and predicted ``fraction`` (means over the validation
        images) and, when selecting by instances, ``ap``: AP@0.5 of the objects, all images pooled."""
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        scores, counts = [], np.zeros(3, np.int64)
        for sample in self.validation:
            image, target, instances = validation_view(sample)
            probabilities = self._predict_probabilities(model, image)
            scores.append(foreground_scores(probabilities[BACKGROUND] < 0.5, target))
            if self.select_by == "instances":
                counts += _instance_counts(probabilities, target, instances)
        model.train(was_training)
        dice, iou, fraction = (float(v) for v in np.mean(scores, axis=0)) if scores else (math.nan,) * 3
        ap = None
        if self.select_by == "instances":
            ap = 1.0 if counts.sum() == 0 else float(counts[0] / counts.sum())
        return {"dice": dice, "iou": iou, "fraction": fraction, "ap": ap}

    def validate(self, model: AttentionUNet | None = None) -> tuple[float, float, float]:
        """Mean (Dice, IoU, predicted foreground fraction) over the validation images."""
        scores = self.validation_scores(model)
        return scores["dice"], scores["iou"], scores["fraction"]

    def _score_start(self) -> None:
        """Score the starting model; with ``must_beat_start`` a trained state must beat it to be kept."""
        scores = self.validation_scores()
        self.start_scores, self.last_eval_step = scores, 0
        if self.must_beat_start:
            self.best_dice, self.best_iou, self.best_ap = scores["dice"], scores["iou"], scores["ap"]
            self.best_step, self.best_state = 0, None

    def _beats_best(self, scores: dict) -> bool:
        if self.best_dice is None:
            return True
        if self.select_by == "instances" and self.best_ap is not None:
            if abs(scores["ap"] - self.best_ap) > 1e-4:
                return scores["ap"] > self.best_ap
        return scores["dice"] > self.best_dice + 1e-4

    def _evaluate_and_keep_best(self) -> dict:
        scores = self.validation_scores()
        self.last_eval_step = self.step
        if self._beats_best(scores):
            self.best_dice, self.best_iou, self.best_ap = scores["dice"], scores["iou"], scores["ap"]
            self.best_step = self.step
            # A CPU copy: the live weights keep changing, and GPU memory is precious.
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        return scores

    def _report(
        self, loss: float, val_dice: float | None, lr: float, message: str = "", val_ap: float | None = None
    ) -> StepReport:
        cfg = self.config
        etas = []
        first_step, first_elapsed = self._run_start
        if cfg.max_steps and self.step > first_step:
            pace = (self.elapsed - first_elapsed) / (self.step - first_step)
            etas.append(pace * max(cfg.max_steps - self.step, 0))
        if cfg.time_budget:
            etas.append(max(cfg.time_budget - self.elapsed, 0.0))
        if not message:
            message = f"step {self.step}: loss {loss:.4f}"
            if val_ap is not None:
                message += f", validation AP@0.5 {val_ap:.3f} (best {self.best_ap:.3f}), Dice {val_dice:.3f}"
            elif val_dice is not None:
                message += f", validation Dice {val_dice:.3f} (best {self.best_dice:.3f})"
        report = StepReport(
            step=self.step,
            total_steps=cfg.max_steps,
            elapsed=self.elapsed,
            eta=min(etas) if etas else None,
            loss=loss,
            val_dice=val_dice,
            best_val_dice=self.best_dice,
            lr=lr,
            message=message,
            val_ap=val_ap,
            best_val_ap=self.best_ap,
        )
        self.history.append(report)
        return report

    # -- results ----------------------------------------------------------------------

    def best_model(self) -> AttentionUNet:
        """A CPU copy of the best model so far (the current one if never evaluated), in eval mode."""
        model = copy.deepcopy(self.model).cpu()
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model.eval()

    def result(self) -> TrainResult:
        """The run's outcome so far, with the sanity check; safe to call after cancelling."""
        if self.best_state is None and self.validation and self.step > 0 and self.last_eval_step <= 0:
            self._evaluate_and_keep_best()  # stopped before the first evaluation: score where it is
        trained = self.best_model()
        if self.best_state is None and self.must_beat_start and self.start_scores is not None and self.step > 0:
            accepted, message = False, self._not_better_message()
        else:
            accepted, message = self._sanity_check(trained)
        return TrainResult(
            model=trained if accepted else self.original_model,
            trained_model=trained,
            accepted=accepted,
            message=message,
            steps=self.step,
            best_step=self.best_step,
            best_val_dice=self.best_dice,
            best_val_iou=self.best_iou,
            stopped=self.stopped,
            history=list(self.history),
            best_val_ap=self.best_ap,
            start_scores=self.start_scores,
        )

    def _not_better_message(self) -> str:
        start = self.start_scores
        score = f"AP@0.5 {start['ap']:.3f}" if start["ap"] is not None else f"Dice {start['dice']:.3f}"
        return (
            f"after {self.step} steps no trained state scored better on the held-out region than the "
            f"starting model ({score}), so the previous model is kept. Correct more objects, or train longer."
        )

    def _sanity_check(self, trained: AttentionUNet) -> tuple[bool, str]:
        if self.step == 0:
            return False, "training was stopped before the first step; keeping the previous model"
        if not self.validation:
            return True, f"trained {self.step} steps (no validation region, so no check)"
        trained = trained.to(self.device)
        _, _, fraction = self.validate(trained)
        trained.cpu()
        if fraction <= 1e-4:
            return False, (
                "the trained model finds no objects in the held-out region, so it is not used; "
                "the previous model is kept. Label more objects (or check that the labels layer is the right one)."
            )
        if fraction >= 0.99:
            return False, (
                "the trained model marks the whole held-out region as objects, so it is not used; "
                "the previous model is kept. Label some background too, or train for fewer steps."
            )
        message = f"trained {self.step} steps ({self.stopped}); best validation "
        if self.best_ap is not None:
            start = self.start_scores["ap"] if self.start_scores else None
            message += f"AP@0.5 {self.best_ap:.3f}" + (f" (starting model {start:.3f})" if start is not None else "")
            message += f", Dice {self.best_dice:.3f}"
        else:
            message += f"Dice {self.best_dice:.3f}"
        return True, message + f" at step {self.best_step}"

    # -- long runs --------------------------------------------------------------------

    def checkpoint(self) -> dict:
        """Everything needed to resume: tensors, numbers and strings only (loads with weights_only=True)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_state": self.best_state,
            "step": self.step,
            "best_step": self.best_step,
            "best_dice": self.best_dice,
            "best_iou": self.best_iou,
            "best_ap": self.best_ap,
            "start_scores": self.start_scores,
            "last_eval_step": self.last_eval_step,
            "evals_since_best": self.evals_since_best,
            "rng": self.rng.bit_generator.state,
            "model_config": self.model.config.to_dict(),
        }

    def load_checkpoint(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.best_state = state["best_state"]
        self.step, self.best_step = int(state["step"]), int(state["best_step"])
        self.best_dice, self.best_iou = state["best_dice"], state["best_iou"]
        self.evals_since_best = int(state["evals_since_best"])
        self.best_ap, self.start_scores = state.get("best_ap"), state.get("start_scores")
        self.last_eval_step = int(state.get("last_eval_step", self.step))
        self.rng.bit_generator.state = state["rng"]


def train(
    model: AttentionUNet,
    pairs: Sequence[tuple],
    *,
    config: TrainConfig | None = None,
    device: str | torch.device = "auto",
    ignore_masks: Sequence[np.ndarray | None] | None = None,
    weight_maps: Sequence[np.ndarray | None] | None = None,
    edited_masks: Sequence[np.ndarray | None] | None = None,
) -> Generator[StepReport, None, TrainResult]:
    """Fine-tune (or train) a copy of ``model`` on ``pairs``; see :class:`Trainer`.

    ``pairs`` holds ``(image, labels)`` or ``(image, labels, axes)``. Use
    ``Trainer(...).run()`` instead when you need the best model after cancelling.
    """
    trainer = Trainer(
        model,
        pairs,
        config=config,
        device=device,
        ignore_masks=ignore_masks,
        weight_maps=weight_maps,
        edited_masks=edited_masks,
    )
    return (yield from trainer.run())
