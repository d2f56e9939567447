"""The training loss: cross-entropy over the classes plus soft foreground Dice."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from napari_attention_unet.core.augment import IGNORE
from napari_attention_unet.core.instances import BACKGROUND


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
