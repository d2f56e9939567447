"""The optimiser and its schedule: AdamW with weight decay on kernels only, a linear warm-up
then cosine decay of the learning rate over the run's progress (in steps or in time, whichever
is further along), the end of the run's budget, and the ETA that follows from it."""

from __future__ import annotations

import math

import torch

from napari_attention_unet.core.train.config import TrainConfig


def load_optimizer_code() -> None:
    """Make torch load the code its optimisers import on first use.

    The first ``torch.optim.AdamW(...)`` of a process imports ``torch._dynamo`` (1.6 s on a
    2-core CPU). Import work holds the GIL, so when that first optimiser is built in a napari
    worker the viewer freezes for about a second just after Fine-tune is pressed. The widget
    calls this while its panel is built, where a second belongs to opening the plugin.
    """
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=1e-3)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``model``'s parameters at ``config.lr``, decaying multi-dimensional ones only."""
    decay, no_decay = [], []
    for p in model.parameters():
        # Weight decay on conv kernels only: decaying norm scales and biases just fights the data.
        (decay if p.ndim > 1 else no_decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )


def progress(config: TrainConfig, step: int, elapsed: float) -> float:
    """How far past warm-up the run is (1 at the end): the further of steps and time."""
    parts = []
    if config.max_steps:
        parts.append((step - config.warmup_steps) / max(config.max_steps - config.warmup_steps, 1))
    if config.time_budget:
        parts.append(elapsed / config.time_budget)
    return max(parts)


def learning_rate(config: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warm-up, then cosine decay over the run's progress (steps or time)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    floor = config.lr * config.min_lr_fraction
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress(config, step, elapsed), 1.0)))


def budget_spent(config: TrainConfig, step: int, elapsed: float, reserve: float = 0.0) -> bool:
    """Whether the run has reached ``max_steps`` or spent ``time_budget`` seconds, ``reserve`` of
    them kept for what comes after the last step (the final evaluation: a 5-minute budget whose
    held-out images take 20 s to score stops training at 4:40, not at 5:20)."""
    return (config.max_steps is not None and step >= config.max_steps) or (
        config.time_budget is not None and elapsed + reserve >= config.time_budget
    )


def eta(config: TrainConfig, step: int, elapsed: float, run_start: tuple[int, float]) -> float | None:
    """Seconds left until the budget is spent (None when unknown). ``run_start`` is the ``(step,
    elapsed)`` at which this run started: the pace is its own, a resumed run starts at a later step."""
    etas = []
    first_step, first_elapsed = run_start
    if config.max_steps and step > first_step:
        pace = (elapsed - first_elapsed) / (step - first_step)
        etas.append(pace * max(config.max_steps - step, 0))
    if config.time_budget:
        etas.append(max(config.time_budget - elapsed, 0.0))
    return min(etas) if etas else None
