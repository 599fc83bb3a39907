"""MasKD token-learning stage for segmentation (kd_reference §1.2; official `train_mask_module.py`).

The teacher is frozen; only the receptive tokens E (T×K) learn. The teacher's main logits z are replaced
by ẑ = Σ_k M_k ⊙ z with M_k = σ(e_k·z), and the loss is CE(ẑ) + aux_weight·CE(aux, unmasked) + μ·L_div.
The aux logits carry no gradient to the tokens, so their CE is a constant that is logged (as the
official script does) but does not train anything. Official schedule: SGD lr 0.1, momentum 0.9,
wd 1e-3, poly 0.9, batch 16, 10,000 iterations (the paper says 2000; the code and its log say 10,000).
Deviation: the official script leaves the teacher's BN in train mode under no_grad; we keep it in eval
mode (running statistics), the cleaner choice kd_reference flags as unverified either way.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.engine.task_loss import SegmentationLoss, TaskLoss
from methods.base import HoldsTeacher
from methods.maskd.masks import dice_diversity, init_tokens, token_masks


class MaskedTeacher(HoldsTeacher):
    """The frozen teacher with token-masked main logits; its only parameters are the tokens.

    forward(images) → {"out": Σ_k M_k ⊙ z, "aux": teacher aux logits (if any), "masks": M (N×T×h×w)}.
    """

    def __init__(self, teacher: nn.Module, num_tokens: int, num_classes: int, seed: int = 0) -> None:
        super().__init__(teacher)
        generator = torch.Generator().manual_seed(seed)
        self.tokens = nn.Parameter(init_tokens(num_tokens, num_classes, generator))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            outputs = self.teacher(images)
        logits = outputs["out"]
        masks = token_masks(logits, self.tokens.to(logits.dtype))
        masked = torch.einsum("nthw,nchw->nchw", masks, logits)  # Σ_k M_k ⊙ z without an N×T×C×H×W copy
        result = {"out": masked, "masks": masks}
        if "aux" in outputs:
            result["aux"] = outputs["aux"]
        return result


class TokenLearningLoss(TaskLoss):
    """CE on the masked logits (if `task`), aux_weight·CE on the aux logits, div_weight·Dice diversity.

    `task=False` learns tokens with the diversity term alone (the paper's "L_div only" ablation, Fig. 4).
    """

    def __init__(self, task: bool = True, aux_weight: float = 0.4, div_weight: float = 1.0) -> None:
        super().__init__()
        self.task_loss = SegmentationLoss(aux_weight) if task else None
        self.div_weight = div_weight

    def forward(self, labels: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        losses = {"loss_div": self.div_weight * dice_diversity(outputs["masks"])}
        if self.task_loss is not None:
            losses.update(self.task_loss(labels, outputs))
        return losses
