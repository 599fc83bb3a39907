"""The segmentation task loss every run shares: CE on the main logits + weighted CE on the aux logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.cityscapes import IGNORE_INDEX
from benchmark.engine.evaluate import upsample


class SegmentationLoss(nn.Module):
    """CE after bilinear upsampling to label size (align_corners=True, ignore 255), as the official code.

    Returns named, already-weighted terms: `loss_ce` and, when the model has an aux head,
    `loss_aux` = aux_weight × CE(aux logits) (official weight 0.4).
    """

    def __init__(self, aux_weight: float = 0.4) -> None:
        super().__init__()
        self.aux_weight = aux_weight

    def forward(self, labels: torch.Tensor, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        size = labels.shape[-2:]
        losses = {"loss_ce": F.cross_entropy(upsample(outputs["out"], size), labels, ignore_index=IGNORE_INDEX)}
        if "aux" in outputs and self.aux_weight:
            aux = F.cross_entropy(upsample(outputs["aux"], size), labels, ignore_index=IGNORE_INDEX)
            losses["loss_aux"] = self.aux_weight * aux
        return losses


class TrainUnit(nn.Module):
    """Student + everything trained with it, as one module (the DDP unit).

    `extra` is an optional module (a distillation method in later issues) called as
    `extra(images, labels, outputs)` after the student forward; it returns more named loss terms and
    may own trainable parameters, which the optimizer picks up through this module.
    """

    def __init__(self, student: nn.Module, task_loss: SegmentationLoss, extra: nn.Module | None = None) -> None:
        super().__init__()
        self.student, self.task_loss, self.extra = student, task_loss, extra

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.student(images)
        losses = self.task_loss(labels, outputs)
        if self.extra is not None:
            losses.update(self.extra(images, labels, outputs))
        return losses
