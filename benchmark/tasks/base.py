"""The `Task` interface the trainer and harness use instead of knowing about segmentation or detection."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from benchmark.config import Preset, ScheduleConfig
from benchmark.engine import dist
from benchmark.engine.pretrain import SEGMENTATION_STANDIN, Standin
from benchmark.engine.task_loss import TaskLoss


def val_batches(val_set: Dataset, batch_size: int, collate: Any = None) -> DataLoader:
    """This rank's shard of the validation split (no padding, so no image is counted twice)."""
    shard = Subset(val_set, list(range(dist.rank(), len(val_set), dist.world_size())))
    return DataLoader(shard, batch_size=batch_size, num_workers=0, collate_fn=collate)


class Task(ABC):
    """Batching, device transfer and evaluation of one task.

    `metrics` names the ledger columns a finished run fills; `metrics[0]` is the headline number (higher is
    better) that progress lines, plots and Δ columns use.
    """

    name: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()
    headline: ClassVar[str] = ""  # how logs name metrics[0] ("mIoU", "AP")
    standin: ClassVar[Standin] = SEGMENTATION_STANDIN  # stem and patch set of the stand-in pretraining

    @abstractmethod
    def build_model(self, name: str, preset: Preset) -> nn.Module:
        """A registered model of this task, randomly initialised, at the preset's architecture knobs."""

    @abstractmethod
    def backbone_of(self, name: str) -> str:
        """The classification backbone of model `name` (what `--backbone-weights` and the stand-in name)."""

    @abstractmethod
    def load_backbone(self, model: nn.Module, source: Path | dict[str, torch.Tensor]) -> None:
        """Load pretrained backbone weights (a user file or a stand-in state dict) into `model`."""

    @abstractmethod
    def task_loss(self, schedule: ScheduleConfig) -> TaskLoss:
        """The student's own loss for a run with this schedule."""

    def teacher_forward(self, model: nn.Module, inputs: Any) -> Any:
        """How a frozen teacher runs on a batch for distillation (default: the whole model)."""
        return model(inputs)

    def collate(self, samples: list[Any]) -> tuple[Any, Any]:
        """A batch (inputs, targets) from a list of dataset samples."""
        return default_collate(samples)

    def to_device(self, inputs: Any, targets: Any, device: torch.device,
                  memory_format: torch.memory_format) -> tuple[Any, Any]:
        """Inputs and targets on `device` (tensors stacked by `collate`)."""
        return (inputs.to(device, non_blocking=True).contiguous(memory_format=memory_format),
                targets.to(device, non_blocking=True))

    def result_keys(self) -> tuple[str, ...]:
        """Keys of `evaluate`'s result (metrics, then details such as per-class scores)."""
        return self.metrics

    def ledger_cells(self, result: dict[str, Any]) -> dict[str, Any]:
        """`evaluate`'s result as ledger cells (default: numbers rounded to 4 decimals)."""
        return {name: round(float(value), 4) for name, value in result.items()}

    @abstractmethod
    def evaluate(self, model: nn.Module, val_set: Dataset, batch_size: int, device: torch.device,
                 amp: bool = False, channels_last: bool = False) -> dict[str, Any]:
        """Evaluate `model` on the validation split: every name of `metrics` (plus per-class details)."""
