"""Semantic segmentation (Cityscapes' 19 train ids): mIoU from a bincount confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from benchmark.config import Preset, ScheduleConfig
from benchmark.data.cityscapes import CITYSCAPES_CLASSES
from benchmark.engine.evaluate import evaluate
from benchmark.engine.pretrain import load_into
from benchmark.engine.task_loss import SegmentationLoss, TaskLoss
from benchmark.models import BACKBONE_OF, build_segmentor
from benchmark.tasks.base import Task, val_batches


class SegmentationTask(Task):
    """Single-scale, full-image mIoU over `class_names` (classes absent from both sides are skipped).

    `evaluate` returns `miou` (%) and `class_iou` (fractions in class order, NaN for absent classes).
    """

    name: ClassVar[str] = "segmentation"
    metrics: ClassVar[tuple[str, ...]] = ("miou",)
    headline: ClassVar[str] = "mIoU"

    def __init__(self, class_names: Sequence[str] = CITYSCAPES_CLASSES) -> None:
        self.class_names = tuple(class_names)

    def build_model(self, name: str, preset: Preset) -> nn.Module:
        arch = preset.model
        return build_segmentor(name, num_classes=len(self.class_names), output_stride=arch.output_stride,
                               aspp_rates=arch.aspp_rates, zero_init_residual=arch.zero_init_residual)

    def task_loss(self, schedule: ScheduleConfig) -> TaskLoss:
        return SegmentationLoss(schedule.aux_weight)

    def backbone_of(self, name: str) -> str:
        return BACKBONE_OF[name]

    def load_backbone(self, model: nn.Module, source: Path | dict[str, torch.Tensor]) -> None:
        load_into(model, source)

    def evaluate(self, model: nn.Module, val_set: Dataset, batch_size: int, device: torch.device,
                 amp: bool = False, channels_last: bool = False) -> dict[str, Any]:
        matrix = evaluate(model, val_batches(val_set, batch_size), len(self.class_names), device, amp=amp,
                          channels_last=channels_last)
        return {"miou": matrix.miou(), "class_iou": matrix.class_iou()}

    def result_keys(self) -> tuple[str, ...]:
        return (*self.metrics, "class_iou")

    def ledger_cells(self, result: dict[str, Any]) -> dict[str, Any]:
        """mIoU rounded; `class_iou` (fractions, in class order) as {class name: IoU %}."""
        iou = result["class_iou"]
        return {"miou": round(float(result["miou"]), 4),
                "class_iou": {c: round(100 * v, 3) for c, v in zip(self.class_names, iou, strict=True)}}
