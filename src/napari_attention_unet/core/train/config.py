"""The settings of a training run and what it reports: :class:`TrainConfig` in,
:class:`StepReport` every few steps (with :func:`step_message`), :class:`TrainResult` at the end."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from napari_attention_unet.core.model import AttentionUNet, ModelConfig

#: Output classes for which objects (and so an instance score) can be made.
INSTANCE_CLASSES = ("background", "interior", "boundary")

#: What label value 0 can mean for a semantic model (see :attr:`TrainConfig.zero_is`).
ZERO_IS = ("background", "unlabelled", "slices")


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
    # The patch edge (at most 64 in 3D), or one edge per spatial axis (e.g. fitted to small volumes).
    patch_size: int | tuple[int, ...] = 256
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
    # Semantic models: the share of patches centred on a pixel of one class, drawn evenly among
    # the classes 1..K the image holds (nnU-Net's foreground oversampling), so a rare class (a
    # synapse among membranes) is in most batches. The other patches fall anywhere.
    class_fraction: float = 0.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    # Random flips on every axis and 90-degree turns in YX. Off for classes that depend on the
    # orientation (anatomy: anterior / posterior, left / right), which flips would make ambiguous.
    flips: bool = True
    # Strength of the random stain change of RGB images (core.augment.stain_jitter); 0: off.
    stain_jitter: float = 0.0
    freeze_batchnorm: bool | None = None
    from_scratch: bool = False
    report_every: int = 1
    precision: str = "auto"
    seed: int = 0
    # Which validation score picks the best state: "instances" (AP@0.5 of the objects on the
    # held-out strip, ties broken by foreground Dice), "foreground" (Dice), or "auto": instances
    # when the model has background/interior/boundary classes and the strip has labels.
    select_by: str = "auto"
    # A later state whose validation Dice is within this of the best so far is kept instead of the
    # best (Dice-selected models; 0: the best state). A new model's learning rate decays to the end
    # of its budget, and on a few held-out images a later state a little below the best is within
    # their noise and does better elsewhere (benchmarks/README.md, bench_tasks.py, session 11).
    keep_within: float = 0.0
    # Keep the last state instead of the best one, and train to the end of the budget (no early stop): a new 3D
    # instance model's held-out strip holds 10-20 objects, too few to pick a state by, while its learning rate
    # decays to the end of the budget (benchmarks/README.md, bench_instances_3d.py, session 32).
    keep_last: bool = False
    # Keep the starting model unless a trained state beats it on the held-out strip. None: yes
    # when every labelled pixel of the strip is the user's (no record of edits: a full
    # annotation; or only painted pixels are trained on); no when the strip also holds
    # unpainted pixels, the model's own accepted prediction, which the starting model
    # matches by construction.
    must_beat_start: bool | None = None
    # Semantic models only (ModelConfig.task == "semantic"): what label value 0 means.
    # "background": dense labels (medical label files), 0 is class 0 and every pixel counts.
    # "unlabelled": strokes; only painted pixels count and the loss ignores 0. Painted value v
    # trains output channel v, so the background must be painted as a class of its own
    # (e.g. 1), and channel 0 is never a target (a model trained so never predicts it).
    # "slices": a few labelled slices of a volume; 0 is the background in the planes (along the
    # first axis) that hold labels, and planes without any are not labelled.
    zero_is: str = "background"
    # Voxel size (Z, Y, X) of every volume, for 3D models: anisotropic volumes are resampled to
    # cubic voxels (labels nearest) as core.predict does, so training and prediction agree. A
    # pair's own spacing (its fourth element) wins.
    spacing: tuple[float, ...] | None = None
    # The share of its change in weights a run keeps: the model it gives is start + share x (trained -
    # start). None: half when fine-tuning a 3D semantic model (not from_scratch), all otherwise (new models
    # set 1). Fine-tuned on one corrected MR volume for a minute, such a model gained 0.06-0.11 Dice on that
    # volume and lost 0.05-0.14 on others; halfway it gains 0.06-0.07 there and keeps the others within
    # 0.02 (benchmarks/README.md, bench_finetune_3d.py). Batch norm is frozen while fine-tuning, so both
    # ends share its statistics.
    keep_share: float | None = None

    def __post_init__(self) -> None:
        if self.keep_share is not None and not 0.0 < self.keep_share <= 1.0:
            raise ValueError(f"keep_share is a share of the change in weights, in (0, 1], not {self.keep_share}")
        if self.max_steps is None and self.time_budget is None:
            raise ValueError("give max_steps or time_budget (or both), so that training ends")
        if self.zero_is not in ZERO_IS:
            raise ValueError(f"zero_is must be one of {', '.join(ZERO_IS)}, not {self.zero_is!r}")
        if self.spacing is not None:
            self.spacing = tuple(float(s) for s in self.spacing)

    def for_model(self, config: ModelConfig) -> TrainConfig:
        """These settings for training a model of ``config``: one trained on strokes (``unlabelled_channel``)
        learns from painted pixels only, balanced by class, each time it trains; fine-tuned with 0 taken as a
        class, the membrane class of an EM model fell from Dice 0.64 to 0.03 on its held-out strip. An
        unset ``keep_share`` is settled for the model's kind."""
        settings = replace(self, zero_is="unlabelled") if config.unlabelled_channel else self
        if settings.keep_share is None:  # see keep_share: half for fine-tuning a 3D semantic model
            fine_tuned_3d = config.spatial_dims == 3 and config.task == "semantic" and not self.from_scratch
            settings = replace(settings, keep_share=0.5 if fine_tuned_3d else 1.0)
        return settings


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
    # Semantic models: Dice of each class (by name) on the held-out region, after an evaluation;
    # ``val_dice`` is then their mean over the foreground classes (channels 1..K).
    val_class_dice: dict[str, float] | None = None


