"""The settings of a training run and what it reports: :class:`TrainConfig` in,
:class:`StepReport` every few steps (with :func:`step_message`), :class:`TrainResult` at the end."""

from __future__ import annotations

from dataclasses import dataclass, field

from napari_attention_unet.core.model import AttentionUNet

#: Output classes for which objects (and so an instance score) can be made.
INSTANCE_CLASSES = ("background", "interior", "boundary")


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


def step_message(
    step: int, loss: float, val_dice: float | None, val_ap: float | None, best_dice: float | None, best_ap: float | None
) -> str:
    """The default :attr:`StepReport.message`: the loss, and the validation scores after an evaluation."""
    message = f"step {step}: loss {loss:.4f}"
    if val_ap is not None:
        message += f", validation AP@0.5 {val_ap:.3f} (best {best_ap:.3f}), Dice {val_dice:.3f}"
    elif val_dice is not None:
        message += f", validation Dice {val_dice:.3f} (best {best_dice:.3f})"
    return message


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
