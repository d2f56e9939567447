"""What a training checkpoint holds, so that long runs can span several sessions.

Tensors, numbers and strings only, so that it loads with ``torch.load(..., weights_only=True)``:
the network, optimiser, gradient scaler and RNG states, the trainer's progress and the best
state kept so far (see :data:`PROGRESS`), and the model's configuration.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

#: The trainer attributes a checkpoint holds besides the network, optimiser, scaler and RNG.
PROGRESS = (
    "best_state",
    "step",
    "best_step",
    "best_dice",
    "best_iou",
    "best_ap",
    "start_scores",
    "last_eval_step",
    "evals_since_best",
    "best_class_dice",
    "top_dice",
)


def make_checkpoint(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng: np.random.Generator,
    progress: dict,
) -> dict:
    """Everything needed to resume; ``progress`` maps each name of :data:`PROGRESS` to its value."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        **{name: progress[name] for name in PROGRESS},
        "rng": rng.bit_generator.state,
        "model_config": model.config.to_dict(),
    }


def restore_checkpoint(
    state: dict,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    rng: np.random.Generator,
) -> dict:
    """Load ``state`` into the network, optimiser, scaler and RNG; return its progress (the
    names of :data:`PROGRESS`), with defaults for what checkpoints of older versions lack."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    step = int(state["step"])
    progress = {
        "best_state": state["best_state"],
        "step": step,
        "best_step": int(state["best_step"]),
        "best_dice": state["best_dice"],
        "best_iou": state["best_iou"],
        "best_ap": state.get("best_ap"),
        "start_scores": state.get("start_scores"),
        "last_eval_step": int(state.get("last_eval_step", step)),
        "evals_since_best": int(state["evals_since_best"]),
        "best_class_dice": state.get("best_class_dice"),
        "top_dice": state.get("top_dice", state["best_dice"]),
    }
    rng.bit_generator.state = state["rng"]
    return progress


def part_of_the_change(start: torch.nn.Module, end: torch.nn.Module, share: float) -> torch.nn.Module:
    """``end`` with its weights ``share`` of the way from ``start``'s to its own (other tensors, e.g. counts:
    ``end``'s); ``end`` as it is for a share of 1 (``TrainConfig.keep_share``)."""
    if share >= 1.0:
        return end
    first = start.state_dict()
    end.load_state_dict(
        {
            k: torch.lerp(first[k].to(v.device, v.dtype), v, share) if v.is_floating_point() else v
            for k, v in end.state_dict().items()
        }
    )
    return end


def kept_form(start: torch.nn.Module, model: torch.nn.Module, share: float) -> torch.nn.Module:
    """``model`` as a run hands it back: itself for a share of 1, else a copy with ``share`` of its change
    from ``start`` (:func:`part_of_the_change`), so that a state is judged in the form it would be kept."""
    return model if share >= 1.0 else part_of_the_change(start, copy.deepcopy(model), share)


def share_note(share: float) -> str:
    """What a result's message adds when the model keeps part of its change (empty when all of it)."""
    return "" if share >= 1.0 else f"; it keeps {share:.0%} of the change in weights (holds up better elsewhere)"