def counted(n: int, one: str, many: str) -> str:
    """``"1 step"``, ``"30 steps"``: ``n`` and the word that goes with it, for messages."""
    return f"{n} {one if n == 1 else many}"


#: Classes named one by one in a message; past this, the lowest scores are named and the rest counted.
CLASSES_NAMED = 6


def class_scores(class_dice: dict[str, float], digits: int = 3) -> str:
    """Each class's score, as in "anterior 0.861, posterior 0.828"; with more than :data:`CLASSES_NAMED`
    classes, the lowest and how many more ("lowest: synapse 0.120, glia 0.300, ...; 24 more classes")."""
    items = list(class_dice.items())
    if len(items) > CLASSES_NAMED:
        items = sorted(items, key=lambda item: item[1])
        shown = ", ".join(f"{name} {value:.{digits}f}" for name, value in items[: CLASSES_NAMED - 1])
        return f"lowest: {shown}; {len(items) - CLASSES_NAMED + 1} more classes"
    return ", ".join(f"{name} {value:.{digits}f}" for name, value in items)


def step_message(
    step: int,
    loss: float,
    val_dice: float | None,
    val_ap: float | None,
    best_dice: float | None,
    best_ap: float | None,
    class_dice: dict[str, float] | None = None,
) -> str:
    """The default :attr:`StepReport.message`: the loss, and the validation scores after an evaluation."""
    message = f"step {step}: loss {loss:.4f}"
    if val_ap is not None:
        message += f", validation AP@0.5 {val_ap:.3f} (kept {best_ap:.3f}), Dice {val_dice:.3f}"
    elif class_dice is not None:
        message += f", validation mean class Dice {val_dice:.3f} (kept {best_dice:.3f}; {class_scores(class_dice)})"
    elif val_dice is not None:
        message += f", validation Dice {val_dice:.3f} (kept {best_dice:.3f})"
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
    best_val_class_dice: dict[str, float] | None = None  # semantic models: per class, at the best step
