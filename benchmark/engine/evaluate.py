"""Semantic-segmentation evaluation: confusion matrix by bincount, mIoU as Cityscapes defines it."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.engine import dist
from benchmark.progress import progress as progress_bar


class ConfusionMatrix:
    """Accumulates a [K, K] matrix (rows: ground truth, columns: prediction); DDP-summed on compute."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu") -> None:
        self.num_classes = num_classes
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and ground-truth train ids; pixels with ignore ids are skipped."""
        k = self.num_classes
        valid = (target >= 0) & (target < k)
        index = target[valid].to(torch.int64) * k + prediction[valid].to(torch.int64)
        self.matrix += torch.bincount(index, minlength=k * k).reshape(k, k)

    def reduce(self) -> None:
        dist.all_reduce_sum(self.matrix)

    def class_iou(self) -> list[float]:
        """IoU per class; NaN where a class is absent from both ground truth and prediction."""
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        return iou.tolist()

    def miou(self) -> float:
        """Mean over classes with a defined IoU (cityscapesscripts skips NaN classes too), in %."""
        values = [v for v in self.class_iou() if not math.isnan(v)]
        return 100.0 * sum(values) / len(values) if values else math.nan


def upsample(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of logits to label size (align_corners=True, as the official code)."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=True)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Full-image single-scale prediction: train ids [N, H, W]."""
    logits = model(images)["out"]
    return upsample(logits.float(), images.shape[-2:]).argmax(1)


def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    device: torch.device,
    amp: bool = False,
    channels_last: bool = False,
    progress: bool = True,
) -> ConfusionMatrix:
    """Run `model` in eval mode over (image, label) batches and return the (rank-summed) matrix."""
    was_training = model.training
    model.eval()
    matrix = ConfusionMatrix(num_classes, device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for images, labels in progress_bar(batches, desc="eval", leave=False, disable=not progress):
        images = images.to(device, non_blocking=True).contiguous(memory_format=fmt)
        with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
            prediction = predict(model, images)
        matrix.update(prediction, labels.to(device))
    matrix.reduce()
    model.train(was_training)
    return matrix
