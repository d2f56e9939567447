"""Which trained state to keep, and whether to hand it back at all.

The starting model is scored on the held-out region first: unless the region holds
labelled pixels the user did not paint (the model's own accepted prediction, which it
matches by construction), a trained state is kept only when it beats it, so fine-tuning
never hands back a model that does worse on the user's own held-out annotation. The
best state kept then passes a sanity check (:func:`sanity_verdict`) before it replaces
the model; otherwise the model passed in comes back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from napari_attention_unet.core.model import AttentionUNet
from napari_attention_unet.core.train.config import INSTANCE_CLASSES, class_scores, counted
from napari_attention_unet.core.train.samples import TrainingSample


def resolve_selection(choice: str, model: AttentionUNet, validation: Sequence[TrainingSample]) -> str:
    """``"instances"``, ``"foreground"`` or ``"classes"``: the score that picks the best state (see
    :attr:`TrainConfig.select_by`); ``"auto"`` is instances wherever they can be scored. A
    semantic model is always picked by ``"classes"``: the mean Dice of its foreground classes."""
    if choice not in ("auto", "instances", "foreground"):
        raise ValueError(f"select_by must be auto, instances or foreground, not {choice!r}")
    if model.config.task == "semantic":
        if choice == "instances":
            raise ValueError("select_by='instances' needs an instance model; a semantic model makes no objects")
        return "classes"
    possible = (
        tuple(model.config.classes[:3]) == INSTANCE_CLASSES
        and bool(validation)
        and all(s.val_instances is not None for s in validation)
    )
    if choice == "instances" and not possible:
        raise ValueError(
            "select_by='instances' needs a model with background/interior/boundary classes "
            "and a held-out strip of the training labels (val_fraction > 0)"
        )
    return "instances" if possible and choice != "foreground" else "foreground"


def must_beat_start(choice: bool | None, validation: Sequence[TrainingSample]) -> bool:
    """:attr:`TrainConfig.must_beat_start`, with None resolved: yes when every labelled pixel
    of the held-out region is the user's own (``val_trusted``)."""
    return choice if choice is not None else all(s.val_trusted for s in validation)


def beats_best(scores: dict, best_dice: float | None, best_ap: float | None, select_by: str) -> bool:
    """Whether validation ``scores`` beat the best so far (anything beats none): by AP@0.5 when
    selecting by instances and the APs differ by more than 1e-4, else by foreground Dice."""
    if best_dice is None:
        return True
    if select_by == "instances" and best_ap is not None:
        if abs(scores["ap"] - best_ap) > 1e-4:
            return scores["ap"] > best_ap
    return scores["dice"] > best_dice + 1e-4


def not_better_message(step: int, start_scores: dict) -> str:
    """Why the starting model is kept when no trained state beat its ``start_scores``."""
    score = f"AP@0.5 {start_scores['ap']:.3f}" if start_scores["ap"] is not None else f"Dice {start_scores['dice']:.3f}"
    what = "objects"
    if start_scores.get("class_dice") is not None:
        score, what = f"mean class Dice {start_scores['dice']:.3f}", "of each class"
    return (
        f"after {counted(step, 'step', 'steps')} no trained state scored better on the held-out region than the "
        f"starting model ({score}). Correct more {what}, or train longer."
    )


#: Said beside the starting model's held-out score when it was no bar to clear (``must_beat_start`` off).
NOT_A_BAR = (
    "; not a bar here: the held-out region holds masks you did not correct, which the starting model drew itself"
)


#: A model whose held-out score is under this matched nothing there: doubted, as one that finds nothing or
#: predicts one class everywhere is. Semantic: mean class Dice (before, one such model was put in use and
#: another not); objects: AP@0.5 (labels transposed on a square image, or a 0/255 mask taken as one object).
NOTHING_MATCHED = 0.01


def sanity_verdict(
    scores: dict,
    *,
    step: int,
    stopped: str,
    best_step: int,
    best_dice: float | None,
    best_ap: float | None,
    start_scores: dict | None,
    judged: bool = True,
) -> tuple[bool, str]:
    """``(accepted, message)`` for a trained model whose held-out ``scores`` (:func:`.validation.score_samples`)
    say what ``fraction`` of the held-out region it marks as objects: refused when it finds nothing where
    the labels there hold objects (``labelled``), or marks everything; else accepted with its scores, the
    starting model's beside them (``judged``: whether they were a bar to clear) and how many objects
    the held-out region holds (a handful of objects moves AP@0.5 in large steps)."""
    fraction = scores["fraction"]
    if fraction <= 1e-4 and scores.get("labelled", True):
        return False, (
            "the trained model finds no objects in the held-out region. "
            "Label more objects (or check that the labels layer is the right one)."
        )
    if fraction >= 0.99:
        return False, (
            "the trained model marks the whole held-out region as objects. "
            "Label some background too, or train longer (a model a few steps old often marks everything)."
        )
    objects = scores.get("objects")
    if objects and scores.get("ap") is not None and scores["ap"] < NOTHING_MATCHED:
        return False, (
            f"the trained model matches none of the {counted(objects, 'held-out object', 'held-out objects')} "
            f"(AP@0.5 {scores['ap']:.3f}). Check that the labels belong to this image (the same orientation), "
            "or train longer."
        )
    message = f"trained {counted(step, 'step', 'steps')} ({stopped}); kept the state of step {best_step}: validation "
    if best_ap is not None:
        message += f"AP@0.5 {best_ap:.3f}" + (
            f" on {counted(objects, 'held-out object', 'held-out objects')}" if objects else ""
        )
        start = start_scores["ap"] if start_scores else None
        if start is not None:
            bar = "" if judged else NOT_A_BAR
            message += f" (starting model {start:.3f}{bar})"
        message += f", Dice {best_dice:.3f}"
    else:
        message += f"Dice {best_dice:.3f}"
    return True, message


def semantic_verdict(
    scores: dict,
    *,
    step: int,
    stopped: str,
    best_step: int,
    start_scores: dict | None = None,
    judged: bool = True,
) -> tuple[bool, str]:
    """``(accepted, message)`` for a trained semantic model from its validation ``scores``
    (:func:`~.validation.semantic_scores`): refused when it predicts one class everywhere in the
    held-out region though the labels there hold several, or matches none of the classes labelled there
    (mean class Dice under :data:`NOTHING_MATCHED`), else accepted with its class Dice and, when the
    starting model was scored (``start_scores``), its score beside them (``judged``: whether it was a bar)."""
    if scores["classes_predicted"] <= 1 < scores["classes_labelled"]:
        return False, (
            "the trained model predicts one class everywhere in the held-out region. "
            "Train longer, or label more of the rarer classes."
        )
    if scores["class_dice"] and scores["dice"] < NOTHING_MATCHED:
        return False, (
            f"the trained model matches none of the labelled classes in the held-out region (mean class Dice "
            f"{scores['dice']:.3f}). Train longer, or label more."
        )
    said = [class_scores(scores["class_dice"])]
    if start_scores is not None:
        said.append(f"starting model {start_scores['dice']:.3f}" + ("" if judged else NOT_A_BAR))
    said = "; ".join(part for part in said if part)
    return True, (
        f"trained {counted(step, 'step', 'steps')} ({stopped}); kept the state of step {best_step}: "
        f"validation mean class Dice {scores['dice']:.3f}" + (f" ({said})" if said else "")
    )
