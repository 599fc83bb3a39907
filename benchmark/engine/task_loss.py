"""Task losses (the student's own objective) and the `TrainUnit` the trainer optimises."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.data.cityscapes import IGNORE_INDEX
from benchmark.engine.evaluate import upsample


class TaskLoss(nn.Module):
    """A task's loss: `student_outputs` runs the student on a batch, `forward(labels, outputs)` returns named,
    already-weighted terms."""

    def student_outputs(self, student: nn.Module, images: Any, labels: Any) -> Any:
        """The student's outputs for a batch (default: `student(images)`)."""
        return student(images)


class SegmentationLoss(TaskLoss):
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


class ExtraLoss(nn.Module):
    """Base of modules that add loss terms to a `TrainUnit` (distillation): called as
    `extra(images, labels, outputs)`, returning named, already-weighted terms."""

    def parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, lr multiplier) groups for the trainer's optimizer. Default: all trainable at 1×."""
        return [([p for p in self.parameters() if p.requires_grad], 1.0)]

    def after_step(self) -> dict[str, float]:
        """Run after each optimizer step (e.g. a discriminator's own step); returns scalars to log."""
        return {}


class TrainUnit(nn.Module):
    """Student + everything trained with it, as one module (the DDP unit).

    `extra` is an optional `ExtraLoss` (`benchmark.engine.distill.DistillationLoss`) called after the
    student forward; its parameters join the optimizer through `parameter_groups()`.
    """

    def __init__(self, student: nn.Module, task_loss: TaskLoss, extra: ExtraLoss | None = None) -> None:
        super().__init__()
        self.student, self.task_loss, self.extra = student, task_loss, extra

    def forward(self, images: Any, labels: Any) -> dict[str, torch.Tensor]:
        outputs = self.task_loss.student_outputs(self.student, images, labels)
        losses = self.task_loss(labels, outputs)
        if self.extra is not None:
            losses.update(self.extra(images, labels, outputs))
        return losses

    def parameter_groups(self) -> list[tuple[list[nn.Parameter], float]]:
        """(parameters, lr multiplier) groups for the optimizer: the student at 1×, then the extra's."""
        groups = [([p for p in self.student.parameters() if p.requires_grad], 1.0)]
        if self.extra is not None:
            groups += self.extra.parameter_groups()
        return [(params, mult) for params, mult in groups if params]

    def after_step(self) -> dict[str, float]:
        """Run after every optimizer step; returns scalars to log (e.g. a discriminator's loss)."""
        return {} if self.extra is None else self.extra.after_step()
