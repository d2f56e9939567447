"""The training loop: :class:`Trainer` and the :func:`train` generator.

``train(model, pairs, config=TrainConfig())`` yields a :class:`StepReport` every few
steps and returns a :class:`TrainResult`. The loop is one flat sequence in
:meth:`Trainer.run` (lr -> forward/backward -> clip -> step -> evaluate/keep best ->
report), in the shape of nanoGPT's ``train.py``.

Cancelling is closing the generator (``gen.close()``, or ``worker.quit()`` in napari).
The :class:`Trainer` object survives that: ``trainer.result()`` afterwards gives the
best model seen so far, checked like a finished run. The model passed in is never
modified; a result that fails the sanity check hands it back unchanged.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Generator, Sequence
from functools import partial

import numpy as np
import torch

from napari_attention_unet.core.device import autocast_dtype, channels_last_format, pick_device
from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.train import checkpoints
from napari_attention_unet.core.train.config import (
    INSTANCE_CLASSES,
    StepReport,
    TrainConfig,
    TrainResult,
    counted,
    step_message,
)
from napari_attention_unet.core.train.losses import segmentation_loss, semantic_loss
from napari_attention_unet.core.train.optimizer import budget_spent, eta, learning_rate, make_optimizer
from napari_attention_unet.core.train.samples import (
    TrainingSample,
    class_points,
    draw_batch,
    patch_shape,
    training_samples,
)
from napari_attention_unet.core.train.selection import (
    beats_best,
    must_beat_start,
    not_better_message,
    resolve_selection,
    sanity_verdict,
    semantic_verdict,
)
from napari_attention_unet.core.train.validation import predict_probabilities, score_samples, semantic_scores


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
        background_slices: Sequence[Sequence[int] | None] | None = None,
    ) -> None:
        self.config = config = (config or TrainConfig()).for_model(model.config)
        self.task = model.config.task
        if self.task == "instances" and model.config.out_channels != len(INSTANCE_CLASSES):
            raise ValueError(
                "training learns the three classes background / interior / boundary from the labels; "
                f"this model has {len(model.config.classes)} ({', '.join(model.config.classes)}). "
                "To learn class values, make it a semantic model (ModelConfig(task='semantic'))"
            )
        self.original_model = model
        self.device = pick_device(device)
        # Channels-last: NHWC / NDHWC convolutions are ~25 % faster on the CPU (and on tensor cores).
        self.memory_format = channels_last_format(model.config.spatial_dims)
        self.model = copy.deepcopy(model).to(self.device).to(memory_format=self.memory_format)
        self.samples, self.validation = training_samples(
            model.config,
            config,
            pairs,
            ignore_masks=ignore_masks,
            weight_maps=weight_maps,
            edited_masks=edited_masks,
            samples=samples,
            validation=validation,
            background_slices=background_slices,
        )
        self.select_by = resolve_selection(config.select_by, model, self.validation)
        self.must_beat_start = must_beat_start(config.must_beat_start, self.validation)
        weights = np.asarray(sample_weights if sample_weights is not None else [1.0] * len(self.samples), float)
        self.sample_p = weights / weights.sum()
        self.patch = patch_shape(config.patch_size, model.config.spatial_dims, model.config.size_multiple)
        # Where patches centred on a class may go (semantic models that oversample classes).
        oversample = self.task == "semantic" and config.class_fraction > 0
        self.class_points = [class_points(s.target) for s in self.samples] if oversample else None

        self.freeze_bn = (not config.from_scratch) if config.freeze_batchnorm is None else config.freeze_batchnorm
        self.optimizer = make_optimizer(self.model, config)
        # bf16 autocast on GPUs and on CPUs that run bf16 natively ('auto'); MPS trains in float32.
        self.amp = autocast_dtype(self.device, config.precision) if self.device.type in ("cuda", "cpu") else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.rng = np.random.default_rng(config.seed)
        self.step = 0
        self.elapsed = 0.0
        self.best_state: dict | None = None
        self.best_step = 0
        self.best_dice: float | None = None
        self.best_iou: float | None = None
        self.best_ap: float | None = None
        self.best_class_dice: dict[str, float] | None = None
        self.top_dice: float | None = None  # the best validation Dice so far (the kept state may be later: keep_within)
        self.start_scores: dict | None = None
        self.last_eval_step = -1
        self.eval_seconds = 0.0  # how long the last evaluation took: the time budget keeps that much for the last
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
        # The starting model's scores are the bar a trained state must clear (see selection.py); a new model's
        # start clears no bar, and scoring it on a large volume's held-out part took minutes of a budget.
        if self.step == 0 and self.validation and self.start_scores is None and cfg.must_beat_start is not False:
            self._score_start()
        try:
            while not self._budget_spent():
                # The learning rate is set by hand rather than by a torch scheduler: it follows time too.
                lr = self._lr()
                for group in self.optimizer.param_groups:
                    group["lr"] = lr

                # Forward and backward on one fresh batch (batch norm frozen when fine-tuning).
                self._set_train_mode()
                images, targets, weight_map = self._batch()
                # Grad mode is per thread: the caller's may have it off (e.g. inside torch.no_grad()).
                with torch.enable_grad():
                    with torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None):
                        logits, _ = self.model(images)
                    loss = self._loss(logits, targets, dice_weight=cfg.dice_weight, weight_map=weight_map)
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                # Clip after unscaling: one bad patch (e.g. a mislabelled blob) must not blow up the weights.
                self.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                # Step the optimiser, unless its gradients are not numbers (the scaler skips float16 overflows itself):
                # bf16 on a CPU gave such a step now and then (a tiny 3D net), and one step made every weight NaN.
                if self.scaler.is_enabled() or torch.isfinite(norm):
                    self.scaler.step(self.optimizer)
                self.scaler.update()
                self.step += 1
                self.elapsed = time.perf_counter() - t0
                last_loss = float(loss.detach())
                if not math.isfinite(last_loss):
                    self.stopped = "diverged"
                    yield self._report(last_loss, None, lr, "loss is not finite; stopping")
                    break

                # Score every eval_every steps and at the very end, so the last state can win too. Unlike
                # nanoGPT (which evaluates before the step) this scores the state the step just made.
                scores = None
                if self.validation and (self.step % cfg.eval_every == 0 or self._budget_spent()):
                    scores = self._evaluate_and_keep_best()
                    if self.evals_since_best >= cfg.patience:
                        self.stopped = "early stop"
                # Log: every evaluation is reported, other steps every report_every.
                if scores is not None:
                    yield self._report(last_loss, scores["dice"], lr, val_ap=scores["ap"], scores=scores)
                elif self.step % cfg.report_every == 0:
                    yield self._report(last_loss, None, lr)
                if self.stopped == "early stop":
                    break
            else:
                self.stopped = "budget"
        finally:
            # Also on cancel (the generator closed at a yield): a resumed run() counts on from here.
            self.elapsed = time.perf_counter() - t0
        return self.result()

    # -- pieces of the loop ----------------------------------------------------------

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, **settings) -> torch.Tensor:
        """The instance classes' loss, or the semantic one for class values, classes weighed alike for strokes."""
        if self.task == "semantic":
            return semantic_loss(logits, targets, balance=self.config.zero_is == "unlabelled", **settings)
        return segmentation_loss(logits, targets, **settings)

    def _lr(self) -> float:
        """Linear warm-up, then cosine decay over the run's progress (steps or time)."""
        return learning_rate(self.config, self.step, self.elapsed)

    def _budget_spent(self) -> bool:
        return budget_spent(self.config, self.step, self.elapsed, reserve=self.eval_seconds)

    def _set_train_mode(self) -> None:
        self.model.train()
        if self.freeze_bn:
            for module in self.model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def _host_batch(self) -> tuple:
        """(images, targets, weights or None) on the host: :func:`draw_batch` with this trainer's RNG."""
        channels = self.model.config.in_channels
        return draw_batch(self.samples, self.sample_p, self.rng, self.patch, channels, self.config, self.class_points)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The next batch on the device (channels-last images for 2D)."""
        images, targets, weights = self._host_batch()
        x = torch.as_tensor(images).to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        y = torch.as_tensor(targets).to(self.device, non_blocking=True)
        w = None if weights is None else torch.as_tensor(weights).to(self.device)
        return x, y, w

    def validation_scores(self, model: AttentionUNet | None = None) -> dict:
        """Foreground ``dice``, ``iou`` and predicted ``fraction`` (means over the validation
        images) and, when selecting by instances, ``ap``: AP@0.5 of the objects, all images pooled.
        For a semantic model: :func:`~.validation.semantic_scores` (``dice`` is the mean class Dice)."""
        model, started = (self.model if model is None else model), time.perf_counter()
        probabilities = partial(predict_probabilities, device=self.device, amp=self.amp)  # (model, image) -> probs
        if self.task == "semantic":
            scores = semantic_scores(self.validation, model, probabilities)
        else:
            scores = score_samples(self.validation, model, probabilities, self.select_by)
        self.eval_seconds = time.perf_counter() - started
        return scores

    def validate(self, model: AttentionUNet | None = None) -> tuple[float, float, float]:
        """Mean (Dice, IoU, predicted foreground fraction) over the validation images."""
        return tuple(self.validation_scores(model)[k] for k in ("dice", "iou", "fraction"))

    def _score_start(self) -> None:
        """Score the starting model; with ``must_beat_start`` a trained state must beat it to be kept."""
        scores = self.validation_scores()
        self.start_scores, self.last_eval_step = scores, 0
        if self.must_beat_start:
            self.best_dice, self.best_iou, self.best_ap = scores["dice"], scores["iou"], scores["ap"]
            self.best_class_dice = scores.get("class_dice")
            self.best_step, self.best_state = 0, None

    def _beats_best(self, scores: dict) -> bool:
        return self.config.keep_last or beats_best(scores, self.best_dice, self.best_ap, self.select_by)

    def _near_top(self, scores: dict) -> bool:
        """A trained state was kept, and ``scores`` are within ``keep_within`` of the best Dice so far."""
        within = self.config.keep_within
        if not within or self.select_by == "instances" or self.best_state is None or self.top_dice is None:
            return False
        return scores["dice"] >= self.top_dice - within

    def _evaluate_and_keep_best(self) -> dict:
        scores = self.validation_scores(checkpoints.kept_form(self.original_model, self.model, self.config.keep_share))
        self.last_eval_step = self.step
        improved = self._beats_best(scores)
        if improved or self._near_top(scores):
            self.best_dice, self.best_iou, self.best_ap = scores["dice"], scores["iou"], scores["ap"]
            self.best_class_dice = scores.get("class_dice")
            self.best_step = self.step
            # A CPU copy: the live weights keep changing, and GPU memory is precious.
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.evals_since_best = 0 if improved else self.evals_since_best + 1
        self.top_dice = scores["dice"] if self.top_dice is None else max(self.top_dice, scores["dice"])
        return scores

    def _report(
        self,
        loss: float,
        val_dice: float | None,
        lr: float,
        message: str = "",
        val_ap: float | None = None,
        scores: dict | None = None,
    ) -> StepReport:
        """The :class:`StepReport` of this step, also kept in the history."""
        class_dice = None if scores is None else scores.get("class_dice")
        report = StepReport(
            step=self.step,
            total_steps=self.config.max_steps,
            elapsed=self.elapsed,
            eta=eta(self.config, self.step, self.elapsed, self._run_start),
            loss=loss,
            val_dice=val_dice,
            best_val_dice=self.best_dice,
            lr=lr,
            message=message
            or step_message(self.step, loss, val_dice, val_ap, self.best_dice, self.best_ap, class_dice),
            val_ap=val_ap,
            best_val_ap=self.best_ap,
            val_class_dice=class_dice,
        )
        self.history.append(report)
        return report

    # -- results ----------------------------------------------------------------------

    def best_model(self) -> AttentionUNet:
        """A CPU copy of the best model so far (the current one if never evaluated; keep_share of its change)."""
        model = copy.deepcopy(self.model).cpu()
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return checkpoints.part_of_the_change(self.original_model, model, self.config.keep_share).eval()

    def result(self) -> TrainResult:
        """The run's outcome so far, with the sanity check; safe to call after cancelling."""
        if self.best_state is None and self.validation and self.step > 0 and self.last_eval_step <= 0:
            self._evaluate_and_keep_best()  # stopped before the first evaluation: score where it is
        trained = self.best_model()
        if self.best_state is None and self.must_beat_start and self.start_scores is not None and self.step > 0:
            accepted, message = False, not_better_message(self.step, self.start_scores)
        else:
            accepted, message = self._sanity_check(trained)
        return TrainResult(
            model=trained if accepted else self.original_model,
            trained_model=trained,
            accepted=accepted,
            message=message + (checkpoints.share_note(self.config.keep_share) if accepted else ""),
            steps=self.step,
            # the step of ``trained_model``: the last one when no state was kept (nothing evaluated)
            best_step=self.best_step if self.best_state is not None or self.must_beat_start else self.step,
            best_val_dice=self.best_dice,
            best_val_iou=self.best_iou,
            stopped=self.stopped,
            history=list(self.history),
            best_val_ap=self.best_ap,
            start_scores=self.start_scores,
            best_val_class_dice=self.best_class_dice,
        )

    def _sanity_check(self, trained: AttentionUNet) -> tuple[bool, str]:
        if self.step == 0:
            return False, "training was stopped before the first step"
        if not self.validation:
            return True, f"trained {counted(self.step, 'step', 'steps')} (no validation region, so no check)"
        trained = trained.to(self.device)
        scores = self.validation_scores(trained)
        trained.cpu()
        run = {"step": self.step, "stopped": self.stopped, "best_step": self.best_step}
        start = {"start_scores": self.start_scores, "judged": self.must_beat_start}
        if self.task == "semantic":
            return semantic_verdict(scores, **run, **start)
        return sanity_verdict(scores, **run, best_dice=self.best_dice, best_ap=self.best_ap, **start)

    # -- long runs --------------------------------------------------------------------

    def checkpoint(self) -> dict:
        """Everything needed to resume: tensors, numbers and strings only (loads with weights_only=True)."""
        progress = {name: getattr(self, name) for name in checkpoints.PROGRESS}
        return checkpoints.make_checkpoint(self.model, self.optimizer, self.scaler, self.rng, progress)

    def load_checkpoint(self, state: dict) -> None:
        """Resume from a :meth:`checkpoint`: weights, optimiser, RNG, progress and best state so far."""
        restored = checkpoints.restore_checkpoint(state, self.model, self.optimizer, self.scaler, self.rng)
        for name, value in restored.items():
            setattr(self, name, value)


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
    masks = {"ignore_masks": ignore_masks, "weight_maps": weight_maps, "edited_masks": edited_masks}
    trainer = Trainer(model, pairs, config=config, device=device, **masks)
    return (yield from trainer.run())
