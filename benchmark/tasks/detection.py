"""Object detection (COCO boxes): torchvision detectors' own losses, COCOeval bbox AP."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset

from benchmark.config import Preset, ScheduleConfig
from benchmark.data.coco import CocoDetection, collate
from benchmark.engine import dist
from benchmark.engine.coco_eval import METRICS, coco_bbox_metrics, detections_to_coco
from benchmark.engine.pretrain import DETECTION_STANDIN, Standin
from benchmark.engine.task_loss import TaskLoss
from benchmark.models.detectors import (
    BACKBONE_OF,
    DETECTORS,
    build_detector,
    detector_features,
    load_detector_backbone_weights,
)
from benchmark.progress import progress as progress_bar
from benchmark.tasks.base import Task, val_batches


class DetectionLoss(TaskLoss):
    """The detector's own training losses: in train mode a torchvision detector returns them from
    `model(images, targets)`, already weighted as its recipe does; they are renamed `loss_*` for the logs."""

    def student_outputs(self, student: nn.Module, images: list[torch.Tensor], labels: list[dict]) -> Any:
        return student(images, labels)

    def forward(self, labels: list[dict], outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name if name.startswith("loss_") else f"loss_{name}": value for name, value in outputs.items()}


def _targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in t.items()}
            for t in targets]


def _categories_only(detection: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Boxes/scores as float32 and labels as int64 on the CPU, without label 0: RetinaNet and FCOS keep an
    (untrained) background output so that one label map serves every family, and it is no category."""
    keep = detection["labels"] > 0
    return {"boxes": detection["boxes"][keep].float().cpu(), "scores": detection["scores"][keep].float().cpu(),
            "labels": detection["labels"][keep].long().cpu()}


class DetectionTask(Task):
    """COCO bbox AP, AP50, AP75, APs, APm, APl (%) from pycocotools' COCOeval on the whole val split."""

    name: ClassVar[str] = "detection"
    metrics: ClassVar[tuple[str, ...]] = METRICS
    headline: ClassVar[str] = "AP"
    standin: ClassVar[Standin] = DETECTION_STANDIN

    def __init__(self, class_names: Sequence[str], image_size: tuple[int, int]) -> None:
        """`class_names`: the K categories (labels 1..K; 0 is the background); `image_size` (h, w): the
        detectors' transform resizes to it (min_size = h, max_size = w), so fixed-size data is not rescaled."""
        self.class_names, self.image_size = tuple(class_names), image_size

    def build_model(self, name: str, preset: Preset) -> nn.Module:
        height, width = self.image_size
        family = DETECTORS[name]["family"] if name in DETECTORS else None
        return build_detector(name, num_classes=len(self.class_names) + 1, min_size=min(height, width),
                              max_size=max(height, width), zero_init_residual=preset.model.zero_init_residual,
                              **preset.model.detector.get(family, {}))

    def task_loss(self, schedule: ScheduleConfig) -> TaskLoss:
        return DetectionLoss()

    def backbone_of(self, name: str) -> str:
        return BACKBONE_OF[name]

    def load_backbone(self, model: nn.Module, source: Path | dict[str, torch.Tensor]) -> None:
        load_detector_backbone_weights(model, source)

    def teacher_forward(self, model: nn.Module, inputs: list[torch.Tensor]) -> Any:
        """Only the transform, backbone and neck: the taps are FPN levels (no proposals, no NMS, no heads).

        A method that needs a teacher head runs it itself on these tapped levels, and only the branch it needs
        (``maskd_det`` regression KD: the RetinaNet regression head, or the Faster R-CNN box head on the student's
        RoIs), so plain feature distillation never pays for the teacher's heads."""
        return detector_features(model, inputs)

    def collate(self, samples: list[Any]) -> tuple[list[torch.Tensor], list[dict]]:
        return collate(samples)

    def to_device(self, inputs: list[torch.Tensor], targets: list[dict], device: torch.device,
                  memory_format: torch.memory_format) -> tuple[list[torch.Tensor], list[dict]]:
        return [image.to(device, non_blocking=True) for image in inputs], _targets_to(targets, device)

    def ledger_cells(self, result: dict[str, Any]) -> dict[str, Any]:
        """Every metric rounded; NaN (a size range without ground truth) stays NaN."""
        return {name: round(float(result[name]), 4) for name in self.metrics}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val_set: Dataset, batch_size: int, device: torch.device,
                 amp: bool = False, channels_last: bool = False) -> dict[str, Any]:
        if not isinstance(val_set, CocoDetection):
            raise TypeError(f"detection evaluation needs a CocoDetection split, got {type(val_set).__name__}")
        was_training = model.training
        model.eval()
        image_ids: list[int] = []
        detections: list[dict[str, torch.Tensor]] = []
        for images, targets in progress_bar(val_batches(val_set, batch_size, collate), desc="eval", leave=False):
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                outputs = model([image.to(device) for image in images])
            image_ids += [int(t["image_id"]) for t in targets]
            detections += [_categories_only(out) for out in outputs]
        model.train(was_training)
        results = dist.gather_objects(detections_to_coco(image_ids, detections, val_set.label_to_category))
        return coco_bbox_metrics(val_set.coco, results)
